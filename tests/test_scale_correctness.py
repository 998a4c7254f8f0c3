"""Correctness at scale, against a real S3 server (SeaweedFS on loopback) and through the command line:
change detection for manifest sources, a listing that streams with a bounded window, a missing manifest,
``evaluate -q``, a dry run without torch, batched deletes, a lock whose release fails, the boto3 floor."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import S3_SECRET_KEY, s3_variables
from images import photo_corpus
from processes import LATENTSWEEP, run_command
from latentsweep import lock, storage
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest.run import IngestJob, run
from latentsweep.ingest.sources import list_source

ROOT = Path(__file__).resolve().parents[1]
EMBED = EmbedSettings(weights="untrained", feature_set="2lat", device="cpu", descriptors=False)
CLI_EMBED = ["--weights", "untrained", "--feature-set", "2lat", "--device", "cpu", "--no-descriptors",
             "--shard-size", "2", "--augment", "none"]


def put_objects(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b""), keys))


def count_calls(operation: str) -> list:
    """A list that grows by one for each ``operation`` request of the storage layer's S3 client."""
    calls: list = []
    storage.s3_client().meta.events.register(f"before-call.s3.{operation}", lambda **_: calls.append(1))
    return calls


# ---- change detection for manifest sources --------------------------------------------------------

def write_manifest(path: Path, files: list[Path], columns: tuple[str, ...] = ()) -> None:
    """A CSV manifest of ``files`` (URIs relative to it, the label from the folder) with the version
    columns ``columns`` filled from each file's stat."""
    lines = [",".join(("uri", "label", *columns))]
    for file in files:
        stat = file.stat()
        values = {"mtime": str(stat.st_mtime_ns), "size": str(stat.st_size)}
        lines.append(",".join((str(file.relative_to(path.parent)), file.parent.name, *(values[c] for c in columns))))
    path.write_text("\n".join(lines) + "\n")


def replace_bytes(target: Path, source: Path) -> None:
    """Other bytes under the same path, with a later mtime (as a re-upload gives)."""
    before = target.stat().st_mtime_ns
    target.write_bytes(source.read_bytes())
    os.utime(target, ns=(before + 10**9, before + 10**9))


def embeddings_of(out: Path) -> dict[str, list]:
    table = storage.read_table(str(out / "embeddings"))
    return dict(zip(table.column("uri").to_pylist(), table.column("y_hat_luma").to_pylist()))


def stamps(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (out / "embeddings").iterdir()}


def ingest_cli(manifest: Path, out: Path, *extra: str):
    return run_command([*LATENTSWEEP, "ingest", str(manifest), "--out", str(out), *CLI_EMBED, "--quiet", *extra])


def dry_run_cli(manifest: Path, out: Path, *extra: str) -> dict:
    result = ingest_cli(manifest, out, "--dry-run", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary_count(stdout: str, name: str) -> int:
    return int(re.search(rf"\b{name}=(\d+)", stdout).group(1))


def corpus_and_first_run(tmp_path: Path, columns: tuple[str, ...], check_versions: bool = False):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    files = photo_corpus(corpus, labels=("alpha", "beta"), per_label=3, size=(48, 48))
    manifest = corpus / "manifest.csv"
    write_manifest(manifest, files, columns)
    first = run(IngestJob(str(manifest), str(out), EMBED, shard_size=2, quiet=True, augment="none", check_versions=check_versions))
    assert first.items_encoded == 6 and first.embedded == 6
    return files, manifest, out


def test_manifest_version_columns_re_embed_exactly_the_replaced_file(tmp_path, ray_session):
    """A manifest with mtime and size columns: a file replaced under the same path (its new mtime in the
    manifest) is re-embedded, alone; the other shards' files are not touched."""
    files, manifest, out = corpus_and_first_run(tmp_path, ("mtime", "size"))
    before, written = embeddings_of(out), stamps(out)
    replaced = files[1]
    replace_bytes(replaced, files[4])
    write_manifest(manifest, files, ("mtime", "size"))

    plan = dry_run_cli(manifest, out)
    assert plan["versions"] == "manifest:mtime,size"
    assert (plan["changed"], plan["unchanged"], plan["shards_to_process"], plan["items_to_encode"]) == (1, 5, 1, 1)
    rerun = run(IngestJob(str(manifest), str(out), EMBED, shard_size=2, quiet=True, augment="none"))  # the CLI's job, in-process
    assert rerun.changed == 1 and rerun.items_encoded == 1
    after = embeddings_of(out)
    assert after[str(replaced)] != before[str(replaced)]
    assert {uri: vector for uri, vector in after.items() if uri != str(replaced)} == \
           {uri: vector for uri, vector in before.items() if uri != str(replaced)}
    rewritten = {name for name, stamp in stamps(out).items() if written[name] != stamp}
    assert len(rewritten) == 1
    assert dry_run_cli(manifest, out)["shards_to_process"] == 0


def test_check_versions_re_embeds_the_replaced_file_of_a_manifest_without_version_columns(tmp_path, ray_session):
    """No version columns: --check-versions stats each entry in the listing, so the replaced file is
    re-embedded, alone. Without the flag its entries keep the versions they were planned with (nothing
    is redone, and the dry run says that replaced files are not seen)."""
    files, manifest, out = corpus_and_first_run(tmp_path, (), check_versions=True)
    before = embeddings_of(out)
    replaced = files[4]
    replace_bytes(replaced, files[0])

    unchecked = dry_run_cli(manifest, out)
    assert unchecked["versions"] == "none" and unchecked["changed"] == 0 and unchecked["shards_to_process"] == 0
    checked = dry_run_cli(manifest, out, "--check-versions")
    assert checked["versions"] == "check-versions"
    assert (checked["changed"], checked["shards_to_process"], checked["items_to_encode"]) == (1, 1, 1)
    result = ingest_cli(manifest, out, "--check-versions")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary_count(result.stdout, "items_encoded") == 1
    after = embeddings_of(out)
    assert [uri for uri in after if after[uri] != before[uri]] == [str(replaced)]


def test_manifest_version_columns_take_precedence_in_order(tmp_path):
    """version, else etag (unquoted), else mtime and size; a file missing at a version check gets a
    version of its own (so that its row is redone, as an error row)."""
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (tmp_path / name).write_bytes(b"12345")
    (tmp_path / "m.csv").write_text('uri,version,etag,mtime,size\na.png,v7,"""e1""",5,9\nb.png,,"""e2""",5,9\n'
                                    'c.png,,,5,9\nd.png,,,,\ngone.png,,,,\n')
    listing = list_source(str(tmp_path / "m.csv"))
    rows = {Path(row["uri"]).name: (row["version"], row["size"]) for row in listing.items()}
    assert listing.versions == "manifest:version,etag,mtime,size"
    assert rows == {"a.png": ("v7", 9), "b.png": ("e2", 9), "c.png": ("5/9", 9), "d.png": ("", -1),
                    "gone.png": ("", -1)}
    checked = {Path(row["uri"]).name: row for row in list_source(str(tmp_path / "m.csv"), check_versions=True).items()}
    assert checked["d.png"]["version"] == str((tmp_path / "d.png").stat().st_mtime_ns) and checked["d.png"]["size"] == 5
    assert checked["gone.png"]["version"] == "missing" and checked["a.png"]["version"] == "v7"
    pq.write_table(pa.table({"uri": ["a.png"], "etag": ['"x"'], "mtime": pa.array([3], pa.int64())}), tmp_path / "m.parquet")
    parquet = list_source(str(tmp_path / "m.parquet"))
    assert parquet.versions == "manifest:etag,mtime" and parquet.items()[0]["version"] == "x"


def test_an_entry_listed_without_a_version_keeps_the_one_it_was_planned_with(tmp_path):
    """Not knowing is no change: a manifest row without a version keeps the version the previous plan
    recorded (its shard's digest too); a known other version is a change; the first known one is too."""
    from latentsweep import schema
    from latentsweep.ingest import plan as planning
    from latentsweep.ingest.sources import listing_table

    def plan_of(versions: list[str], previous=None):
        folder = tmp_path / f"plan-{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        rows = listing_table([(f"/data/{i}.png", -1, version, None, None) for i, version in enumerate(versions)])
        listed = planning.spill_listing(rows.to_batches(max_chunksize=3), str(folder))
        items = [] if previous is None else [pa.concat_tables(
            [schema.MANIFEST_SCHEMA.empty_table()] + [chunk for part in previous.planned.buckets()
                                                      for chunk in previous.part_items(part)])]
        return planning.plan(listed, 2, {}, items, str(folder))

    def versions_of(plan) -> list[str]:
        items = pa.concat_tables([chunk for part in plan.planned.buckets() for chunk in plan.part_items(part)])
        return [row["version"] for row in sorted(items.to_pylist(), key=lambda row: row["uri"])]

    first = plan_of(["v0", "v1", "", "v3"])
    again = plan_of(["", "v1", "", "w3"], first)
    assert versions_of(again) == ["v0", "v1", "", "w3"]
    assert (again.counts["unchanged"], again.counts["changed"]) == (3, 1)
    digests = lambda plan: dict(zip(plan.shards.column("shard").to_pylist(), plan.shards.column("digest").to_pylist()))
    changed_shards = {shard for shard, digest in digests(again).items() if digests(first)[shard] != digest}
    assert len(changed_shards) == 1
    known = plan_of(["v0", "v1", "v2", "w3"], again)
    assert (known.counts["changed"], versions_of(known)) == (1, ["v0", "v1", "v2", "w3"])


def test_check_versions_heads_s3_entries(s3_env, tmp_path):
    """On S3 the version a check gives is the object's ETag, as a listing of the prefix gives it."""
    bucket = s3_env["bucket"]
    storage.write_bytes(f"s3://{bucket}/in/a.png", b"one")
    storage.write_bytes(f"s3://{bucket}/in/manifest.csv", b"uri\na.png\nmissing.png\n")
    heads = count_calls("HeadObject")
    rows = list_source(f"s3://{bucket}/in/manifest.csv", check_versions=True).items()
    listed = next(info for info in storage.list_files(f"s3://{bucket}/in") if info.uri.endswith("/a.png"))
    assert [(row["uri"], row["version"]) for row in rows] == [(listed.uri, listed.version),
                                                              (f"s3://{bucket}/in/missing.png", "missing")]
    assert len(heads) == 3  # the manifest's existence, then one an entry


# ---- the listing streams: a bounded window, page by page --------------------------------------------

def test_a_date_partitioned_prefix_is_listed_a_window_of_folders_at_a_time(s3_env):
    """Reading the first file of a prefix of 40 date folders with a window of 2: only the top level and
    the window's folders have been listed (today's listing listed every folder at once)."""
    bucket = s3_env["bucket"]
    put_objects(s3_env["client"], bucket, [f"night/2026-11-{day:02d}/{n}.png" for day in range(1, 41) for n in range(3)])
    lists = count_calls("ListObjectsV2")
    listing = storage.list_tree(f"s3://{bucket}/night", threads=2)
    first = next(listing)
    time.sleep(1.0)  # what runs ahead of the reader has had its time
    assert first.uri.startswith(f"s3://{bucket}/night/2026-11-")
    assert len(lists) <= 3, len(lists)  # the top level's page and the window's two folders (one page each)
    listing.close()
    rest = list(storage.list_tree(f"s3://{bucket}/night", threads=2))
    assert len(rest) == 120 and len({info.uri for info in rest}) == 120


def test_a_flat_prefix_is_read_page_by_page(s3_env):
    bucket = s3_env["bucket"]
    put_objects(s3_env["client"], bucket, [f"flat/{n:04d}.png" for n in range(60)])
    lists = count_calls("ListObjectsV2")
    listing = storage.list_tree(f"s3://{bucket}/flat", page_size=5, pages_ahead=1)
    assert next(listing).uri == f"s3://{bucket}/flat/0000.png"
    time.sleep(1.0)
    assert len(lists) <= 3, len(lists)  # the page read, one queued, one waiting to be queued: not 12
    started = time.monotonic()
    listing.close()  # the stream still fetching stops
    assert time.monotonic() - started < 5
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("listing")]
    assert [info.uri for info in storage.list_tree(f"s3://{bucket}/flat", page_size=5, pages_ahead=1)] == \
           [f"s3://{bucket}/flat/{n:04d}.png" for n in range(60)]


def test_tree_listing_lists_every_object_once_in_the_same_order(s3_env):
    """Files at the top level and in nested folders, names that sort around "/", folder placeholders:
    every file once, none else, in the same order on every listing."""
    bucket = s3_env["bucket"]
    keys = ["t/a-b.png", "t/a/x.png", "t/a/y/z.png", "t/a0.png", "t/b/", "t/b/1.png", "t/c.png",
            *[f"t/d/{n:02d}.png" for n in range(13)], *[f"t/e{n}/f.png" for n in range(7)]]
    put_objects(s3_env["client"], bucket, keys)
    expected = {f"s3://{bucket}/{key}" for key in keys if not key.endswith("/")}
    first = [info.uri for info in storage.list_tree(f"s3://{bucket}/t", threads=2, pages_ahead=1, page_size=3)]
    assert sorted(first) == sorted(expected)
    assert [info.uri for info in storage.list_tree(f"s3://{bucket}/t", threads=2, pages_ahead=1, page_size=3)] == first


def test_tree_listing_errors_name_the_prefix(s3_env, monkeypatch):
    bucket = s3_env["bucket"]
    put_objects(s3_env["client"], bucket, ["p/a/1.png"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test")
    storage._s3_client.cache_clear()
    with pytest.raises(storage.StorageError, match=f"cannot list s3://{bucket}/p"):
        list(storage.list_tree(f"s3://{bucket}/p"))


def test_local_walk_is_the_order_of_sorted_paths(tmp_path):
    for name in ("a-b.png", "a/x.png", "a/y/z.png", "a0.png", "b.png", "c/d/e.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1")
    (tmp_path / "linked").symlink_to(tmp_path / "c", target_is_directory=True)  # not followed, as os.walk
    reference = sorted(os.path.join(folder, name) for folder, _, names in os.walk(tmp_path) for name in names)
    assert [info.uri for info in storage.list_files(str(tmp_path))] == reference


def test_dry_run_of_a_date_partitioned_s3_prefix_counts_every_object(s3_env, tmp_path):
    bucket = s3_env["bucket"]
    put_objects(s3_env["client"], bucket, [f"night/2026-11-{day:02d}/{n}.png" for day in range(1, 25) for n in range(5)]
                + ["night/readme.txt"])
    result = run_command([*LATENTSWEEP, "ingest", f"s3://{bucket}/night", "--out", str(tmp_path / "out"), *CLI_EMBED,
                          "--dry-run"], env=s3_variables(s3_env))
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert (plan["inputs"], plan["new"], plan["skipped_unsupported"], plan["versions"]) == (120, 120, 1, "listing")
    assert not (tmp_path / "out").exists()


# ---- small things --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dry", [("missing.csv", True), ("missing.parquet", True), ("missing.csv", False)])
def test_a_missing_manifest_is_one_line_exit_2_and_writes_nothing(tmp_path, name, dry):
    out = tmp_path / "x"
    result = run_command([*LATENTSWEEP, "ingest", str(tmp_path / name), "--out", str(out), *CLI_EMBED, "--quiet",
                          *(["--dry-run"] if dry else [])])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert lines == [f"error: no such manifest: {tmp_path / name}"], result.stderr[-3000:]
    assert not out.exists() and sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_missing_s3_manifest_is_one_line_exit_2(s3_env, tmp_path):
    result = run_command([*LATENTSWEEP, "ingest", f"s3://{s3_env['bucket']}/lists/missing.csv", "--out",
                          str(tmp_path / "x"), *CLI_EMBED, "--dry-run"], env=s3_variables(s3_env))
    assert result.returncode == 2 and result.stderr.strip() == \
        f"error: no such manifest: s3://{s3_env['bucket']}/lists/missing.csv", result.stderr[-3000:]


def test_evaluate_takes_quiet(tmp_path, ray_session):
    from latentsweep.index.build import IndexJob, build
    from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output

    vectors, assignment = clustered(30, 3, sum(DIMS.values()), seed=2)
    write_ingest_output(str(tmp_path / "ref"), vectors, [("a", "b", "c")[i] for i in assignment], {}, files=1)
    build(IndexJob([str(tmp_path / "ref")], str(tmp_path / "index"), shards=1, quiet=True))
    evaluate = [*LATENTSWEEP, "evaluate", "--index", str(tmp_path / "index")]
    quiet = run_command(evaluate + ["--out", str(tmp_path / "e1"), "-q"])
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    lines = quiet.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("evaluate: ") and "top1=" in lines[0], quiet.stdout
    assert lines[1].startswith("evaluate: wrote metrics.json") and (tmp_path / "e1" / "metrics.json").exists()
    loud = run_command(evaluate + ["--out", str(tmp_path / "e2")])
    assert loud.returncode == 0 and "| all |" in loud.stdout


DRY_RUN_IN_A_PROCESS = """
import sys
from latentsweep.cli import main
sys.argv = ["latentsweep", *sys.argv[1:]]
try:
    main()
except SystemExit as end:
    print(f"exit={end.code} torch={'torch' in sys.modules}")
"""


def test_the_dry_run_does_not_import_torch(tmp_path):
    files = photo_corpus(tmp_path / "corpus", labels=("alpha",), per_label=2, size=(32, 32))
    write_manifest(tmp_path / "corpus" / "manifest.csv", files, ("mtime",))
    result = run_command([sys.executable, "-c", DRY_RUN_IN_A_PROCESS, "ingest", str(tmp_path / "corpus" / "manifest.csv"),
                          "--out", str(tmp_path / "out"), *CLI_EMBED, "--dry-run"])
    assert result.stdout.strip().splitlines()[-1] == "exit=0 torch=False", result.stdout + result.stderr[-2000:]


def test_planning_a_source_of_bitstreams_alone_does_not_import_torch(tmp_path):
    """A `.jai`-only job checks the first file's embedding space and the feature set in the driver, from
    the file's header: the driver's start-up stays that of an image job."""
    from latentsweep.bitstream.codec import BitstreamCodec
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings

    codec = BitstreamCodec(Embedder(EmbedSettings(feature_set="2lat", device="cpu")))
    (tmp_path / "night").mkdir()
    for number in range(2):
        image = np.random.default_rng(number).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (tmp_path / "night" / f"{number}.jai").write_bytes(codec.compress(image, descriptors=False)[0])
    command = [sys.executable, "-c", DRY_RUN_IN_A_PROCESS, "ingest", str(tmp_path / "night"),
               "--out", str(tmp_path / "out"), "--feature-set", "2lat", "--dry-run"]
    result = run_command(command)
    assert result.stdout.strip().splitlines()[-1] == "exit=0 torch=False", result.stdout + result.stderr[-2000:]
    refused = run_command(command[:-3] + ["--feature-set", "all", "--dry-run"])  # y and z are never coded
    assert refused.stdout.strip().splitlines()[-1] == "exit=2 torch=False", refused.stdout + refused.stderr[-2000:]


def test_planning_checks_weights_without_torch(random_adapters):
    """What planning asks of the weights and adapters (check and hash the checkpoints) imports no torch."""
    code = ("import sys; from latentsweep.codec import weights; weights.digest(); weights.digest('untrained');"
            f"weights.digest(None, {random_adapters!r}); print('torch' in sys.modules)")
    result = run_command([sys.executable, "-c", code])
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_prefix_deletes_go_a_thousand_keys_a_request(s3_env, tmp_path):
    bucket = s3_env["bucket"]
    put_objects(s3_env["client"], bucket, [f"out/embeddings/shard-{n:05d}.parquet" for n in range(1001)]
                + ["out/_lock.json", "other/keep.bin"])
    batches, singles = count_calls("DeleteObjects"), count_calls("DeleteObject")
    deleted = storage.delete_prefix(f"s3://{bucket}/out", keep=lambda info: lock.is_lock_file(info.uri))
    assert deleted == 1001 and len(batches) == 2 and not singles
    left = [info.uri for info in storage.list_files(f"s3://{bucket}")]
    assert left == [f"s3://{bucket}/other/keep.bin", f"s3://{bucket}/out/_lock.json"]
    assert storage.delete_many([f"s3://{bucket}/out/gone-1", f"s3://{bucket}/out/gone-2"]) == 2  # missing: no error
    for name in ("a/1.bin", "a/b/2.bin", "keep.bin"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert storage.delete_prefix(str(tmp_path), keep=lambda info: info.uri.endswith("keep.bin")) == 2
    assert [info.uri for info in storage.list_files(str(tmp_path))] == [str(tmp_path / "keep.bin")]
    assert storage.delete_prefix(str(tmp_path / "no-such-folder")) == 0


def test_an_s3_ingest_overwritten_deletes_in_batches_and_ends_whole(s3_env, tmp_path, ray_session):
    """``--overwrite`` of an S3 output clears it with ``DeleteObjects`` requests, never one request a file,
    and the rerun writes the same rows again."""
    photo_corpus(tmp_path / "corpus", labels=("alpha", "beta"), per_label=3, size=(32, 32))
    out = f"s3://{s3_env['bucket']}/references"
    first = run(IngestJob(str(tmp_path / "corpus"), out, EMBED, shard_size=2, quiet=True, augment="none"))
    batches, singles = count_calls("DeleteObjects"), []
    storage.s3_client().meta.events.register("before-parameter-build.s3.DeleteObject",
                                              lambda params, **_: singles.append(params["Key"]))
    again = run(IngestJob(str(tmp_path / "corpus"), out, EMBED, shard_size=2, overwrite=True, quiet=True, augment="none"))
    assert batches
    assert not [key for key in singles if "/embeddings/" in key or "/_done/" in key], singles  # one a file
    assert (first.embedded, again.embedded, again.shards_already_done) == (6, 6, 0)


def test_a_failed_lock_release_is_said_on_stderr(s3_env, capsys, monkeypatch):
    """The lease was taken over (its conditional delete is refused), or the store refused the delete:
    either way a warning line names the lock, and the lease object stays."""
    bucket = s3_env["bucket"]
    lease = f"s3://{bucket}/out/_lock.json"
    with lock.hold(storage.Location.parse(f"s3://{bucket}/out"), "ingest"):
        s3_env["client"].put_object(Bucket=bucket, Key="out/_lock.json", Body=b'{"host": "elsewhere", "pid": 1}')
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: could not release the lock {lease}"), lines
    assert "another run took the lease over" in lines[0] and storage.exists(lease)
    storage.delete(lease)

    with lock.hold(storage.Location.parse(f"s3://{bucket}/out"), "ingest"):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-this-test")
        storage._s3_client.cache_clear()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: could not release the lock {lease}"), lines
    assert "until it expires" in lines[0] and "wrong-secret" not in lines[0]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    storage._s3_client.cache_clear()
    assert storage.exists(lease)

    with lock.hold(storage.Location.parse(f"s3://{bucket}/fine"), "ingest"):
        pass
    assert capsys.readouterr().err == "" and not storage.exists(f"s3://{bucket}/fine/_lock.json")


def test_the_boto3_floor_has_the_conditional_requests_the_lock_sends():
    """put_object IfNoneMatch came in 1.35.2, delete_object IfMatch in 1.35.67, put_object IfMatch in
    1.35.69 (boto3's changelog): the floor is the last of them. The installed botocore has all three."""
    import botocore.session

    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"boto3>=([0-9.]+)"', text).group(1)
    assert tuple(int(part) for part in floor.split(".")) >= (1, 35, 69)
    model = botocore.session.get_session().get_service_model("s3")
    assert {"IfNoneMatch", "IfMatch"} <= set(model.operation_model("PutObject").input_shape.members)
    assert "IfMatch" in model.operation_model("DeleteObject").input_shape.members
