"""Ingest: planning (pure), decoding of odd inputs, and the Ray pipeline end to end."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import assume, given, settings as hypothesis_settings, strategies as st

from images import gradient, odd_files, photo_corpus
from processes import assert_same_ingest, files_in, interrupt_when, local_env, run_command, settled
from latentsweep import schema, storage
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest import plan as planning
from latentsweep.ingest.decode import DecodeError, decode_image
from latentsweep.ingest.run import IngestJob, run
from latentsweep.ingest.sources import listing_table, parse_families

UNTRAINED = EmbedSettings(weights="untrained", feature_set="selected", device="cpu")


def job(source, out, **kwargs) -> IngestJob:
    kwargs.setdefault("embed", UNTRAINED)
    kwargs.setdefault("shard_size", 4)
    kwargs.setdefault("quiet", True)
    kwargs.setdefault("augment", "none")  # processed copies are tested in test_augment.py
    return IngestJob(str(source), str(out), **kwargs)


def read_output(out) -> tuple[pa.Table, pa.Table]:
    location = storage.Location.parse(str(out))
    embeddings = storage.read_table(location.join("embeddings"))
    errors = storage.read_table(location.join("errors"))
    return embeddings.sort_by("id"), errors.sort_by("id")


# ---- planning ---------------------------------------------------------------------------------

def listing(count: int, version: str = "v1", start: int = 0, changed: dict | None = None) -> pa.Table:
    changed = changed or {}
    return listing_table([(f"/data/{i}.png", 10, changed.get(i, version), None, None)
                          for i in range(start, start + count)])


@pytest.fixture
def plan_of(tmp_path):
    """``plan_of(rows, shard_size, settings, previous=None)``: the plan of a listing table (streamed in
    batches of 7 rows) against the items of a previous plan, each in a scratch folder of its own."""
    folders = iter(range(1_000))

    def make(rows: pa.Table, shard_size: int, settings: dict, previous: planning.Plan | None = None):
        folder = tmp_path / f"plan-{next(folders)}"
        folder.mkdir()
        listed = planning.spill_listing(rows.to_batches(max_chunksize=7), str(folder))
        return planning.plan(listed, shard_size, settings, [items_of(previous)] if previous else (), str(folder))

    return make


def items_of(plan: planning.Plan) -> pa.Table:
    """Every manifest row of ``plan``, part after part."""
    parts = np.unique(plan.shards.column("shard").to_numpy() // planning.SHARDS_PER_PART).tolist()
    return pa.concat_tables([schema.MANIFEST_SCHEMA.empty_table()] +
                            [chunk for part in parts for chunk in plan.part_items(part)])


def shard_of(plan: planning.Plan, key: str = "id") -> dict:
    items = items_of(plan)
    return dict(zip(items.column(key).to_pylist(), items.column("shard").to_pylist()))


def pending(plan: planning.Plan, done: dict[int, str]) -> pa.Table:
    """The shards a run would process, selected as the run selects them (``Plan.pending_mask``)."""
    return plan.shards.filter(plan.pending_mask(done))


def digests_of(items: pa.Table, settings: dict) -> dict[int, str]:
    """Each shard's digest computed the plain way: its items in id order, one line each."""
    hashers: dict[int, object] = {}
    for row in sorted(items.to_pylist(), key=lambda row: (row["shard"], row["id"])):
        hasher = hashers.setdefault(row["shard"], hashlib.sha256(json.dumps(settings, sort_keys=True).encode()))
        hasher.update("{id}\t{uri}\t{version}\t{label}\t{family}\n".format(**row).encode())
    return {shard: hasher.hexdigest() for shard, hasher in hashers.items()}


def test_plan_is_deterministic_and_covers_every_item(plan_of):
    first = plan_of(listing(100), 16, {"codec": "x"})
    again = plan_of(listing(100).take(pa.array(range(99, -1, -1))), 16, {"codec": "x"})
    assert items_of(first).equals(items_of(again)) and first.shards.equals(again.shards)
    assert first.shards.num_rows == 7 and first.shards.column("items").to_pylist() == [16] * 6 + [4]
    ids = items_of(first).column("id").to_pylist()
    assert sorted(ids) == sorted(schema.stable_id(f"/data/{i}.png") for i in range(100)) and len(set(ids)) == 100
    assert first.counts == {"inputs": 100, "unchanged": 0, "new": 100, "changed": 0, "removed": 0, "collisions": 0}


def test_plan_digest_changes_with_content_and_settings(plan_of):
    base = plan_of(listing(20), 8, {"codec": "x"})
    changed = plan_of(listing(20, changed={3: "v2"}), 8, {"codec": "x"}, previous=base)
    differing = [b for a, b in zip(base.shards.column("digest").to_pylist(), changed.shards.column("digest").to_pylist())
                 if a != b]
    assert len(differing) == 1 and changed.counts["changed"] == 1
    assert sum(changed.shards.column("fresh").to_pylist()) == 1
    other = plan_of(listing(20), 8, {"codec": "y"})
    assert not set(base.shards.column("digest").to_pylist()) & set(other.shards.column("digest").to_pylist())
    done = dict(zip(base.shards.column("shard").to_pylist(), base.shards.column("digest").to_pylist()))
    assert pending(base, done).num_rows == 0
    assert pending(changed, done).column("digest").to_pylist() == differing


def test_growth_keeps_every_items_shard_and_fills_new_shards(plan_of):
    """Adding 10% never moves an item: the old shards keep their digests, the new items fill new shards."""
    first = plan_of(listing(100), 16, {})
    grown = plan_of(listing(110), 16, {}, previous=first)
    assert grown.counts == {"inputs": 110, "unchanged": 100, "new": 10, "changed": 0, "removed": 0,
                            "collisions": 0}
    old, now = shard_of(first), shard_of(grown)
    assert all(now[item_id] == shard for item_id, shard in old.items())
    assert {now[item_id] for item_id in set(now) - set(old)} == {7}  # one new shard after shards 0..6
    done = dict(zip(first.shards.column("shard").to_pylist(), first.shards.column("digest").to_pylist()))
    todo = pending(grown, done)
    assert todo.column("shard").to_pylist() == [7] and todo.column("items").to_pylist() == [10]


def test_removed_items_leave_their_shards_and_empty_shards_are_dropped(plan_of):
    first = plan_of(listing(40), 8, {})
    shards = shard_of(first, "uri")
    gone_shard = shards["/data/0.png"]
    kept = [uri for uri, shard in shards.items() if shard != gone_shard and uri != "/data/39.png"]
    remaining = listing_table([(uri, 10, "v1", None, None) for uri in kept])
    shrunk = plan_of(remaining, 8, {}, previous=first)
    assert shrunk.counts["removed"] == 9 and shrunk.counts["new"] == 0 and shrunk.dropped == [gone_shard]
    assert gone_shard not in shrunk.shards.column("shard").to_pylist()
    done = dict(zip(first.shards.column("shard").to_pylist(), first.shards.column("digest").to_pylist()))
    assert pending(shrunk, done).column("shard").to_pylist() == [shards["/data/39.png"]]
    assert sum(shrunk.shards.column("fresh").to_pylist()) == 0  # the rewritten shard encodes nothing


def test_duplicate_uris_collapse_to_the_first_listed(plan_of):
    rows = listing_table([("/a.png", 1, "first", None, None)] + [(f"/{i}.png", 1, "v", None, None) for i in range(20)] +
                         [("/a.png", 1, "second", None, None)])
    items = items_of(plan_of(rows, 10, {}))
    assert items.num_rows == 21 and dict(zip(items.column("uri").to_pylist(), items.column("version").to_pylist()))[
        "/a.png"] == "first"


def test_partitioned_planning_is_the_same_plan_at_any_granularity(plan_of, monkeypatch):
    """Id ranges, spill groups, manifest parts and digest chunks are how a plan is computed, not what it
    is: with 4 ranges, parts of 3 shards and digests 2 shards at a time, a corpus plans as with the
    defaults; grown, shrunk and changed at once, it keeps every known item's shard, fills new shards
    in id order, drops the emptied ones, and each digest is the plain digest of its shard's items."""
    settings = {"codec": "x"}
    rows = listing_table([(f"/data/{i}.png", 10, "v1", f"l{i % 3}" if i % 5 else None, None) for i in range(200)])
    default = plan_of(rows, 8, settings)
    default_items = items_of(default)
    for name, value in {"PARTITION_BITS": 2, "PARTITIONS": 4, "SPILL_ROWS": 16, "SHARDS_PER_PART": 3,
                        "DIGEST_SHARDS": 2}.items():
        monkeypatch.setattr(planning, name, value)
    small = plan_of(rows, 8, settings)
    assert small.shards.equals(default.shards) and items_of(small).equals(default_items)
    assert dict(zip(small.shards.column("shard").to_pylist(), small.shards.column("digest").to_pylist())) == \
        digests_of(items_of(small), settings)

    old = shard_of(small, "uri")
    gone = {uri for uri, shard in old.items() if shard in (2, 5)} | {"/data/0.png", "/data/1.png"}
    now_rows = [(f"/data/{i}.png", 10, "v2" if i == 50 else "v1", f"l{i % 3}" if i % 5 else None, None)
                for i in range(260) if f"/data/{i}.png" not in gone]
    grown = plan_of(listing_table(now_rows), 8, settings, previous=small)
    now = shard_of(grown, "uri")
    assert all(now[uri] == shard for uri, shard in old.items() if uri not in gone)
    new = sorted((schema.stable_id(uri), uri) for uri in set(now) - set(old))
    assert [now[uri] for _, uri in new] == [25 + index // 8 for index in range(60)]  # after shards 0..24, in id order
    assert grown.counts == {"inputs": 260 - len(gone), "unchanged": 199 - len(gone), "new": 60, "changed": 1,
                            "removed": len(gone), "collisions": 0}
    assert grown.dropped == [2, 5] and sum(grown.shards.column("fresh").to_pylist()) == 61
    assert dict(zip(grown.shards.column("shard").to_pylist(), grown.shards.column("digest").to_pylist())) == \
        digests_of(items_of(grown), settings)


def test_families_parse_from_flags_and_file(tmp_path):
    assert parse_families(["gan=sg2,sg3", "dm=sana"]) == {"sg2": "gan", "sg3": "gan", "sana": "dm"}
    spec = tmp_path / "families.yaml"
    spec.write_text("gan: [sg2]\ndm: [sana, sd]\n")
    assert parse_families([str(spec)]) == {"sg2": "gan", "sana": "dm", "sd": "dm"}
    with pytest.raises(ValueError, match="bad family entry"):
        parse_families(["gan=", "x"])


# ---- decoding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(odd_files()))
def test_odd_inputs_decode_or_fail_with_a_reason(name):
    data, expected_error = odd_files()[name]
    if expected_error is None:
        image = decode_image(data, max_pixels=10_000_000, min_side=16)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    else:
        with pytest.raises(DecodeError) as caught:
            decode_image(data, max_pixels=10_000_000, min_side=16)
        assert caught.value.error_type == expected_error, str(caught.value)


def test_exif_orientation_and_sixteen_bit_values():
    data, _ = odd_files()["rotated.jpg"]
    assert decode_image(data).shape == (64, 48, 3)  # 48x64 stored, displayed rotated
    sixteen = decode_image(odd_files()["sixteen.png"][0])
    expected = gradient(40, 40)[:, :, 0]
    assert np.abs(sixteen[:, :, 0].astype(int) - expected).max() <= 1
    cmyk = decode_image(odd_files()["cmyk.jpg"][0])
    assert np.abs(cmyk.astype(int) - gradient(48, 64)).mean() < 12


# ---- the pipeline -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    photo_corpus(root)
    (root / "alpha" / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored: unsupported suffix")
    return root


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("reference-run")
    summary = run(job(corpus, out, labels_from_folders=True, augment="none", families={"alpha": "gan", "beta": "gan",
                                                                         "gamma": "dm"}))
    return out, summary


def planned_shards(out) -> list[int]:
    """The shards of ``out``'s plan: 13 inputs, 4 a shard, in id order: shards 0 to 3."""
    shards = storage.read_table(storage.Location.parse(str(out)).join("shards.parquet")).column("shard").to_pylist()
    assert shards == [0, 1, 2, 3]
    return shards


def test_local_folder_to_parquet(reference_run):
    out, summary = reference_run
    assert summary.inputs == 13 and summary.embedded == 12 and summary.errors == {"not_image": 1}
    shards = planned_shards(out)
    assert summary.skipped_unsupported == 1 and summary.shards == summary.shards_processed == len(shards) > 1
    embeddings, errors = read_output(out)
    schema.check(embeddings.schema, "embeddings", "embeddings")
    assert embeddings.num_rows == 12 and errors.num_rows == 1
    assert errors.column("uri")[0].as_py().endswith("broken.png")
    labels = embeddings.column("label").to_pylist()
    assert sorted(set(labels)) == ["alpha", "beta", "gamma"]
    families = dict(zip(labels, embeddings.column("family").to_pylist()))
    assert families == {"alpha": "gan", "beta": "gan", "gamma": "dm"}
    assert schema.tensor_columns(embeddings.schema) == {
        "y_hat_luma": 160, "y_hat_chroma": 96, "residual_luma": 160, "residual_chroma": 96,
        "residual_quant_luma": 160, "residual_quant_chroma": 96, "fingerprint": 251, "residual_spectrum": 32,
        "self_description": 515}
    assert embeddings.column("fingerprint").null_count == 0
    assert set(embeddings.column("weights_digest").to_pylist()) == {"untrained-seed0"}
    assert embeddings.column("id").to_pylist() == [schema.stable_id(u) for u in embeddings.column("uri").to_pylist()]
    assert sorted(os.listdir(out / "embeddings")) == [f"shard-{i:05d}.parquet" for i in shards]


def test_vectors_match_direct_embedding(reference_run):
    """The pipeline's vectors are what the codec gives for the same image in one process."""
    from latentsweep.codec.embed import Embedder
    from latentsweep.ingest.decode import decode_image

    out, _ = reference_run
    embeddings, _ = read_output(out)
    row = embeddings.slice(0, 1).to_pylist()[0]
    image = decode_image(Path(row["uri"]).read_bytes())
    direct = Embedder(UNTRAINED).embed([image])
    np.testing.assert_allclose(np.array(row["y_hat_luma"]), direct["y_hat_luma"][0], atol=1e-5)


def test_rerun_does_nothing_and_resume_redoes_only_missing_shards(reference_run, corpus, tmp_path):
    out, _ = reference_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()}
    again = run(job(corpus, out, labels_from_folders=True, augment="none", families={"alpha": "gan", "beta": "gan",
                                                                       "gamma": "dm"}))
    assert again.shards_already_done == len(planned_shards(out)) and again.shards_processed == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "embeddings").iterdir()} == before
    assert again.embedded == 12  # totals still count every finished shard


def test_ids_follow_the_uri_when_the_source_moves_grows_and_is_listed_elsewhere(reference_run, corpus, tmp_path,
                                                                                monkeypatch):
    """An item's id is the SHA-256 of its URI (docs/commands.md), a local URI its absolute path: the corpus
    renamed, one file added and the source given relative to another working directory, every row's id is
    that of its new absolute path, the same files keep their content and get new ids, the new file adds one."""
    import shutil

    from PIL import Image

    out, _ = reference_run
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(corpus, moved)
    Image.fromarray(gradient(72, 88)).save(moved / "beta" / "added.png")
    monkeypatch.chdir(tmp_path / "elsewhere")
    summary = run(job("renamed", tmp_path / "other", labels_from_folders=True))
    first, _ = read_output(out)
    second, _ = read_output(tmp_path / "other")
    assert summary.embedded == 13
    uris = second.column("uri").to_pylist()
    assert all(uri.startswith(str(moved) + os.sep) for uri in uris)
    assert second.column("id").to_pylist() == [schema.stable_id(uri) for uri in uris]

    def by_path(table, root) -> dict[str, tuple[int, str]]:
        return {os.path.relpath(uri, root): (item_id, digest) for uri, item_id, digest in zip(
            *(table.column(name).to_pylist() for name in ("uri", "id", "sha256")))}

    before, after = by_path(first, corpus), by_path(second, moved)
    assert set(after) == set(before) | {os.path.join("beta", "added.png")}
    assert all(after[path][1] == before[path][1] for path in before)  # the same bytes ...
    assert not {after[path][0] for path in before} & {before[path][0] for path in before}  # ... under new URIs


def test_changed_settings_are_refused_without_overwrite(reference_run, corpus):
    out, _ = reference_run
    with pytest.raises(ValueError, match="other settings"):
        run(job(corpus, out, embed=EmbedSettings(weights="untrained", feature_set="2lat", device="cpu")))


def test_manifest_input_with_relative_uris(corpus, tmp_path, ray_session):
    manifest = corpus / "manifest.csv"
    manifest.write_text("uri,label,family\nalpha/000.png,sg2,gan\nbeta/001.png,sana,dm\nmissing.png,x,gan\n")
    summary = run(job(manifest, tmp_path / "out"))
    embeddings, errors = read_output(tmp_path / "out")
    assert summary.inputs == 3 and embeddings.num_rows == 2
    assert embeddings.column("label").to_pylist() != [] and set(embeddings.column("family").to_pylist()) == {"gan", "dm"}
    assert errors.column("error_type").to_pylist() == ["unreadable"]
    manifest.unlink()


def test_reference_latents_input(tmp_path, ray_session):
    torch.manual_seed(0)
    folder = tmp_path / "latents" / "sg2"
    folder.mkdir(parents=True)
    expected = {}
    for n in range(3):
        y_hat = torch.randn(1, 256, 4, 6)
        torch.save(y_hat, folder / f"JAI_{n}_65.pt")
        expected[str(folder / f"JAI_{n}_65.pt")] = y_hat.mean(dim=(2, 3))[0]
    torch.save({"model_y": {"y_hat": torch.randn(1, 160, 2, 2)}}, folder / "partial.pt")
    (folder / "evil.pt").write_bytes(__import__("pickle").dumps({"x": ValueError("a pickled object")}))
    two_lat = EmbedSettings(weights="untrained", feature_set="2lat", device="cpu")
    summary = run(job(tmp_path / "latents", tmp_path / "out", labels_from_folders=True, augment="none", embed=two_lat))
    embeddings, errors = read_output(tmp_path / "out")
    assert summary.embedded == 3 and summary.errors == {"bad_latents": 2}
    for row in embeddings.to_pylist():
        assert row["codec"] == "jpegai-reference" and row["weights_digest"] == "reference"
        assert row["label"] == "sg2" and row["source"] == "latents"
        assert row["fingerprint"] is None and row["residual_spectrum"] is None  # no pixels to describe
        combined = np.concatenate([row["y_hat_luma"], row["y_hat_chroma"]])
        np.testing.assert_allclose(combined, expected[row["uri"]].numpy(), atol=1e-6)
    messages = dict(zip([Path(u).name for u in errors.column("uri").to_pylist()],
                        errors.column("message").to_pylist()))
    assert "lacks y_hat_chroma" in messages["partial.pt"] and "weights_only" in messages["evil.pt"]


def test_odd_inputs_end_as_rows(tmp_path, ray_session):
    folder = tmp_path / "odd"
    folder.mkdir()
    expected = {}
    for name, (data, error_type) in odd_files().items():
        (folder / name).write_bytes(data)
        expected[name] = error_type
    summary = run(job(folder, tmp_path / "out", max_pixels=10_000_000))
    embeddings, errors = read_output(tmp_path / "out")
    got = {Path(u).name: None for u in embeddings.column("uri").to_pylist()}
    got.update(zip([Path(u).name for u in errors.column("uri").to_pylist()],
                   errors.column("error_type").to_pylist()))
    assert got == expected
    assert summary.embedded + sum(summary.errors.values()) == len(expected)


def test_s3_to_s3(corpus, s3_env, ray_session):
    bucket = s3_env["bucket"]
    for path in sorted(corpus.rglob("*.png"))[:6]:
        storage.write_bytes(f"s3://{bucket}/in/{path.parent.name}/{path.name}", path.read_bytes())
    summary = run(job(f"s3://{bucket}/in", f"s3://{bucket}/out", labels_from_folders=True))
    assert summary.inputs == 6 and summary.embedded + summary.failed == 6
    embeddings, errors = read_output(f"s3://{bucket}/out")
    assert embeddings.num_rows == summary.embedded and errors.num_rows == summary.failed
    assert all(u.startswith(f"s3://{bucket}/in/") for u in embeddings.column("uri").to_pylist())
    keys = [info.uri for info in storage.list_files(f"s3://{bucket}/out")]
    assert {f"s3://{bucket}/out/{name}" for name in ("summary.json", "shards.parquet", "manifest/part-00000.parquet")} <= set(keys)


def test_interrupted_runs_resume_to_identical_output(tmp_path, ray_session):
    """Ctrl-C (SIGINT to the process group) after the first shard lands, then SIGKILL of the resumed
    run after its first shard: the third run completes to the rows and values of an undisturbed run."""
    corpus = tmp_path / "corpus"
    photo_corpus(corpus, per_label=10, size=(120, 150))
    (corpus / "alpha" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "latentsweep", "ingest", str(corpus), "--out", str(out),
               "--labels-from-folders", "--augment", "none", "--weights", "untrained", "--feature-set", "selected",
               "--device", "cpu", "--shard-size", "2", "--batch-size", "2", "--quiet"]
    markers = lambda: files_in(out / "_done")
    code, stderr = interrupt_when(command, lambda: markers() >= 1, signal.SIGINT)
    assert code == 130 and "interrupted" in stderr and "rerun" in stderr, stderr[-2000:]
    after_sigint, planned = settled(markers), json.loads((out / "plan.json").read_text())["shards"]
    assert 1 <= after_sigint < planned, "the interrupt must land mid-run"
    assert not list(out.rglob(".tmp-*")), "an interrupted write left a temporary file"
    interrupt_when(command, lambda: markers() > after_sigint, signal.SIGKILL)
    after_sigkill = settled(markers)
    assert after_sigint < after_sigkill < planned
    resumed = run_command(command)
    assert resumed.returncode == 1, resumed.stderr[-2000:]  # 1: the broken file is an error row
    assert f"shards_already_done={after_sigkill}" in resumed.stdout
    clean = run(job(corpus, tmp_path / "clean", labels_from_folders=True, augment="none", shard_size=2,
                    embed=EmbedSettings(weights="untrained", feature_set="selected", device="cpu",
                                        max_batch=2)))  # the same flags, in-process
    assert clean.failed == 1
    assert_same_ingest(out, tmp_path / "clean")


def test_killed_encoder_actor_is_replaced_and_output_is_unchanged(tmp_path, ray_session):
    """SIGKILL the encoder actor's process once the first shard lands: Ray Data restarts the actor
    and resubmits its batch; the job completes to the rows of an undisturbed run (none lost, none
    twice)."""
    import threading

    import psutil

    corpus = tmp_path / "corpus"
    photo_corpus(corpus, per_label=16, size=(120, 150))
    settings = dict(labels_from_folders=True, augment="none", shard_size=2, embed=EmbedSettings(
        weights="untrained", feature_set="selected", device="cpu", max_batch=2))
    clean = run(job(corpus, tmp_path / "clean", **settings))
    out = tmp_path / "disturbed"
    killed: list[int] = []
    shards_at_kill: list[int] = []

    def kill_encoder_after_first_shard():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and files_in(out / "_done") == 0:
            time.sleep(0.01)
        shards_at_kill.append(files_in(out / "_done"))
        # only our own Ray's workers: descendants of this test process
        for process in psutil.Process().children(recursive=True):
            try:
                if "ShardWorker" in " ".join(process.cmdline()):
                    process.kill()
                    killed.append(process.pid)
            except psutil.NoSuchProcess:
                pass

    killer = threading.Thread(target=kill_encoder_after_first_shard)
    killer.start()
    disturbed = run(job(corpus, out, **settings))
    killer.join()
    assert killed, "no encoder actor process was found to kill"
    assert shards_at_kill[0] < disturbed.shards, "the kill must land mid-run"
    assert disturbed.shards_processed == disturbed.shards == clean.shards_processed == clean.shards
    assert disturbed.embedded == clean.embedded == 48
    assert_same_ingest(out, tmp_path / "clean")


TWO_NODES = """
import json, os, sys
from ray.cluster_utils import Cluster
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest.run import IngestJob, run
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 300 * 2**20})
cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
cluster.wait_for_nodes()
summary = run(IngestJob(sys.argv[1], sys.argv[2], EmbedSettings(weights="untrained", feature_set="selected",
                                                                device="cpu"),
                        shard_size=4, labels_from_folders=True, augment="none", workers=2, quiet=True,
                        address=cluster.address))
print(json.dumps({"nodes": len(summary.images_per_node), "per_node": summary.images_per_node,
                  "embedded": summary.embedded}))
import ray
ray.shutdown()
cluster.shutdown()
"""


def test_two_nodes_share_the_work_and_match_one_node(tmp_path, ray_session):
    corpus = tmp_path / "corpus"
    photo_corpus(corpus, per_label=20, size=(120, 150))
    one_node = run(job(corpus, tmp_path / "one", labels_from_folders=True))
    result = subprocess.run([sys.executable, "-c", TWO_NODES, str(corpus), str(tmp_path / "two")],
                            capture_output=True, text=True, timeout=400, env=local_env())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2 and all(count > 0 for count in report["per_node"].values()), report
    assert report["embedded"] == one_node.embedded == 60
    one, _ = read_output(tmp_path / "one")
    two, _ = read_output(tmp_path / "two")
    assert one.column("id").equals(two.column("id"))
    for name in ("y_hat_luma", "residual_quant_chroma"):
        np.testing.assert_allclose(np.stack(one.column(name).to_numpy(zero_copy_only=False)),
                                   np.stack(two.column(name).to_numpy(zero_copy_only=False)), atol=1e-6)


ERROR_TYPES = {"not_image", "truncated", "too_large", "too_small", "unreadable"}


def _encoded(seed: int, mode: str, width: int, height: int, fmt: str, cut: float) -> bytes | None:
    """An image of ``mode`` and size in ``fmt``, its bytes cut to the fraction ``cut`` (1 = whole);
    None when Pillow cannot write that mode in that format."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = (Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257) if mode == "I;16"
             else Image.fromarray(pixels).convert(mode))
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt)
    except (OSError, ValueError, KeyError):
        return None
    raw = buffer.getvalue()
    return raw[:int(len(raw) * cut)] if cut < 1 else raw


@functools.lru_cache(maxsize=1)
def cpu_embedder():
    from latentsweep.codec.embed import Embedder

    return Embedder(EmbedSettings(feature_set="selected", pooling="gap+std", device="cpu"))


@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA"]),
       width=st.integers(1, 90), height=st.integers(1, 90), fmt=st.sampled_from(["PNG", "TIFF", "WEBP", "JPEG"]),
       cut=st.sampled_from([1.0, 1.0, 0.6, 0.1, 0.0]))
@hypothesis_settings(max_examples=60, deadline=None)
def test_decode_and_pool_never_crash(seed, mode, width, height, fmt, cut):
    """Any image (mode, size, format, truncation) decodes to RGB and pools to finite vectors that do
    not depend on the batch, or is refused with one of the documented error types."""
    data = _encoded(seed, mode, width, height, fmt, cut)
    assume(data is not None)
    try:
        rgb = decode_image(data, min_side=8)
    except DecodeError as error:
        assert error.error_type in ERROR_TYPES and str(error)
        if cut == 1.0:
            assert error.error_type == "too_small" and min(width, height) < 8
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    other = np.zeros((64, 64, 3), np.uint8)
    alone = cpu_embedder().embed([rgb])
    together = cpu_embedder().embed([other, rgb])
    for column, values in alone.items():
        assert np.isfinite(values).all()
        np.testing.assert_allclose(values[0], together[column][1], atol=1e-5)


HOLD_A_PLAN_FOLDER = """
import sys
from latentsweep.ingest.run import _scratch
with _scratch() as folder:
    print(folder, flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_planning_scratch_of_a_killed_driver_is_removed_by_the_next_plan(tmp_path):
    """SIGKILL skips the clean-up of the plan's scratch folder: the next planner on the host removes the
    folders no live process holds, and never a live one's, even when that process lives in another PID
    namespace (a container sharing /tmp), where its process id means nothing here."""
    import shutil
    import signal

    from latentsweep.ingest.run import dry_run

    elsewhere = ["unshare", "-p", "-f", "--mount-proc"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0 else []

    def holder(prefix: list[str]) -> tuple[subprocess.Popen, Path]:
        process = subprocess.Popen([*prefix, sys.executable, "-c", HOLD_A_PLAN_FOLDER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        return process, Path(process.stdout.readline().strip())

    live, live_folder = holder(elsewhere)
    killed, dead_folder = holder([])
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert dead_folder.is_dir() and live_folder.is_dir()
        photo_corpus(tmp_path / "corpus", labels=("alpha",), per_label=2)
        assert dry_run(job(tmp_path / "corpus", tmp_path / "out"))["inputs"] == 2
        assert not dead_folder.exists() and live_folder.is_dir()
    finally:
        live.communicate("", timeout=30)
    assert live.returncode == 0 and not live_folder.exists()  # the live run cleans up after itself


def test_growing_and_shrinking_a_corpus_encodes_only_what_changed(tmp_path, ray_session):
    """Stable shards through the real pipeline: +10% images (and one rewritten) encode just those,
    the finished shards' files stay untouched; removed images leave the output and the index; a
    whole shard removed is dropped with its files; another --shard-size is refused. --dry-run on the
    command line predicts each step and writes nothing."""
    import shutil

    from latentsweep.index.build import IndexJob, build
    from latentsweep.ingest.run import dry_run

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    photo_corpus(corpus, labels=("alpha", "beta"), per_label=10, size=(48, 48))
    settings = dict(labels_from_folders=True, augment="none", shard_size=4)
    first = run(job(corpus, out, **settings))
    assert first.embedded == first.items_encoded == 20 and first.shards == 5
    stamps = lambda: {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    before = stamps()

    extra = photo_corpus(tmp_path / "extra", labels=("alpha",), per_label=2, size=(56, 40))
    for path in extra:
        shutil.copy(path, corpus / "alpha" / f"new-{path.name}")
    changed = corpus / "beta" / "003.png"
    changed.write_bytes((corpus / "beta" / "004.png").read_bytes())  # new bytes, new mtime
    cli = [sys.executable, "-m", "latentsweep", "ingest", str(corpus), "--out", str(out), "--labels-from-folders",
           "--augment", "none", "--shard-size", "4", "--weights", "untrained", "--feature-set", "selected", "--device", "cpu", "--dry-run"]
    predicted = run_command(cli)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    plan = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert stamps() == before, "--dry-run wrote something"
    assert (plan["inputs"], plan["new"], plan["changed"], plan["removed"]) == (22, 2, 1, 0)
    assert plan["shards_total"] == 6 and plan["shards_to_process"] == 2 and plan["items_to_encode"] == 3

    grown = run(job(corpus, out, **settings))
    assert grown.items_encoded == 3 and grown.embedded == 22 and grown.shards_already_done == 4
    after = stamps()
    rewritten = {path.name for path, stamp in after.items() if before.get(path) not in (None, stamp)
                 and path.parts[0] in ("embeddings", "errors", "_done")}
    manifest_rows = storage.read_table(str(out / "manifest")).to_pylist()
    shard_of = {row["uri"]: row["shard"] for row in manifest_rows}
    assert rewritten == {f"shard-{shard_of[str(changed)]:05d}{suffix}" for suffix in (".parquet", ".json")}
    embeddings, _ = read_output(out)
    assert embeddings.num_rows == 22 and len(set(embeddings.column("id").to_pylist())) == 22

    dropped = sorted(uri for uri, shard in shard_of.items() if shard == 0)
    removed = dropped + [next(uri for uri, shard in shard_of.items() if shard == 1)]
    for uri in removed:
        os.unlink(uri)
    assert dry_run(job(corpus, out, **settings))["shards_dropped"] == 1
    shrunk = run(job(corpus, out, **settings))
    assert shrunk.removed == len(removed) == 5 and shrunk.items_encoded == 0 and shrunk.embedded == 17
    assert not (out / "embeddings" / "shard-00000.parquet").exists() and not (out / "_done" / "shard-00000.json").exists()
    embeddings, _ = read_output(out)
    assert embeddings.num_rows == 17 and not set(removed) & set(embeddings.column("uri").to_pylist())
    manifest = build(IndexJob([str(out)], str(tmp_path / "index"), features="2lat", shards=1, quiet=True))
    assert manifest.vectors == 17
    with pytest.raises(ValueError, match="is sharded 4 items a shard, not 8"):
        run(job(corpus, out, labels_from_folders=True, augment="none", shard_size=8))


def test_a_lost_s3_lease_stops_the_writer(s3_env, tmp_path):
    """Another run takes the lease over while an ingest runs (a lease of 2 s, so the takeover is
    possible at once): the ingest stops with exit 3 saying it lost the lock; finished shards stay."""
    from conftest import s3_variables

    bucket = s3_env["bucket"]
    for path in photo_corpus(tmp_path / "corpus", per_label=6, size=(64, 64)):
        storage.write_bytes(f"s3://{bucket}/in/{path.parent.name}/{path.name}", path.read_bytes())
    command = [sys.executable, "-m", "latentsweep", "ingest", f"s3://{bucket}/in", "--out", f"s3://{bucket}/out",
               "--shard-size", "1", "--batch-size", "1", "--workers", "1", "--weights", "untrained",
               "--feature-set", "2lat", "--device", "cpu", "--quiet"]
    process = subprocess.Popen(command, env=local_env({**s3_variables(s3_env), "LATENTSWEEP_LEASE_SECONDS": "2"}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    client = s3_env["client"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list(storage.list_files(f"s3://{bucket}/out/_done")):
        time.sleep(0.1)
    client.put_object(Bucket=bucket, Key="out/_lock.json",
                      Body=json.dumps({"stage": "ingest", "host": "elsewhere", "pid": 1}).encode())
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 3, stderr[-3000:]
    assert "lost the lock on s3://" in stderr and "taken over" in stderr
    done = len(list(storage.list_files(f"s3://{bucket}/out/_done")))
    assert 1 <= done < 18, "the writer must stop before the end"


def test_done_markers_are_read_from_their_index_unless_changed(tmp_path, ray_session, monkeypatch):
    """A finished run records its markers in _done.parquet; the next run reads only markers that are
    new or changed since (one GET a shard no more), and still sees a marker rewritten behind its back."""
    from latentsweep.ingest import write

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    photo_corpus(corpus, labels=("alpha",), per_label=6, size=(40, 40))
    first = run(job(corpus, out, shard_size=2))
    index = storage.read_table(str(out / "_done.parquet"))
    assert sorted(index.column("name").to_pylist()) == [f"shard-{i:05d}.json" for i in range(3)]
    reads: list[str] = []
    real_read = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri: reads.append(str(uri)) or real_read(uri))
    assert len(write.done_records(storage.Location.parse(str(out)))) == 3 and not [r for r in reads if "_done/" in r]
    marker = out / "_done" / "shard-00001.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "digest": "stale"}))  # another version of one marker
    records = write.done_records(storage.Location.parse(str(out)))
    assert [r for r in reads if "_done/" in r] == [str(marker)]
    assert {r["shard_id"]: r["digest"] for r in records}[1] == "stale"
    monkeypatch.setattr(storage, "read_bytes", real_read)
    again = run(job(corpus, out, shard_size=2))  # the stale shard is redone, the others skipped
    assert again.shards_already_done == 2 and again.shards_processed == 1 and again.embedded == first.embedded
