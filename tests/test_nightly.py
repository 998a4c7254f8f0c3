"""The nightly path as users run it, through the command line: unlabelled nights, a cluster node
without credentials, user mistakes (one line, exit code 2, nothing claimed), files the team can read."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pyarrow as pa
import pytest

from conftest import S3_SECRET_KEY, s3_variables
from images import photo_corpus
from processes import LATENTSWEEP, local_env, run_command
from latentsweep import lock, storage
from latentsweep.codec.settings import EmbedSettings
from latentsweep.index.build import IndexJob, build
from latentsweep.ingest.run import IngestJob, run as run_ingest
from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output

FAST = ["--weights", "untrained", "--device", "cpu", "--quiet", "--augment", "none"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_command([*LATENTSWEEP, *args], env)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The mistake's message: exit code 2 and exactly one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


# ---- an unlabelled night on S3 --------------------------------------------------------------------

def test_unlabelled_night_on_s3_keeps_labels_null_and_scores_nothing(s3_env, tmp_path, ray_session):
    """A night's uploads carry no labels: label and family stay NULL in the night's embeddings and in
    the results (never the string 'nan'), `labelled` is 0 and no metrics are printed or stored. The
    reference ingest starts with a typo'd setting, refused without claiming its output."""
    root = f"s3://{s3_env['bucket']}"
    env = s3_variables(s3_env)
    photo_corpus(tmp_path / "ref", per_label=3)
    for path in photo_corpus(tmp_path / "night", labels=("alpha", "beta"), per_label=2, size=(64, 80)):
        storage.write_bytes(f"{root}/incoming/upload-{path.parent.name}-{path.name}", path.read_bytes())
    emb = tmp_path / "deep" / "emb"
    ingest = ["ingest", str(tmp_path / "ref"), "--out", str(emb), "--labels-from-folders", *FAST]
    # a typo is refused before DEST is touched, so the corrected command runs without --overwrite
    one_error_line(cli(*ingest, "--feature-set", "2lats", env=env))
    assert not (tmp_path / "deep").exists()
    # the references in this process (the corrected command's job); the night through the CLI
    run_ingest(IngestJob(str(tmp_path / "ref"), str(emb), EmbedSettings(weights="untrained", feature_set="2lat",
                                                                        device="cpu"), labels_from_folders=True, augment="none",
                         quiet=True))
    build(IndexJob([str(emb)], f"{root}/index", shards=1, quiet=True))
    sweep = cli("sweep", f"{root}/incoming", "--index", f"{root}/index", "--out", f"{root}/results",
                "--date", "2026-11-23", "--weights", "untrained", "-q", env=env)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert "labelled=0" in sweep.stdout and "sweep metrics" not in sweep.stdout
    night = storage.read_table(f"{root}/results/_embeddings/date=2026-11-23/source-0/embeddings")
    parts = [info.uri for info in storage.list_files(f"{root}/results/date=2026-11-23")
             if info.uri.rsplit("/", 1)[-1].startswith("part-") and info.uri.endswith(".parquet")
             and "/_" not in info.uri.rsplit("date=", 1)[-1]]  # not the _aggregates/ beside the parts
    results = pa.concat_tables([storage.read_table(uri, columns=["label", "family", "predicted_label"])
                                for uri in parts])
    assert night.num_rows == results.num_rows == 4
    for table in (night, results):
        assert table.column("label").null_count == table.num_rows
        assert table.column("family").null_count == table.num_rows
    assert set(results.column("predicted_label").to_pylist()) <= {"alpha", "beta", "gamma", "unknown"}
    assert not (emb / "_lock").exists(), "a finished run keeps no lock file"
    for path in [emb / "plan.json", emb / "summary.json", *emb.glob("embeddings/*.parquet")]:
        # readable by the team as the umask says (mkstemp alone makes 0600)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~current_umask(), path
    reference = storage.read_table(str(emb / "embeddings"), columns=["label", "family"])
    assert reference.column("label").null_count == 0 and reference.column("family").null_count == reference.num_rows
    success = json.loads(storage.read_bytes(f"{root}/results/date=2026-11-23/_SUCCESS.json"))
    assert success["summary"]["labelled"] == 0 and not success["summary"]["metrics"]
    # no --open-set-threshold: the sweep used the one the index calibrated on its references
    index_manifest = json.loads(storage.read_bytes(f"{root}/index/manifest.json"))
    # no --features: the learned forensic descriptor the default ingest stored, not the paper's 2lat
    assert index_manifest["features"] == "self_description" and index_manifest["dimension"] == 515
    calibrated = index_manifest["open_set_threshold"]
    assert calibrated is not None and success["provenance"]["open_set_threshold"] == calibrated
    scored = pa.concat_tables([storage.read_table(uri, columns=["top_score", "unknown"]) for uri in parts])
    assert scored.column("unknown").to_pylist() == [s < calibrated for s in scored.column("top_score").to_pylist()]
    page = storage.read_bytes(f"{root}/results/date=2026-11-23/report.html").decode()
    assert not re.search(r"\bnan\b", re.sub(r"data:[^\"']+", "", page), re.IGNORECASE)


# ---- a cluster node without credentials -----------------------------------------------------------

NO_CREDENTIALS_NODE = """
import json, os, subprocess, sys
from ray.cluster_utils import Cluster
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
source, out = sys.argv[1], sys.argv[2]
# the head runs no work (as on real clusters): every task lands on the node without credentials
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 300 * 2**20})
secrets = {name: os.environ.pop(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
cluster.add_node(num_cpus=2, object_store_memory=300 * 2**20)  # its workers inherit this environment
os.environ.update(secrets)  # the user's shell, which runs the command, has them
cluster.wait_for_nodes()
result = subprocess.run([sys.executable, "-m", "latentsweep", "ingest", source, "--out", out, "--weights",
                         "untrained", "--feature-set", "2lat", "--device", "cpu", "--shard-size", "2",
                         "--workers", "2", "--quiet", "--address", cluster.address],
                        capture_output=True, text=True, timeout=300)
print(json.dumps({"code": result.returncode, "stderr": result.stderr, "stdout": result.stdout}))
cluster.shutdown()
"""


def test_a_node_without_credentials_stops_the_job_and_marks_nothing_failed(s3_env, tmp_path):
    """Head node with credentials, the worker node without (started from a shell that lacked them):
    the ingest exits 3 naming the variables to set; no shard is marked done with error rows, and a
    rerun with credentials embeds every image."""
    root = f"s3://{s3_env['bucket']}"
    env = s3_variables(s3_env)
    for path in photo_corpus(tmp_path / "corpus", per_label=4, size=(48, 48)):
        storage.write_bytes(f"{root}/corpus/{path.parent.name}/{path.name}", path.read_bytes())
    done = subprocess.run([sys.executable, "-c", NO_CREDENTIALS_NODE, f"{root}/corpus", f"{root}/emb"],
                          capture_output=True, text=True, timeout=400, env=local_env(env))
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed["code"] == 3, failed["stderr"][-5000:]
    lines = [line for line in failed["stderr"].splitlines() if line.strip()]
    # the worker's first read (its shard's manifest row group) is refused: AccessDenied for an
    # anonymous request, or NoCredentialsError (boto3) when the first read is an image
    assert len(lines) == 1 and " on Ray node " in lines[0], failed["stderr"][-3000:]
    assert any(code in lines[0] for code in ("AccessDenied", "NoCredentialsError")), lines[0]
    assert "AWS_ACCESS_KEY_ID" in lines[0] and S3_SECRET_KEY not in failed["stderr"] + failed["stdout"]
    markers = storage.read_json_folder(f"{root}/emb/_done")
    assert all(not record["errors"] for record in markers), markers  # never "unreadable" rows marked done
    rerun = cli("ingest", f"{root}/corpus", "--out", f"{root}/emb", "--feature-set", "2lat", "--shard-size", "2",
                *FAST, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "embedded=12" in rerun.stdout and "errors={}" in rerun.stdout
    assert f"shards_already_done={len(markers)}" in rerun.stdout


# ---- user mistakes --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_index(tmp_path_factory, ray_session):
    """A tiny index (gap pooling) and query embeddings of another pooling and of other columns."""
    from latentsweep.index.build import IndexJob, build

    root = tmp_path_factory.mktemp("mistakes")
    vectors, assignment = clustered(60, 3, sum(DIMS.values()), seed=2)
    labels = [("a", "b", "c")[i] for i in assignment]
    write_ingest_output(str(root / "ref"), vectors, labels, {}, files=2)
    write_ingest_output(str(root / "other-pooling"), vectors[:6], labels[:6], {}, files=1, pooling="gap+std")
    write_ingest_output(str(root / "other-columns"), vectors[:6, :24], labels[:6], {}, files=1,
                        dims={"y_hat_luma": 24})
    build(IndexJob([str(root / "ref")], str(root / "index"), shards=1, quiet=True))
    return root


def test_mistakes_are_one_line_with_exit_code_2_and_claim_nothing(small_index, tmp_path):
    root = small_index
    sweep = ["sweep", "--index", str(root / "index"), "--date", "2026-11-23", "-q"]
    config = tmp_path / "nightly.yaml"
    config.write_text("k: 5\nopen-set-treshold: 0.3\n")
    cases = {
        "pooling=gap+std": cli(sweep[0], str(root / "other-pooling"), *sweep[1:], "--out", str(tmp_path / "r1")),
        "lack y_hat_chroma": cli(sweep[0], str(root / "other-columns"), *sweep[1:], "--out", str(tmp_path / "r2")),
        "-k must be at least 1": cli(sweep[0], str(root / "ref"), *sweep[1:], "-k", "0", "--out", str(tmp_path / "r3")),
        "unknown keys": cli(sweep[0], str(root / "ref"), *sweep[1:], "--config", str(config), "--out", str(tmp_path / "r4")),
        "no index at": cli(sweep[0], str(root / "ref"), "--index", str(root / "no-index"), "--out", str(tmp_path / "r5")),
        "lack y_chrome": cli("index", "build", str(root / "ref"), "--out", str(tmp_path / "i1"), "--features",
                             "y_chrome", "-q"),
        "'Flatt' cannot be built": cli("index", "build", str(root / "ref"), "--out", str(tmp_path / "i2"),
                                       "--index-type", "Flatt", "-q"),
        "no such file or folder": cli("ingest", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "e1"), *FAST),
        # parsing mistakes: typer 0.29 vendors click, whose errors once escaped as tracebacks
        "No such option: --bogus": cli("ingest", str(root / "ref"), "--out", str(tmp_path / "e2"), "--bogus"),
        "No such option: --quite": cli("evaluate", "--index", str(root / "index"), "--out", str(tmp_path / "e3"), "--quite"),
        "Missing argument 'source'": cli("ingest"),
    }
    for expected, result in cases.items():
        assert expected in one_error_line(result), (expected, result.stderr)
    claimed = [path.name for path in tmp_path.iterdir() if path.name not in ("nightly.yaml",)]
    assert claimed == [], f"failed runs left {claimed}"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_run_leaves_no_claim_on_a_new_output(tmp_path):
    out = storage.Location.parse(str(tmp_path / "a" / "b" / "out"))
    with pytest.raises(RuntimeError):
        with lock.hold(out, "ingest"):
            assert (tmp_path / "a" / "b" / "out" / "_lock").exists()
            raise RuntimeError("the job failed before writing")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("earlier work")
    with lock.hold(storage.Location.parse(str(tmp_path / "kept")), "ingest"):
        pass
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["old.txt"]


def test_help_names_exit_codes_environment_and_feature_columns():
    result = cli("ingest", "--help", env={"COLUMNS": "160"})
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stdout).split())  # without rich's panel borders
    assert result.returncode == 0
    for needle in ("Exit codes", "130", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "RAY_ADDRESS", "y_chroma",
                   "residual_quant_luma"):
        assert needle in text, needle


def test_pull_from_a_missing_bucket_says_so(s3_env, tmp_path):
    result = cli("pull", "s3://no-such-bucket-at-all/results/date=2026-11-23", str(tmp_path / "pulled"),
                 env=s3_variables(s3_env))
    assert "the bucket does not exist" in one_error_line(result)
    empty = cli("pull", f"s3://{s3_env['bucket']}/results/date=2026-11-23", str(tmp_path / "pulled"),
                env=s3_variables(s3_env))
    assert "nothing at" in one_error_line(empty)


def test_evaluate_samples_from_the_command_line(small_index, tmp_path):
    result = cli("evaluate", "--index", str(small_index / "index"), "--out", str(tmp_path / "eval"), "--sample", "12")
    assert result.returncode == 0, result.stderr[-2000:]
    protocol = json.loads((tmp_path / "eval" / "metrics.json").read_text())["protocol"]
    assert protocol["queries"] == 12 and protocol["labelled_queries"] == 60
    assert "sample" in protocol["query_selection"]
    assert "must be" in one_error_line(cli("evaluate", "--index", str(small_index / "index"), "--out",
                                           str(tmp_path / "bad"), "--sample", "-1"))
