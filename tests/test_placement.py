"""GPU placement of query engines: which index types FAISS can search on a GPU, the per-device memory
budget, how many GPUs index parts and query actors request, which GPUs an engine in a Ray worker may
use, and the refusal of memory requests no node can hold. FAISS here is faiss-cpu: the rules are
checked as pure functions and the loading path's decisions without moving anything."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from latentsweep.errors import UsageError
from latentsweep.index.manifest import Manifest, ShardEntry
from latentsweep.index.placement import (GPU_MAX_K, device_budget, faiss_temp_memory, gpu_bytes, place,
                                         usable_gpus)
from latentsweep.query.actor import gpu_requests

GIB = 2**30
MIB = 2**20
LABELS = ["sg2", "sg3", "sana", "sd"]
FAMILIES = {"sg2": "gan", "sg3": "gan", "sana": "dm", "sd": "dm"}


def manifest(spec: str, shards: int = 3, count: int = 100, dimension: int = 32, search_params: str = "") -> Manifest:
    entries = [ShardEntry(i, f"shard-{i}.faiss", "", 0, f"shard-{i}.parquet", "", count) for i in range(shards)]
    return Manifest(dimension=dimension, features="2lat", columns=[], pooling="gap", codec="c", weights_digest="w",
                    scaler={}, index_spec=spec, search_params=search_params, shards=entries)


def on_gpu(spec: str, k: int = 10, dimension: int = 64, search_params: str = ""):
    return place(spec, k, dimension, [1000], [80 * GIB], search_params)


# ---- which types, k and nprobe FAISS searches on a GPU ----------------------------------------

def test_pq_codes_below_8_bits_stay_on_the_cpu_naming_the_bits():
    for spec, bits in [("PQ16x4", 4), ("IVF256,PQ16x4", 4), ("IVF1024,PQ32x6", 6)]:
        placement = on_gpu(spec)
        assert placement.devices == (None,) and placement.gpus_used == (), spec
        assert "8 bits" in placement.reason and f"not {bits}" in placement.reason, placement.reason
    assert on_gpu("IVF256,PQ32x8").devices == (0,)  # 8 bits spelt out is the GPU's one code size


def test_ivf_pq_sub_quantizers_and_float16_lookup_tables():
    """Up to 48 sub-quantizers search with float32 tables (the CPU's arithmetic); 56, 64 and 96 only
    with float16 tables, which the placement asks for; other counts have no GPU kernel."""
    for m in (8, 32, 48):
        placement = on_gpu(f"IVF256,PQ{m}")
        assert placement.devices == (0,) and not placement.float16_lookup_tables, m
    for m in (56, 64, 96):
        placement = on_gpu(f"IVF256,PQ{m}", dimension=1344)
        assert placement.devices == (0,) and placement.float16_lookup_tables and "float16" in placement.reason, m
    for m in (7, 36, 128):
        placement = on_gpu(f"IVF256,PQ{m}", dimension=8064)
        assert placement.devices == (None,) and f"not {m}" in placement.reason, m
    assert on_gpu("PQ32").devices == (None,)  # PQ without IVF: no GPU index


def test_ivf_codes_and_flat_types_the_gpu_cloner_accepts():
    for spec in ("Flat", "SQfp16", "IVF256,Flat", "IVF256,SQ8", "IVF256,SQ4", "IVF256,SQ6", "IVF256,SQfp16"):
        placement = on_gpu(spec)
        assert placement.devices == (0,) and not placement.float16_lookup_tables, spec
    for spec in ("SQ8", "SQ4", "IVF256,SQbf16", "IVF256,PQ32x4fs", "LSH", "PCA32,Flat"):
        assert on_gpu(spec).devices == (None,), spec
    # SQ8 and SQ4 keep two floats per dimension in a block's shared memory: below 6,144 dimensions
    wide = on_gpu("IVF256,SQ8", dimension=6144)
    assert wide.devices == (None,) and "6144" in wide.reason
    assert on_gpu("IVF256,SQ8", dimension=6143).devices == (0,)
    assert on_gpu("IVF256,SQfp16", dimension=6144).devices == (0,)


def test_hnsw_and_k_or_nprobe_above_2048_stay_on_the_cpu():
    assert GPU_MAX_K == 2048
    for spec in ("HNSW32", "HNSW64", "IVF1024_HNSW32,Flat"):
        hnsw = place(spec, 10, 64, [100] * 4, [80 * GIB, 80 * GIB])
        assert hnsw.devices == (None,) * 4 and "no GPU HNSW" in hnsw.reason, spec
    assert on_gpu("Flat", k=2048).devices == (0,)
    deep = on_gpu("Flat", k=2049)
    assert deep.devices == (None,) and "2048" in deep.reason and "k=2049" in deep.reason
    assert on_gpu("IVF1024,Flat", search_params="nprobe=64").devices == (0,)
    assert on_gpu("IVF65536,Flat", search_params="nprobe=4096").devices == (None,)
    assert place("Flat", 10, 64, [100] * 3, []).devices == (None,) * 3  # no GPU at all


# ---- device memory --------------------------------------------------------------------------------

def test_faiss_temporary_memory_by_device_size():
    """StandardGpuResources' default (getDefaultTempMemForGPU): 512 MiB up to 4 GiB, 1 GiB up to 8 GiB,
    1.5 GiB above."""
    assert faiss_temp_memory(4 * GIB) == 512 * MIB and faiss_temp_memory(4 * GIB + 1) == 1 * GIB
    assert faiss_temp_memory(8 * GIB) == 1 * GIB and faiss_temp_memory(8 * GIB + 1) == 1536 * MIB
    assert faiss_temp_memory(80 * GIB) == 1536 * MIB
    for total in (16 * GIB, 80 * GIB):  # FAISS's share and a margin come off, most is left
        assert 0.85 * total - faiss_temp_memory(total) <= device_budget(total) < total - faiss_temp_memory(total)
    assert 0 < device_budget(4 * GIB) < 4 * GIB - 512 * MIB


def test_gpu_copies_hold_their_codes_ids_and_quantizer():
    n, d = 10_000_000, 256
    flat = gpu_bytes("Flat", n, d)
    assert n * 4 * d < flat <= n * (4 * d + 8)          # float32 vectors (+ norms); ids stay on the host
    assert n * 2 * d < gpu_bytes("SQfp16", n, d) < flat / 1.9
    pq = gpu_bytes("IVF4096,PQ32", n, d)
    assert n * (32 + 8) + 4096 * 4 * d <= pq <= 1.05 * n * (32 + 8)  # codes + 8-byte ids on the device
    sq = gpu_bytes("IVF4096,SQ8", n, d)
    assert n * (d + 8) + 4096 * 4 * d <= sq <= 1.05 * n * (d + 8)
    # IVF-Flat lists are padded to blocks of 32 vectors: a list of one vector costs 32 vectors' room
    assert gpu_bytes("IVF1024,Flat", 1024, d) >= 1024 * 32 * 4 * d


def test_shards_beyond_a_device_budget_stay_on_the_cpu():
    d, total = 256, 16 * GIB
    vectors = int(2 * GIB / (4 * d + 4))                # 2 GiB a shard on the GPU
    placement = place("Flat", 10, d, [vectors] * 8, [total])
    on = placement.devices.count(0)
    assert placement.devices == (0,) * on + (None,) * (8 - on)  # filled in load order, the rest on the CPU
    assert on * 2 * GIB + faiss_temp_memory(total) <= total      # never past FAISS's temporary memory
    assert on >= 5                                               # and not held back without reason
    assert f"{8 - on} shards" in placement.reason and "stay on the CPU" in placement.reason
    assert place("Flat", 10, d, [vectors] * on, [total]).devices == (0,) * on  # what fits: all on the GPU
    huge = place("Flat", 10, d, [vectors * 10], [total])
    assert huge.devices == (None,) and "do not fit" in huge.reason


def test_two_devices_fill_by_budget():
    d = 256
    vectors = int(1 * GIB / (4 * d + 4))                # 1 GiB a shard
    same = place("Flat", 10, d, [vectors] * 5, [16 * GIB, 16 * GIB])
    assert same.devices == (0, 1, 0, 1, 0) and same.gpus_used == (0, 1)
    assert "one StandardGpuResources per GPU" in same.reason
    mixed = place("Flat", 10, d, [vectors] * 40, [24 * GIB, 8 * GIB])
    big, small = mixed.devices.count(0), mixed.devices.count(1)
    assert big > small > 0 and big * GIB + faiss_temp_memory(24 * GIB) <= 24 * GIB
    assert small * GIB + faiss_temp_memory(8 * GIB) <= 8 * GIB
    first_cpu = mixed.devices.index(None)
    assert set(mixed.devices[first_cpu:]) == {None}    # once both are full, every later shard stays on the CPU
    assert f"{40 - big - small} shards" in mixed.reason


# ---- what index parts and query actors request ------------------------------------------------------

def test_parts_request_a_gpu_only_for_gpu_searchable_indices_and_only_while_gpus_last():
    hnsw = gpu_requests(manifest("HNSW32"), 10, gpus=2, parts=2)
    assert hnsw.parts == (0, 0) and hnsw.actors == (0,) and "HNSW" in hnsw.reason
    flat = gpu_requests(manifest("Flat"), 10, gpus=1, parts=3, actors=2)
    assert flat.parts == (1, 0, 0) and flat.actors == (0, 0)  # the query actors over parts hold no vectors
    assert gpu_requests(manifest("Flat"), 10, gpus=4, parts=3).parts == (1, 1, 1)
    assert gpu_requests(manifest("Flat"), 10, gpus=2, actors=3).actors == (1, 1, 0)  # no parts: the actors
    assert gpu_requests(manifest("Flat"), 5000, gpus=2, parts=2).parts == (0, 0)     # k above 2048
    assert gpu_requests(manifest("IVF64,PQ16x4"), 10, gpus=2, parts=2).parts == (0, 0)
    assert gpu_requests(manifest("IVF64,Flat", search_params="nprobe=4096"), 10, gpus=1).actors == (0,)
    assert gpu_requests(manifest("Flat"), 10, gpus=0, parts=2).parts == (0, 0)


def test_an_engine_in_a_ray_worker_uses_only_the_gpus_ray_assigned_it():
    assert usable_gpus(True, [], 4) == 0          # reserved none: CPU only, whatever the node shows
    assert usable_gpus(True, ["3"], 4) == 1       # CUDA_VISIBLE_DEVICES=3: device 0 in the process
    assert usable_gpus(True, [0, 1], 2) == 2
    assert usable_gpus(True, ["0"], 0) == 0       # faiss-cpu sees no GPU even when Ray gave one
    assert usable_gpus(False, [], 2) == 2         # outside Ray: every GPU faiss sees


# ---- on a real index and a real Ray ----------------------------------------------------------------

@pytest.fixture(scope="module")
def small_index(tmp_path_factory, ray_session):
    from latentsweep.index.build import IndexJob, build
    from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output

    vectors, assignment = clustered(300, len(LABELS), sum(DIMS.values()), seed=7, spread=0.25)
    root = tmp_path_factory.mktemp("placement-refs")
    write_ingest_output(str(root), vectors, [LABELS[a] for a in assignment], FAMILIES, files=3)
    index = tmp_path_factory.mktemp("placement-index")
    build(IndexJob([str(root)], str(index), shards=3, quiet=True))
    return {"index": str(index), "vectors": vectors}


def test_loading_path_places_shards_by_the_manifest(small_index):
    """What ShardedIndex.load decides: nothing moves without a GPU; with devices, the manifest's shard
    sizes, k and type decide (the same function the loader calls)."""
    from latentsweep.index.manifest import load
    from latentsweep.index.shards import ShardedIndex, gpu_count, placement_of

    assert gpu_count() == 0  # faiss-cpu, outside a Ray worker (this is the driver)
    index = ShardedIndex.load(small_index["index"], k=10)
    assert index.placement.devices == (None,) * 3 and "no GPU" in index.placement.reason
    assert index.gpu_resources == {}
    scores, ids = index.search(index.prepare(small_index["vectors"][:2]), 5)
    assert ids.shape == (2, 5) and np.all(ids != -1)  # five real neighbours each (-1: missing)
    manifest = load(small_index["index"])
    two = placement_of(manifest, manifest.shards, 10, [16 * GIB, 16 * GIB])
    assert two.devices == (0, 1, 0) and not two.float16_lookup_tables
    assert placement_of(manifest, manifest.shards[:1], 10, [16 * GIB]).devices == (0,)  # an index part's shards
    deep = placement_of(manifest, manifest.shards, 5000, [16 * GIB])
    assert deep.devices == (None,) * 3 and "k=5000" in deep.reason
    tiny = placement_of(manifest, manifest.shards, 10, [GIB])  # a 1 GiB device: FAISS's temp memory and margin
    assert tiny.devices == (None,) * 3 and "stay on the CPU" in tiny.reason


def test_request_refuses_memory_no_node_has_before_any_part_starts(small_index, monkeypatch):
    import ray

    from latentsweep.query import actor

    largest = int(max(node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]))
    assert actor.request(64 * MIB, "index part 0") == 64 * MIB
    with pytest.raises(UsageError) as refused:
        actor.request(largest + GIB, "index part 0 (2 of 3 shards)")
    message = str(refused.value)
    assert "index part 0 (2 of 3 shards)" in message and "--index-parts" in message
    assert f"{largest / GIB:.2f} GiB" in message and f"{(largest + GIB) / GIB:.2f} GiB" in message
    started = []
    monkeypatch.setattr(actor, "query_actor", lambda *args, **kwargs: started.append(args))
    sizes = iter([64 * MIB, largest + GIB, 64 * MIB])  # only the second part is too large for any node
    monkeypatch.setattr(actor, "part_memory", lambda *args, **kwargs: next(sizes))
    with pytest.raises(UsageError, match="index part 1"):
        actor.start_parts(small_index["index"], 3)
    assert started == []


CHILD = textwrap.dedent("""
    import json, os, sys

    import ray

    from latentsweep.cluster import connect
    from latentsweep.index.placement import usable_gpus
    from latentsweep.index.shards import ray_gpu_assignment
    from latentsweep.query.actor import start_parts

    connect(num_cpus=2, num_gpus=1, quiet=True)  # a node that declares one GPU (it has none)
    try:
        parts = start_parts(sys.argv[1], 3, gpus=1, k=10)

        def seen(engine):
            return {"ids": [str(i) for i in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "usable": usable_gpus(*ray_gpu_assignment(), 2), "placement": engine.index.placement.reason}

        parts_seen = ray.get([part.__ray_call__.remote(seen) for part in parts], timeout=120)
        print(json.dumps({"parts": parts_seen, "driver": usable_gpus(*ray_gpu_assignment(), 2)}))
    finally:
        ray.shutdown()
""")


def test_three_parts_on_one_gpu_all_start_and_only_the_first_holds_it(small_index, tmp_path):
    """A local Ray whose node declares one GPU, CUDA_VISIBLE_DEVICES showing two: the first part gets the
    GPU (and Ray narrows its CUDA_VISIBLE_DEVICES to it), the other two start on the CPU instead of
    waiting for a GPU forever, and still see both devices, which only the assignment rules out."""
    import sys

    from processes import run_command

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = run_command([sys.executable, str(script), small_index["index"]], env={"CUDA_VISIBLE_DEVICES": "0,1"},
                         timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    parts = seen["parts"]
    assert [len(part["ids"]) for part in parts] == [1, 0, 0]
    assert parts[0]["visible"] == parts[0]["ids"][0] and [p["visible"] for p in parts[1:]] == ["0,1", "0,1"]
    assert [part["usable"] for part in parts] == [1, 0, 0]  # were faiss to see both devices
    assert seen["driver"] == 2                             # the driver is no Ray worker: what faiss sees
    assert all("no GPU" in part["placement"] for part in parts)  # faiss-cpu: the shards load on the CPU
