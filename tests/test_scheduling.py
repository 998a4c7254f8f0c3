"""Actor shapes, devices and cluster addresses decided from the nodes a cluster has (pure functions),
and the one-line refusals a user meets through the command line."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import free_port
from images import photo_corpus
from latentsweep.accelerator import is_fault, out_of_memory
from latentsweep.cluster import host_and_port
from latentsweep.errors import UsageError
from latentsweep.resources import Node, choose_device, largest_memory, memory_shortfall, pool_layout, require_fit
from processes import LATENTSWEEP, refused_before_writing, run_command

GIB = 2**30
HEAD = Node("head", 4, 0, 16 * GIB)          # cluster.yaml: m6i.xlarge head
GPU_WORKER = Node("gpu", 8, 1, 30 * GIB)     # cluster.yaml: g6.2xlarge, one L4


def test_a_gpu_encoder_fits_one_node_of_the_cluster_yaml_shape():
    cluster = [HEAD, GPU_WORKER, Node("gpu2", 8, 1, 30 * GIB)]
    layout = pool_layout(cluster, "cuda", None)
    request = {"CPU": layout["num_cpus"], "GPU": layout["num_gpus"]}
    assert layout["size"] == 2 and layout["device"] == "cuda"
    # every actor fits a GPU node alone, and leaves that node a CPU for Ray Data's own tasks
    assert GPU_WORKER.holds(request) and not GPU_WORKER.holds({**request, "CPU": request["CPU"] + 2})
    assert not HEAD.holds(request)
    # more workers asked for than GPUs: the surplus could never be placed
    assert pool_layout(cluster, "cuda", 5)["size"] == 2


def test_a_node_with_several_gpus_shares_its_cpus_among_their_actors():
    layout = pool_layout([HEAD, Node("big", 64, 4, 256 * GIB)], "cuda", None)
    assert layout["size"] == 4 and 4 * layout["num_cpus"] < 64 and layout["fetch_threads"] >= 2


def test_cpu_actors_never_take_every_cpu_and_fit_the_smallest_node():
    two = pool_layout([Node("a", 2, 0, GIB)], "cpu", None)
    assert two["size"] == 2 and two["size"] * two["num_cpus"] <= 1 and two["threads"] == 1
    one = pool_layout([Node("a", 2, 0, GIB)], "cpu", 1)
    assert one["size"] == 1 and one["threads"] == 2
    mixed = [Node("a", 1, 0, GIB), Node("b", 16, 0, GIB)]
    layout = pool_layout(mixed, "cpu", None)
    assert layout["size"] * layout["num_cpus"] <= 16 and all(node.holds({"CPU": layout["num_cpus"]}) for node in mixed)


def test_devices_follow_what_the_cluster_has_or_can_add():
    assert choose_device("auto", 2, False).device == "cuda"
    waits = choose_device("auto", 0, True)
    assert waits.device == "cuda" and waits.wait_for_gpus and "autoscaler" in waits.reason
    fallback = choose_device("auto", 0, False)
    assert fallback.device == "cpu" and "no GPU" in fallback.reason
    with pytest.raises(UsageError, match="no GPU node and no autoscaler"):
        choose_device("cuda", 0, False)
    assert choose_device("cpu", 8, True).device == "cpu"
    with pytest.raises(UsageError, match="unknown --device"):
        choose_device("gpu", 1, False)


def test_an_actor_no_node_can_hold_is_refused_naming_the_shapes():
    with pytest.raises(UsageError) as refused:
        require_fit({"CPU": 1, "memory": 40 * GIB}, [HEAD, GPU_WORKER], "a sweep actor", "use more --index-parts")
    message = str(refused.value)
    assert "40.00 GiB" in message and "8 CPU, 1 GPU" in message and "--index-parts" in message
    require_fit({"CPU": 1, "memory": 20 * GIB}, [HEAD, GPU_WORKER], "a sweep actor")


def test_a_memory_request_beyond_the_largest_node_is_named_with_both_sizes():
    largest = largest_memory([HEAD, GPU_WORKER])
    assert largest == 30 * GIB and largest_memory([]) == 0
    line = memory_shortfall(32 * GIB, largest, "index part 1", "placement.engine_memory")
    assert line == ("index part 1 needs about 32.00 GiB of memory (placement.engine_memory) and the largest Ray "
                    "node offers 30.00 GiB")
    assert memory_shortfall(30 * GIB, largest, "index part 1", "placement.engine_memory") is None  # exactly fits
    assert memory_shortfall(32 * GIB, 0, "index part 1", "placement.engine_memory") is None  # no node says


def test_cluster_addresses_parse_to_the_port_they_connect_to():
    assert host_and_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_and_port("ray://head") == ("head", 10001)
    assert host_and_port("http://127.0.0.1:8265") == ("127.0.0.1", 8265)
    assert host_and_port("auto") is None
    with pytest.raises(UsageError):
        host_and_port("head:port")


def test_device_faults_are_told_apart_from_bad_inputs():
    assert is_fault(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_fault(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"))
    if hasattr(torch, "AcceleratorError"):
        assert is_fault(torch.AcceleratorError("device lost"))
    assert not is_fault(ValueError("image file is truncated"))
    assert not is_fault(RuntimeError("Given groups=1, weight of size [192, 3, 5, 5], expected input[1, 4, 64, 64]"))


def test_an_unreachable_address_is_one_line_and_exit_3_within_30_seconds(tmp_path):
    photo_corpus(tmp_path / "corpus", per_label=1)
    started = time.monotonic()
    result = run_command([*LATENTSWEEP, "ingest", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"),
                          "--address", f"127.0.0.1:{free_port()}"], timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode == 3, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach the Ray cluster" in lines[0]
    assert not (tmp_path / "out").exists()


def test_half_precision_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    photo_corpus(tmp_path / "corpus", per_label=1)
    line = refused_before_writing([*LATENTSWEEP, "ingest", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"),
                                   "--half", "--device", "cpu", "--weights", "untrained"], tmp_path / "out")
    assert "--half" in line and "CPU" in line


def test_a_stalled_stage_says_what_ray_waits_to_place(ray_session):
    import ray

    from latentsweep.cluster import StallWatch

    lines: list[str] = []
    stuck = ray.remote(num_gpus=4)(type("Stuck", (), {"ping": lambda self: 1})).remote()  # no node has 4 GPUs
    try:
        with StallWatch("ingest", lines.append, seconds=2):
            deadline = time.monotonic() + 90  # Ray's monitor reports demands every 5 s, later under load
            while time.monotonic() < deadline and not any("'GPU': 4" in line for line in lines):
                time.sleep(0.5)
    finally:
        ray.kill(stuck)
    assert any(line.startswith("ingest: nothing finished for") and "'GPU': 4" in line for line in lines), lines
