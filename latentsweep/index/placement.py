"""Where a query engine's shards live and how much memory it asks Ray for: pure functions of the
manifest, the search's k and the GPUs present, tested without a GPU.

GPU facts (FAISS's GPU code, as built by faiss-gpu without cuVS):

- FAISS has no GPU HNSW: ``index_cpu_to_gpu`` refuses it, so HNSW shards (and IVF over an HNSW coarse
  quantizer) stay on the CPU.
- GPU k-selection handles k <= 2048 (``GPU_MAX_SELECTION_K``), and IVF's nprobe has the same bound. A
  search with a larger k (``evaluate`` ranks up to 20,000 references) runs on the CPU: an engine
  built for such a k keeps its shards there (no chunking: FAISS cannot split one top-k over GPU calls).
- GPU IVF-PQ takes at most 8 bits per code and 1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40 or 48
  sub-quantizers with float32 lookup tables (56, 64, 96 need float16 ones, which are not used here);
  other PQ sizes, PQ without IVF and scalar quantizers without IVF stay on the CPU.
- One ``StandardGpuResources`` per device (it owns that device's temporary memory and streams; one per
  shard would multiply them): shards are dealt round-robin over the devices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from latentsweep.index import factory

GPU_MAX_K = 2048
GPU_PQ_SUBQUANTIZERS = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48)
GPU_IVF_CODES = ("Flat", "SQ8", "SQ4", "SQfp16")

# Memory of a query actor (``engine_memory``), per term:
QUERY_PROCESS_BYTES = 256 * 2**20   # the Ray worker with numpy, pyarrow, faiss and Ray Data imported (~180 MB
#                                     measured) and its core-worker threads
QUERY_BATCH_BYTES = 128 * 2**20     # a query file in flight, its normalised copy and the search results
METADATA_REWRITE_BYTES = 128 * 2**20  # id-sorted rewrites of shard metadata, two at a time (lookup.REWRITE_ROWS rows)
QUERY_FIXED_BYTES = QUERY_PROCESS_BYTES + QUERY_BATCH_BYTES + METADATA_REWRITE_BYTES
ID_BYTES = 8                        # the engine's sorted int64 ids (FAISS keeps its own: in factory.index_bytes)
SORT_BYTES = 16                     # per reference while loading: the unsorted ids and their order (int64 each)


@dataclass(frozen=True)
class Placement:
    devices: tuple[int | None, ...]   # per shard, in load order: the GPU it lives on, None for the CPU
    reason: str

    @property
    def gpus_used(self) -> tuple[int, ...]:
        return tuple(sorted({device for device in self.devices if device is not None}))


def nprobe_of(search_params: str) -> int:
    found = re.search(r"nprobe=(\d+)", search_params or "")
    return int(found.group(1)) if found else 0


def gpu_capable(spec: str) -> tuple[bool, str]:
    """Whether FAISS can move an index of ``spec`` to a GPU, and why (not)."""
    if "HNSW" in spec:
        return False, f"{spec}: FAISS has no GPU HNSW, the shards stay on the CPU"
    if spec == "Flat":
        return True, "Flat: GpuIndexFlat"
    if not spec.startswith("IVF"):
        return False, f"{spec}: no GPU version of this type in FAISS, the shards stay on the CPU"
    codes = spec.split(",", 1)[1] if "," in spec else ""
    if codes in GPU_IVF_CODES:
        return True, f"{spec}: GPU IVF ({codes})"
    found = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", codes)
    if found:
        m, bits = int(found.group(1)), int(found.group(2) or 8)
        if bits <= 8 and m in GPU_PQ_SUBQUANTIZERS:
            return True, f"{spec}: GpuIndexIVFPQ ({m} sub-quantizers of {bits} bits)"
        return False, (f"{spec}: GPU IVF-PQ takes at most 8 bits and {', '.join(map(str, GPU_PQ_SUBQUANTIZERS))} "
                       f"sub-quantizers; the shards stay on the CPU")
    return False, f"{spec}: codes {codes!r} have no GPU version in FAISS, the shards stay on the CPU"


def place(spec: str, k: int, gpus: int, shards: int, search_params: str = "") -> Placement:
    """Where each of ``shards`` shards of an index of ``spec`` lives for searches of up to ``k``
    neighbours with ``gpus`` GPUs visible: round-robin over the GPUs when FAISS can search it there,
    else every shard on the CPU, with the reason."""
    cpu = (None,) * shards
    if gpus <= 0:
        return Placement(cpu, "no GPU: every shard on the CPU")
    capable, why = gpu_capable(spec)
    if not capable:
        return Placement(cpu, why)
    if k > GPU_MAX_K:
        return Placement(cpu, f"k={k} is above FAISS-GPU's limit of {GPU_MAX_K}: searched on the CPU")
    nprobe = nprobe_of(search_params)
    if nprobe > GPU_MAX_K:
        return Placement(cpu, f"nprobe={nprobe} is above FAISS-GPU's limit of {GPU_MAX_K}: searched on the CPU")
    used = min(gpus, shards)
    return Placement(tuple(i % gpus for i in range(shards)),
                     f"{why}; {shards} shards round-robin over {used} GPU{'s' if used != 1 else ''}, "
                     f"one StandardGpuResources per GPU")


def code_bytes(values: int, signed: bool = True) -> int:
    """Bytes of the smallest integer type holding ``values`` codes (signed: plus -1 for missing)."""
    for size in (1, 2, 4):
        if values <= (2 ** (8 * size - 1) - 1 if signed else 2 ** (8 * size)):
            return size
    return 8


def reference_bytes(labels: int, shards: int) -> int:
    """Bytes an engine holds per reference beside the index: its sorted int64 id, the label code and
    (with more than one shard) the code of the shard that holds it. No URI: fetched per neighbour."""
    return ID_BYTES + code_bytes(labels) + (code_bytes(shards, signed=False) if shards > 1 else 0)


def engine_memory(spec: str, dimension: int, vectors: int, labels: int, shards: int,
                  holds_vectors: bool = True, holds_metadata: bool = True, on_gpu: bool = False) -> int:
    """Bytes a query actor holds at its peak, requested from Ray as ``memory=``:

    fixed (process, a query file in flight, metadata rewrites)
    + the index (``factory.index_bytes``: Flat n*(4d+8), HNSW, IVF-PQ ...; on a GPU only FAISS's
      host-side id map, 8 bytes a vector)
    + per reference: its id (8), label code (1-4), shard code (0-4) and, while loading, the unsorted ids
      and their order (16).

    ``holds_vectors=False``: a front that searches through part actors; ``holds_metadata=False``: an
    index part (searches, never looks up labels or URIs)."""
    index = 0
    if holds_vectors:
        index = vectors * factory.ID_BYTES if on_gpu else factory.index_bytes(spec, vectors, dimension)
    per_reference = reference_bytes(labels, shards) + SORT_BYTES if holds_metadata else 0
    return QUERY_FIXED_BYTES + index + vectors * per_reference
