"""Multi-node Ray clusters shaped like cluster.yaml on one CPU machine, for tests/test_gpu_cluster.py.

Run as ``unshare -p -f --mount-proc python tests/fake_cluster.py SCENARIO WORKDIR``: every Ray process it
starts lives in that private pid namespace and ends with it, so nothing outside is touched (no
``ray stop``). Each scenario prints one JSON report as its last line.

- ``gpus``: a 4-CPU head and two 8-CPU workers that declare one GPU each (``ray.cluster_utils.Cluster``);
  encoders compute on the CPU through ``LATENTSWEEP_CPU_FOR_DECLARED_GPUS``. Ingest with injected CUDA
  out-of-memory errors, then with a fault that never clears, then a resume; an index and a sweep.
- ``autoscale``: a head with Ray's real autoscaler (the fake multi-node provider) and a GPU worker type at
  ``min_workers: 0``; ``latentsweep ingest --device auto`` through the command line.
- ``paths``: a CPU head and a worker started in its own mount namespace, where the test's folder is an
  empty tmpfs (a second host); ingests with local paths and with devices it lacks, through the command line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LATENTSWEEP = [sys.executable, "-m", "latentsweep"]
FAST = ["--weights", "untrained", "--feature-set", "selected", "--shard-size", "4", "--labels-from-folders",
        "--augment", "none"]
GPU_NODE = {"num_cpus": 8, "num_gpus": 1, "object_store_memory": 200 * 2**20}


def environment() -> None:
    """Every Ray process on loopback, the test hooks importable, declared GPUs computing on the CPU."""
    os.environ.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
        "LATENTSWEEP_CPU_FOR_DECLARED_GPUS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")])),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    os.environ.pop("RAY_ADDRESS", None)


def cli(*args: str, timeout: float = 240) -> dict:
    started = time.monotonic()
    result = subprocess.run([*LATENTSWEEP, *args], capture_output=True, text=True, timeout=timeout)
    return {"code": result.returncode, "stderr": result.stderr[-4000:], "stdout": result.stdout[-2000:],
            "seconds": round(time.monotonic() - started, 1)}


def corpus(root: Path) -> Path:
    sys.path.insert(0, str(TESTS))
    from images import photo_corpus

    photo_corpus(root, per_label=4)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gpus(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.errors import JobFailed
    from latentsweep.ingest.run import IngestJob, run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "object_store_memory": 200 * 2**20})
    workers = {cluster.add_node(**GPU_NODE).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    images = corpus(work / "corpus")
    report = {"gpu_nodes": sorted(workers)}

    def ingest(out: str, fault: str | None, shard_size: int = 4):
        env = {"env_vars": {"LATENTSWEEP_TEST_FAULT": fault}, "worker_process_setup_hook": "gpu_faults.install"}
        ray.init(address=cluster.address, runtime_env=env if fault else None, log_to_driver=False)
        try:
            job = IngestJob(str(images), out, EmbedSettings(weights="untrained", feature_set="selected",
                                                            device="cuda"),
                            shard_size=shard_size, labels_from_folders=True, augment="none", quiet=True, address=cluster.address)
            return run(job)
        finally:
            ray.shutdown()

    summary = ingest(str(work / "oom"), "oom-above-one")
    report["oom"] = {"embedded": summary.embedded, "errors": summary.errors, "device": summary.device,
                     "workers": summary.workers, "per_node": summary.images_per_node,
                     "gpus_per_node": summary.gpus_per_node}
    try:
        ingest(str(work / "fault"), "oom-always", shard_size=12)  # one shard: one actor, restarted
        report["fault"] = {"raised": None}
    except JobFailed as error:
        done = list((work / "fault" / "_done").glob("*.json")) if (work / "fault" / "_done").exists() else []
        rows = list((work / "fault" / "errors").glob("*.parquet")) if (work / "fault" / "errors").exists() else []
        report["fault"] = {"raised": str(error), "done_markers": len(done), "error_files": len(rows)}
    resumed = ingest(str(work / "fault"), None, shard_size=12)
    report["resumed"] = {"embedded": resumed.embedded, "errors": resumed.errors}

    built = cli("index", "build", str(work / "oom"), "--out", str(work / "index"), "--features", "2lat",
                "--address", cluster.address, "-q")
    swept = cli("sweep", str(work / "oom"), "--index", str(work / "index"), "--out", str(work / "results"),
                "--address", cluster.address, "-q")
    ray.init(address=cluster.address, log_to_driver=False)
    actors = [{"class": actor.class_name, "node": actor.node_id, "resources": actor.required_resources}
              for actor in list_actors(detail=True, limit=1000) if actor.class_name in ("SweepWorker", "QueryEngine")]
    ray.shutdown()
    report["sweep"] = {"index": built, "sweep": swept, "actors": actors}
    return report


def autoscale(work: Path) -> dict:
    """Ray's autoscaler with its fake multi-node provider: GPU workers start only when asked for."""
    port = free_port()
    config = {
        "cluster_name": "fake-gpu", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}",
                     # the fake nodes are Ray processes already: nothing to set up over SSH
                     "disable_node_updaters": True, "disable_launch_config_check": True}, "auth": {"ssh_user": "ray"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 4}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 8, "GPU": 1, "object_store_memory": 200 * 2**20},
                           "node_config": {}, "min_workers": 0, "max_workers": 2}},
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {}, "file_mounts_sync_continuously": False}
    temp = Path(tempfile.mkdtemp(prefix="/tmp/rayA"))
    (temp / "autoscaling.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4",
                    "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--include-dashboard=false",
                    "--object-store-memory=200000000", f"--autoscaling-config={temp / 'autoscaling.json'}"],
                   env=env, check=True, capture_output=True)
    address = f"127.0.0.1:{port}"
    images = corpus(work / "corpus")
    ran = cli("ingest", str(images), "--out", str(work / "out"), *FAST, "--device", "auto", "--address", address,
              "--wait-for-gpus", "120")
    summary = json.loads((work / "out" / "summary.json").read_text()) if ran["code"] == 0 else {}
    import ray

    ray.init(address=address, log_to_driver=False)
    nodes = [{"id": node["NodeID"], "gpus": node["Resources"].get("GPU", 0)} for node in ray.nodes() if node["Alive"]]
    ray.shutdown()
    return {"ingest": ran, "summary": summary, "nodes": nodes}


def paths(work: Path) -> dict:
    """A second 'host': a worker node whose view of ``work`` is an empty tmpfs of its own."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 * 2**20})
    temp = tempfile.mkdtemp(prefix="/tmp/rayB")
    node = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs tmpfs "{work}" && exec "{BIN / "ray"}" start --address={cluster.address} --num-cpus=2 '
         f'--node-ip-address=127.0.0.1 --object-store-memory=200000000 --temp-dir={temp} --block'],
        # `ray start --address` refuses to join with the single-machine switch set; the address is explicit
        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline and node.poll() is None:
        time.sleep(0.5)
    alive = len([n for n in ray.nodes() if n["Alive"]])
    ray.shutdown()
    images = corpus(work / "corpus")
    report = {"nodes": alive}
    report["local"] = cli("ingest", str(images), "--out", str(work / "out"), *FAST, "--device", "cpu",
                          "--address", cluster.address)
    report["out_exists"] = (work / "out").exists()
    report["cuda"] = cli("ingest", str(images), "--out", str(work / "out2"), *FAST, "--device", "cuda",
                         "--address", cluster.address)
    return report


if __name__ == "__main__":
    environment()
    scenario, work = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"gpus": gpus, "autoscale": autoscale, "paths": paths}[scenario](work)))
    sys.stdout.flush()
    os._exit(0)  # the pid namespace ends with this process, and every Ray process in it
