"""GPU clusters on a CPU machine, with real Ray: nodes that declare GPUs they do not have, Ray's real
autoscaler with fake GPU nodes, and a second host seeing its own filesystem. Each scenario of
tests/fake_cluster.py runs in a private pid namespace, so every Ray process it starts ends with it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from processes import local_env

HARNESS = Path(__file__).resolve().parent / "fake_cluster.py"


def _private_pids() -> bool:
    try:
        return subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not _private_pids(), reason="needs private pid namespaces (unshare -p, as root) to contain its Ray clusters")]


def scenario(name: str, work: Path, timeout: float = 400) -> dict:
    result = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, str(HARNESS), name, str(work)],
                            capture_output=True, text=True, timeout=timeout, env=local_env())
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory) -> dict:
    return scenario("gpus", tmp_path_factory.mktemp("gpus"))


def test_ingest_runs_one_encoder_per_gpu_node_of_a_cluster_yaml_shaped_cluster(gpu_cluster):
    ingest, nodes = gpu_cluster["oom"], set(gpu_cluster["gpu_nodes"])
    assert ingest["device"] == "cuda" and ingest["workers"] == 2
    assert set(ingest["per_node"]) == nodes and all(count > 0 for count in ingest["per_node"].values())
    assert ingest["gpus_per_node"] == {node: ["0"] for node in nodes}


def test_out_of_memory_is_retried_with_smaller_batches_never_written_as_rows(gpu_cluster):
    assert gpu_cluster["oom"]["embedded"] == 12 and gpu_cluster["oom"]["errors"] == {}


def test_a_device_fault_that_persists_stops_the_job_and_a_rerun_resumes(gpu_cluster):
    fault = gpu_cluster["fault"]
    assert fault["raised"] and "OutOfMemoryError" in fault["raised"] and "rerun to resume" in fault["raised"]
    assert fault["done_markers"] == 0 and fault["error_files"] == 0  # nothing marked done, no error rows
    assert gpu_cluster["resumed"] == {"embedded": 12, "errors": {}}


def test_sweep_actors_hold_the_gpus_of_the_gpu_nodes(gpu_cluster):
    sweep = gpu_cluster["sweep"]
    assert sweep["index"]["code"] == 0 and sweep["sweep"]["code"] == 0, sweep
    workers = [actor for actor in sweep["actors"] if actor["class"] == "SweepWorker"]
    assert workers and all(actor["node"] in gpu_cluster["gpu_nodes"] and actor["resources"].get("GPU") == 1
                           for actor in workers), workers


def test_the_autoscaler_starts_a_gpu_node_for_an_ingest_that_needs_one(tmp_path):
    report = scenario("autoscale", tmp_path)
    ran = report["ingest"]
    assert ran["code"] == 0, ran["stderr"]
    job_lines = [line for line in ran["stderr"].splitlines() if not line.startswith("ray:")]
    assert "no GPU node yet: asking the autoscaler" in job_lines[0]
    assert any("GPUs up after" in line for line in job_lines)
    gpu_nodes = {node["id"] for node in report["nodes"] if node["gpus"]}
    summary = report["summary"]
    assert gpu_nodes and summary["device"] == "cuda" and summary["embedded"] == 12
    assert set(summary["images_per_node"]) <= gpu_nodes


def test_local_paths_a_second_host_cannot_see_and_missing_gpus_are_refused(tmp_path):
    report = scenario("paths", tmp_path)
    assert report["nodes"] == 2
    local = report["local"]
    assert local["code"] == 2, local["stderr"]
    errors = [line for line in local["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not see" in errors[0] and "s3://" in errors[0]
    assert not report["out_exists"]
    cuda = report["cuda"]
    assert cuda["code"] == 2 and "no GPU node and no autoscaler" in cuda["stderr"] and cuda["seconds"] < 60
