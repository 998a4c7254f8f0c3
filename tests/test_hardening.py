"""Hardening: one writer per output, the S3 server stopped mid-job, hostile object keys, and
credentials that never reach logs, outputs or errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import S3_ACCESS_KEY, S3_SECRET_KEY, WeedServer, s3_variables
from images import photo_corpus
from processes import LATENTSWEEP, assert_same_ingest, local_env, run_command
from latentsweep import lock, storage
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest.run import IngestJob, run

INGEST_FLAGS = ["--weights", "untrained", "--feature-set", "selected", "--device", "cpu", "--quiet",
                "--augment", "none"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_command([*LATENTSWEEP, *args], env)


def ingest_in_process(source, out, **kwargs):
    kwargs.setdefault("augment", "none")  # processed copies are tested in test_augment.py
    return run(IngestJob(str(source), str(out), EmbedSettings(weights="untrained", feature_set="selected",
                                                              device="cpu"), quiet=True, **kwargs))


HOLD = """
import sys, time
from latentsweep import lock, storage
with lock.hold(storage.Location.parse(sys.argv[1]), "holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(uri: str) -> subprocess.Popen:
    """Another process holding ``uri``'s lock (it prints "held" once it has it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, uri], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert process.stdout.readline().strip() == "held"
    return process


# ---- one writer per output ----------------------------------------------------------------------

def test_second_run_on_a_busy_local_output_is_refused(tmp_path, ray_session):
    """A second ingest into an output another live process holds exits 3 naming the holder; the
    kernel drops the lock of a SIGKILLed holder, so the rerun starts at once."""
    photo_corpus(tmp_path / "corpus", per_label=2)
    out = tmp_path / "out"
    holder = start_holder(str(out))
    refused = cli("ingest", str(tmp_path / "corpus"), "--out", str(out), *INGEST_FLAGS)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert f"is in use by another run (holder, pid {holder.pid}" in refused.stderr
    assert not (out / "embeddings").exists(), "the refused run wrote output"
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert ingest_in_process(tmp_path / "corpus", out).embedded == 6


def test_concurrent_ingests_into_one_output_one_is_refused(tmp_path, ray_session):
    """Two real ingests started together into one output: one runs to completion, the other is
    refused before writing anything; the output equals a lone run's."""
    photo_corpus(tmp_path / "corpus", per_label=4)
    out = tmp_path / "out"
    command = [*LATENTSWEEP, "ingest", str(tmp_path / "corpus"), "--out", str(out), "--shard-size", "2",
               *INGEST_FLAGS]
    runs = [subprocess.Popen(command, env=local_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    refused = next(err for code, err in results if code == 3)
    assert "is in use by another run (ingest, pid" in refused
    ingest_in_process(tmp_path / "corpus", tmp_path / "lone", shard_size=2)  # the flags above, in this process
    assert_same_ingest(out, tmp_path / "lone")


def test_s3_lease_is_exclusive_and_taken_over_only_when_stale(s3_env, monkeypatch):
    out = storage.Location.parse(f"s3://{s3_env['bucket']}/night")
    # a race between two writers: the conditional PUT lets exactly one in
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def contend():
        barrier.wait()
        try:
            with lock.hold(out, "contender"):
                outcomes.append("held")
                time.sleep(1.0)
        except lock.OutputBusy:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held", "refused"]
    assert not storage.exists(out.join(lock.LEASE_FILE)), "the lease outlived its holder's block"
    # a live holder in another process: refused; once it is SIGKILLed (same host, no such pid): taken over
    holder = start_holder(out.uri)
    with pytest.raises(lock.OutputBusy, match=f"pid {holder.pid}"):
        with lock.hold(out, "second"):
            pass
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    with lock.hold(out, "after the crash"):
        lease = json.loads(storage.read_bytes(out.join(lock.LEASE_FILE)))
        assert lease["stage"] == "after the crash" and lease["pid"] == os.getpid()
    # a lease from another host: refused while fresh, taken over once not renewed for LEASE_SECONDS
    storage.write_bytes(out.join(lock.LEASE_FILE), json.dumps({"stage": "sweep", "host": "elsewhere",
                                                                 "pid": 1}).encode())
    with pytest.raises(lock.OutputBusy, match="on elsewhere.*expires in"):
        with lock.hold(out, "third"):
            pass
    monkeypatch.setattr(lock, "LEASE_SECONDS", 0.0)
    with lock.hold(out, "fourth"):
        assert json.loads(storage.read_bytes(out.join(lock.LEASE_FILE)))["stage"] == "fourth"


# ---- the S3 server stops in the middle of a job --------------------------------------------------

def test_s3_server_stopped_mid_ingest_then_restarted(tmp_path, ray_session):
    """The server dies after the first shard lands: the job stops with a clear error (exit 3, no
    secret), every shard marked done is whole, and after a restart the rerun completes to the rows
    of an undisturbed run."""
    server = WeedServer(tmp_path / "seaweedfs")
    server.start()
    try:
        server.client.create_bucket(Bucket="outage")
        photo_corpus(tmp_path / "corpus", per_label=16, size=(120, 150))
        env = {**s3_variables({"endpoint": server.endpoint}), "AWS_MAX_ATTEMPTS": "2"}
        command = [*LATENTSWEEP, "ingest", str(tmp_path / "corpus"), "--out", "s3://outage/out",
                   "--shard-size", "2", "--batch-size", "2", *INGEST_FLAGS]
        process = subprocess.Popen(command, env=local_env(env),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def done_keys() -> list[str]:
            found = server.client.list_objects_v2(Bucket="outage", Prefix="out/_done/")
            return [item["Key"] for item in found.get("Contents", [])]

        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None and not done_keys():
            time.sleep(0.05)
        server.stop()
        code = process.wait(timeout=300)
        stderr = process.stderr.read()
        assert code == 3, stderr[-3000:]
        assert "error: cannot" in stderr and "s3://outage/out" in stderr and "did not answer" in stderr
        assert S3_SECRET_KEY not in stderr and S3_ACCESS_KEY not in stderr
        server.start()
        planned = json.loads(server.client.get_object(Bucket="outage", Key="out/plan.json")["Body"].read())
        markers = done_keys()
        assert 1 <= len(markers) < planned["shards"], "the outage must land mid-run"
        for key in markers:  # a shard marked done is whole: both its files parse
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            for kind in ("embeddings", "errors"):
                storage.parse_table(server.client.get_object(Bucket="outage", Key=f"out/{kind}/{name}.parquet")
                                    ["Body"].read(), f"s3://outage/out/{kind}/{name}.parquet")
        resumed = cli(*command[3:], env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"shards_already_done={len(markers)}" in resumed.stdout
        ingest_in_process(tmp_path / "corpus", tmp_path / "clean", shard_size=2)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            storage._s3_client.cache_clear()
            assert_same_ingest("s3://outage/out", tmp_path / "clean")
    finally:
        storage._s3_client.cache_clear()
        server.stop()


def test_unreachable_store_stops_the_job_instead_of_failing_the_item(monkeypatch):
    """An object store that does not answer is not the image's fault: decoding raises (the job
    stops, a rerun resumes) instead of recording an error row that a rerun would trust."""
    from conftest import free_port
    from latentsweep.ingest.decode import fetch

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    storage._s3_client.cache_clear()
    with pytest.raises(storage.StorageError) as caught:
        fetch("s3://bucket/a.png", max_pixels=10**6, min_side=16)
    assert caught.value.transient and "did not answer" in str(caught.value)
    storage._s3_client.cache_clear()


# ---- hostile keys and credentials ---------------------------------------------------------------

HOSTILE_KEYS = ["in/a b/photo one.png", "in/ünï/çødé 画像.png", "in/%2e%2e/percent.png",
                "in/ends with space .png", "in/y.png", "escape.png"]
# SeaweedFS refuses keys with ".." segments (InvalidRequest), so those come from a manifest
MANIFEST = ["a b/photo one.png", "ünï/çødé 画像.png", "x/../y.png", "../escape.png", "../../../etc/passwd.png"]


def test_hostile_keys_end_as_rows_and_nothing_is_written_outside_the_prefix(s3_env, ray_session, tmp_path):
    """Keys with spaces, unicode and escapes, and manifest entries climbing out with "..": each is an
    embedding or an error row with its reason; outputs land under the output prefix only."""
    bucket = s3_env["bucket"]
    photo_corpus(tmp_path / "corpus", per_label=2)
    for key, path in zip(HOSTILE_KEYS, sorted((tmp_path / "corpus").rglob("*.png"))):
        storage.write_bytes(f"s3://{bucket}/{key}", path.read_bytes())
    listed = ingest_in_process(f"s3://{bucket}/in", f"s3://{bucket}/out/listed run", labels_from_folders=True)
    assert listed.embedded == 5 and listed.failed == 0
    embedded = storage.read_table(f"s3://{bucket}/out/listed run/embeddings")
    assert sorted(embedded.column("uri").to_pylist()) == sorted(f"s3://{bucket}/{k}" for k in HOSTILE_KEYS[:5])
    storage.write_bytes(f"s3://{bucket}/in/manifest.csv", ("uri\n" + "\n".join(f'"{u}"' for u in MANIFEST)).encode())
    from_manifest = ingest_in_process(f"s3://{bucket}/in/manifest.csv", f"s3://{bucket}/out/manifest run")
    assert from_manifest.embedded == 4 and from_manifest.errors == {"unreadable": 1}
    uris = storage.read_table(f"s3://{bucket}/out/manifest run/embeddings").column("uri").to_pylist()
    assert sorted(uris) == sorted(f"s3://{bucket}/{k}" for k in ("in/a b/photo one.png", "in/ünï/çødé 画像.png",
                                                                  "in/y.png", "escape.png"))
    errors = storage.read_table(f"s3://{bucket}/out/manifest run/errors")
    assert errors.column("uri").to_pylist() == [f"s3://{bucket}/../../etc/passwd.png"]  # read nowhere
    inputs = {f"s3://{bucket}/{key}" for key in HOSTILE_KEYS} | {f"s3://{bucket}/in/manifest.csv"}
    written = [info.uri for info in storage.list_files(f"s3://{bucket}") if info.uri not in inputs]
    assert written and all(uri.startswith(f"s3://{bucket}/out/") for uri in written), written


def test_credentials_never_reach_outputs_logs_or_errors(s3_env, tmp_path):
    """A whole night on S3 (ingest, index build, sweep, a failing command) with recognisable
    credentials: neither the secret nor the key id appears in stdout, stderr, any object written,
    or Ray's session logs."""
    bucket = s3_env["bucket"]
    photo_corpus(tmp_path / "corpus", per_label=3)
    photo_corpus(tmp_path / "night", labels=("alpha", "beta"), per_label=2)
    ray_logs = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**s3_variables(s3_env), "RAY_TMPDIR": ray_logs}
    root = f"s3://{bucket}"
    steps = [
        cli("ingest", str(tmp_path / "corpus"), "--out", f"{root}/emb", "--labels-from-folders",
            "--augment", "none", "--device", "cpu", env=env),
        cli("index", "build", f"{root}/emb", "--out", f"{root}/index", "--shards", "1", env=env),
        cli("sweep", str(tmp_path / "night"), "--index", f"{root}/index", "--out", f"{root}/results",
            "--date", "2026-11-23", env=env),
        cli("index", "build", "s3://no-such-bucket-here/emb", "--out", f"{root}/x", env=env),
    ]
    assert [step.returncode for step in steps] == [0, 0, 0, 2], [s.stderr[-1500:] for s in steps]
    texts = [step.stdout + step.stderr for step in steps]
    texts += [storage.read_bytes(info.uri).decode("latin-1") for info in storage.list_files(root)]
    log_files = [path for path in Path(ray_logs).rglob("*") if path.is_file() and not path.is_socket()]
    assert any(path.suffix in (".out", ".err", ".log") for path in log_files), "no Ray logs were found"
    texts += [path.read_bytes().decode("latin-1") for path in log_files]
    for secret in (S3_SECRET_KEY, S3_ACCESS_KEY):
        assert not [text[:200] for text in texts if secret in text], f"{secret} leaked"
