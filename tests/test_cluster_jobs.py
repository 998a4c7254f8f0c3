"""The cluster workflow as the README documents it: a real Ray head node with the job server, jobs
submitted with ``ray job submit`` whose runtime env carries the S3 settings (the head node has none),
ingest -> index build -> sweep on S3, and nothing of the secret in the jobs' logs or Ray's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import S3_SECRET_KEY, free_port, s3_variables
from images import photo_corpus
from latentsweep import storage
from processes import LATENTSWEEP

RAY = str(Path(sys.executable).parent / "ray")
FAST = ["--weights", "untrained", "--device", "cpu"]
DATE = "2026-11-23"

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without S3 credentials or endpoint and without a Ray address."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("AWS_") and name not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **extra}


class HeadNode:
    """``ray start --head --block`` with the dashboard (the job server) on loopback, in its own
    session and temporary folder, every port chosen free."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        ports = {"port": self.gcs_port, "dashboard-port": self.dashboard_port,
                 "dashboard-agent-listen-port": free_port(), "dashboard-agent-grpc-port": free_port(),
                 "runtime-env-agent-port": free_port(), "metrics-export-port": free_port(),
                 "ray-client-server-port": free_port(), "node-manager-port": free_port(),
                 "object-manager-port": free_port()}
        self.command = [RAY, "start", "--head", "--block", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                        "--object-store-memory=500000000", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        self.command += [f"--{name}={port}" for name, port in ports.items()]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: every component takes 127.0.0.1 as the node address
        # (otherwise Ray resolves even an explicit 127.0.0.1 to the routable address).
        # RAY_LOGGER_LEVEL=warning: Ray's runtime-env agent logs every runtime env it sets up, env_vars
        # and so credentials included, at INFO in runtime_env_agent.log (docs/operations.md, "Ray").
        with open(self.temp_dir.parent / "head.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=clean_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_LOGGER_LEVEL="warning"))
        deadline = time.monotonic() + 90
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the Ray head node did not start:\n"
                            + (self.temp_dir.parent / "head.log").read_text()[-3000:])
            time.sleep(0.5)

    def ready(self) -> bool:
        """The job server answers and the head node's agent, which runs the jobs, reports."""
        try:
            with urllib.request.urlopen(f"{self.address}/nodes?view=summary", timeout=2) as answer:
                summary = json.loads(answer.read())["data"]["summary"]
        except (OSError, ValueError, KeyError):
            return False
        return any(node.get("agent", {}).get("pid") for node in summary)

    def stop(self) -> None:
        """SIGTERM the head's process group, SIGKILL what is left, then SIGKILL any process of this
        node that left the group (job drivers run in their own session) and report them."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def leftovers(self) -> list[int]:
        """Processes still running that belong to this node: their command line or environment names
        its temporary folder or its GCS address."""
        marks = (str(self.temp_dir).encode(), f"127.0.0.1:{self.gcs_port}".encode())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and any(mark in text for mark in marks):
                found.append(int(entry.name))
        return found


@pytest.fixture(scope="module")
def head_node(tmp_path_factory):
    # a short folder: Ray's Unix sockets live below it (at most 107 bytes a path)
    node = HeadNode(tmp_path_factory.mktemp("rj") / "ray")
    node.temp_dir.mkdir()
    node.start()
    yield node
    node.stop()
    deadline = time.monotonic() + 10
    while (left := node.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # ours: started by this head node
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the head node outlived it: {left}"


def submit(head: HeadNode, job_id: str, entrypoint: list[str], runtime_env: dict,
           working_dir: Path | None = None) -> subprocess.CompletedProcess:
    """``ray job submit`` as a user types it, from a shell without S3 settings; waits for the end."""
    command = [RAY, "job", "submit", "--address", head.address, "--submission-id", job_id,
               "--runtime-env-json", json.dumps(runtime_env)]
    if working_dir is not None:
        command += ["--working-dir", str(working_dir)]
    return subprocess.run(command + ["--", *entrypoint], capture_output=True, text=True, timeout=240,
                          env=clean_env())


def job_logs(head: HeadNode, job_id: str) -> str:
    done = subprocess.run([RAY, "job", "logs", "--address", head.address, job_id], capture_output=True,
                          text=True, timeout=60, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_jobs_submitted_with_their_own_runtime_env_run_the_nightly_path(head_node, s3_env, tmp_path):
    """Credentials and endpoint reach the jobs only through ``--runtime-env-json``: ingest, index
    build and a sweep of unlabelled queries run on S3; the secret appears in no job log and nowhere
    in the head node's Ray folder; a relative ``--out`` under ``--working-dir`` is refused (exit 2)."""
    root = f"s3://{s3_env['bucket']}"
    for path in photo_corpus(tmp_path / "ref", per_label=4, size=(48, 48)):
        storage.write_bytes(f"{root}/ref/{path.parent.name}/{path.name}", path.read_bytes())
    queries = photo_corpus(tmp_path / "night", labels=("x",), per_label=5, size=(48, 56))
    for path in queries:  # a night's uploads: no label folders
        storage.write_bytes(f"{root}/queries/{path.name}", path.read_bytes())
    env = {"env_vars": {name: value for name, value in s3_variables(s3_env).items()}}
    assert env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == S3_SECRET_KEY

    steps = {
        "ingest": ["ingest", f"{root}/ref", "--out", f"{root}/emb", "--labels-from-folders",
                   "--feature-set", "2lat", "--augment", "none", *FAST],
        "index": ["index", "build", f"{root}/emb", "--out", f"{root}/index"],
        "sweep": ["sweep", f"{root}/queries", "--index", f"{root}/index", "--out", f"{root}/results",
                  "--date", DATE, "-k", "3", "--weights", "untrained"],
    }
    outputs = {}
    for name, arguments in steps.items():
        done = submit(head_node, f"latentsweep-{name}", LATENTSWEEP + arguments, env)
        outputs[name] = done.stdout + done.stderr
        assert done.returncode == 0, f"{name}:\n{outputs[name][-4000:]}"
        assert "succeeded" in outputs[name], outputs[name][-2000:]

    import pyarrow as pa

    parts = [info.uri for info in storage.list_files(f"{root}/results/date={DATE}")
             if info.uri.rsplit("/", 1)[-1].startswith("part-") and info.uri.endswith(".parquet")
             and "/_" not in info.uri.rsplit("date=", 1)[-1]]  # not the _aggregates/ beside the parts
    assert parts
    results = pa.concat_tables(storage.read_table(part, columns=["uri", "label", "predicted_label"])
                               for part in parts)
    assert results.num_rows == len(queries)
    assert results.column("label").null_count == len(queries)
    assert set(results.column("predicted_label").to_pylist()) <= {"alpha", "beta", "gamma"}
    assert storage.exists(f"{root}/results/date={DATE}/_SUCCESS.json")

    # a relative path would land in Ray's temporary copy of the working directory: refused
    working_dir = tmp_path / "project"
    working_dir.mkdir()
    (working_dir / "notes.txt").write_text("the folder ray job submit uploads\n")
    refused = submit(head_node, "latentsweep-relative", LATENTSWEEP + [
        "ingest", f"{root}/ref", "--out", "results", *FAST], env, working_dir)
    outputs["relative"] = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "exit code 2" in outputs["relative"], outputs["relative"][-3000:]
    log = job_logs(head_node, "latentsweep-relative")
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "relative path inside a Ray job" in errors[0], log[-3000:]
    assert "pass an absolute path or an s3:// URI" in errors[0]
    assert "Traceback" not in log

    for name in steps:
        log = job_logs(head_node, f"latentsweep-{name}")
        assert S3_SECRET_KEY not in log, name
        assert "Failed to merge the Job's runtime env" not in log
    for name, text in outputs.items():
        assert S3_SECRET_KEY not in text, f"ray job submit printed the secret ({name})"
    secret = S3_SECRET_KEY.encode()
    leaked = [str(path) for path in head_node.temp_dir.rglob("*")
              if path.is_file() and not path.is_symlink() and secret in path.read_bytes()]
    assert not leaked, f"the secret is in Ray's files: {leaked}"
