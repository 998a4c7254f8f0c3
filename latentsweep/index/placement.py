"""Where a query engine's shards live and how much memory it asks Ray for: pure functions of the
manifest, the search's k and the GPUs present, tested without a GPU.

The GPU rules are FAISS 1.15's, built without cuVS (faiss-gpu), read from its sources (paths under
``faiss/gpu/``):

- What moves at all (``GpuCloner.cpp``, ``ToGpuCloner::clone_Index``): ``IndexFlat``
  (GpuIndexFlat), ``IndexScalarQuantizer`` of type fp16 (a float16 GpuIndexFlat), ``IndexIVFFlat``,
  ``IndexIVFScalarQuantizer`` and ``IndexIVFPQ``; an ``IndexIDMap`` around one of them stays on the host
  with its ids (8 bytes a vector) and moves its inner index. Anything else raises "This index type is
  not implemented on GPU": HNSW (FAISS has no GPU HNSW without cuVS's CAGRA), PQ without IVF, other
  scalar quantizers without IVF, fast-scan and refine types. An IVF's coarse quantizer must move too
  (``GpuIndexIVF.cu``, ``copyFrom``; ``allowCpuCoarseQuantizer`` is off), so IVF over an HNSW quantizer
  stays on the CPU.
- k and nprobe (``utils/DeviceDefs.cuh`` ``GPU_MAX_SELECTION_K``, checked by
  ``impl/IndexUtils.cu``): both at most 2048. An engine built for a larger k (``evaluate`` ranks up to
  20,000 references) keeps its shards on the CPU: FAISS cannot split one top-k over GPU calls.
- IVF-PQ (``GpuIndexIVFPQ.cu``, ``copyFrom`` and ``verifyPQSettings_``): exactly 8 bits per code in
  the layout the cloner builds (``interleavedLayout`` follows ``use_cuvs``, off here; only the
  interleaved layout takes 4, 5 or 6 bits), residual encoding (the factory's default) and no
  polysemous codes; the sub-quantizer count must be one of ``impl/IVFPQ.cu``
  ``isSupportedPQCodeLength``: 1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64 or 96. Its
  lookup table (4 bytes x sub-quantizers x 256) must fit a block's shared memory
  (``sharedMemPerBlock``: 48 KiB on NVIDIA GPUs), so 56, 64 and 96 sub-quantizers need float16
  tables. :class:`Placement` then asks for them (``GpuClonerOptions.useFloat16``, which for IVF-PQ
  sets exactly ``useFloat16LookupTables`` and no storage type) rather than keeping them on the CPU:
  :func:`factory.choose` picks PQ64 first for large reference sets, and table entries rounded to
  half precision (11-bit mantissa) move distances far less than PQ's own quantization does. Every
  other PQ size keeps float32 tables, the CPU's arithmetic.
- IVF scalar quantizers (``impl/GpuScalarQuantizer.cuh`` ``isSQSupported``): SQ8, SQ8_direct, SQ6,
  SQ4 and SQfp16; SQ8 and SQ4 keep two floats per dimension in a block's shared memory, so fewer
  than 6,144 dimensions (``GpuIndexIVFScalarQuantizer.cu``, ``verifySQSettings_``). Other types
  stay on the CPU.
- Memory on a device (:func:`gpu_bytes`): a GpuIndexFlat holds its float32 vectors and their norms
  (``impl/FlatIndex.cu``, 4 bytes more a vector); an IVF index holds its coarse quantizer as a
  GpuIndexFlat, each list's codes and 8-byte ids (``GpuClonerOptions.indicesOptions`` is
  INDICES_64_BIT) in allocations rounded to 256 bytes (``StandardGpuResources.cpp``), IVF-Flat and
  IVF-SQ lists padded to blocks of 32 vectors (``impl/IVFFlat.cu``, the interleaved layout, their
  default), IVF-PQ its codebook twice (``impl/IVFPQ.cu``, ``setPQCentroids_``).
- One ``StandardGpuResources`` per device: it owns the device's streams, cuBLAS handle and temporary
  memory (one per shard would multiply them). Its temporary memory is FAISS's default for the
  device's total memory (``StandardGpuResources.cpp``, ``getDefaultTempMemForGPU``): 512 MiB up to
  4 GiB, 1 GiB up to 8 GiB, 1.5 GiB above. A device's budget for shards is its total memory less
  that, less :data:`GPU_CONTEXT_BYTES` and :data:`GPU_HEADROOM` of it; shards go, in load order, to
  the device with the most budget left while they fit, and the rest stay on the CPU (the reason
  says so, for the log).

In a Ray worker the GPUs an engine may use are the ones Ray assigned it (:func:`usable_gpus`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from latentsweep.index import factory

GPU_MAX_K = 2048
GPU_PQ_SUBQUANTIZERS = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48)  # float32 lookup tables
GPU_PQ_FLOAT16_SUBQUANTIZERS = (56, 64, 96)                             # float16 lookup tables only
GPU_SQ_BITS = {"SQ8": 8, "SQ8_direct": 8, "SQ6": 6, "SQ4": 4, "SQfp16": 16}  # IVF scalar quantizers, bits a dimension
GPU_SQ_SHARED_DIMENSIONS = 6144     # SQ8 and SQ4: 48 KiB of shared memory / (2 floats a dimension)
GPU_SQ_SHARED_TYPES = ("SQ8", "SQ4")

GIB = 2**30
GPU_ID_BYTES = 8                    # INDICES_64_BIT: an IVF list's ids on the device
GPU_ALLOCATION_BYTES = 256          # StandardGpuResources rounds every allocation up to this
GPU_WARP = 32                       # IVF-Flat and IVF-SQ lists are padded to blocks of this many vectors
GPU_LIST_POINTER_BYTES = 8 + 8 + 4  # per list, on the device: its codes' and ids' addresses and its length
GPU_CONTEXT_BYTES = 1 * GIB         # the CUDA context with FAISS's kernels and cuBLAS's workspace (~0.5 GiB
#                                     on current GPUs), with room to spare
GPU_HEADROOM = 0.05                 # of a device's memory: allocator rounding beyond gpu_bytes and search
#                                     buffers larger than the temporary memory (a big query batch's results)

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
    float16_lookup_tables: bool = False  # clone with GpuClonerOptions.useFloat16 (IVF-PQ of 56, 64, 96 codes)

    @property
    def gpus_used(self) -> tuple[int, ...]:
        return tuple(sorted({device for device in self.devices if device is not None}))


def nprobe_of(search_params: str) -> int:
    found = re.search(r"nprobe=(\d+)", search_params or "")
    return int(found.group(1)) if found else 0


def _pq(codes: str) -> tuple[int, int] | None:
    """(sub-quantizers, bits) of a ``PQ<m>`` or ``PQ<m>x<bits>`` code spec, else None."""
    found = re.fullmatch(r"PQ(\d+)(?:x(\d+))?", codes)
    return (int(found.group(1)), int(found.group(2) or 8)) if found else None


def gpu_capable(spec: str, dimension: int) -> tuple[bool, str]:
    """Whether FAISS can move an index of ``spec`` and ``dimension`` to a GPU, and why (not)."""
    cpu = "the shards stay on the CPU"
    if "HNSW" in spec:
        return False, f"{spec}: FAISS has no GPU HNSW, {cpu}"
    if spec == "Flat":
        return True, "Flat: GpuIndexFlat (float32)"
    if spec == "SQfp16":
        return True, "SQfp16: a float16 GpuIndexFlat"
    coarse, _, codes = spec.partition(",")
    pq = _pq(codes or coarse)
    if pq and pq[1] != 8:
        return False, f"{spec}: GPU IVF-PQ takes 8 bits per code, not {pq[1]}; {cpu}"
    if not re.fullmatch(r"IVF\d+", coarse):
        what = "PQ without IVF" if pq else "this index type"
        return False, f"{spec}: FAISS has no GPU version of {what}, {cpu}"
    if codes == "Flat":
        return True, f"{spec}: GpuIndexIVFFlat"
    if codes in GPU_SQ_BITS:
        if codes in GPU_SQ_SHARED_TYPES and dimension >= GPU_SQ_SHARED_DIMENSIONS:
            return False, (f"{spec}: GPU IVF {codes} takes fewer than {GPU_SQ_SHARED_DIMENSIONS} dimensions "
                           f"(shared memory), not {dimension}; {cpu}")
        return True, f"{spec}: GpuIndexIVFScalarQuantizer ({codes})"
    if pq:
        m = pq[0]
        if m in GPU_PQ_SUBQUANTIZERS:
            return True, f"{spec}: GpuIndexIVFPQ ({m} sub-quantizers of 8 bits)"
        if m in GPU_PQ_FLOAT16_SUBQUANTIZERS:
            return True, f"{spec}: GpuIndexIVFPQ ({m} sub-quantizers of 8 bits, float16 lookup tables)"
        counts = ", ".join(map(str, GPU_PQ_SUBQUANTIZERS + GPU_PQ_FLOAT16_SUBQUANTIZERS))
        return False, f"{spec}: GPU IVF-PQ takes {counts} sub-quantizers, not {m}; {cpu}"
    return False, f"{spec}: FAISS has no GPU version of IVF codes {codes!r}, {cpu}"


def float16_lookup_tables(spec: str) -> bool:
    """Whether a GPU copy of ``spec`` needs float16 lookup tables (IVF-PQ of 56, 64 or 96 sub-quantizers)."""
    pq = _pq(spec.partition(",")[2])
    return bool(pq) and pq[0] in GPU_PQ_FLOAT16_SUBQUANTIZERS


def gpu_searchable(spec: str, k: int, dimension: int, search_params: str = "") -> tuple[bool, str]:
    """Whether searches of ``k`` neighbours in an index of ``spec`` can run on a GPU, and why (not)."""
    capable, why = gpu_capable(spec, dimension)
    if not capable:
        return False, why
    if k > GPU_MAX_K:
        return False, f"k={k} is above FAISS-GPU's limit of {GPU_MAX_K}: searched on the CPU"
    nprobe = nprobe_of(search_params)
    if nprobe > GPU_MAX_K:
        return False, f"nprobe={nprobe} is above FAISS-GPU's limit of {GPU_MAX_K}: searched on the CPU"
    return True, why


def gpu_bytes(spec: str, vectors: int, dimension: int) -> int:
    """Device memory of a GPU copy of a shard of ``spec`` holding ``vectors`` vectors (a spec that
    :func:`gpu_capable` accepts; the module docstring says what each type holds)."""
    d = dimension
    if spec in ("Flat", "SQfp16"):
        return vectors * ((4 if spec == "Flat" else 2) * d + 4)
    nlist = factory.nlist_of(spec)
    codes = spec.partition(",")[2]
    pq = _pq(codes)
    if pq:
        per_vector, padding, fixed = pq[0], 0, 2 * 256 * d * 4
    else:
        bits = 32 if codes == "Flat" else GPU_SQ_BITS[codes]
        per_vector = math.ceil(bits * d / 8)
        padding, fixed = (GPU_WARP - 1) * per_vector, 2 * d * 4  # SQ: a minimum and a range per dimension
    per_list = padding + 2 * GPU_ALLOCATION_BYTES + GPU_LIST_POINTER_BYTES
    quantizer = nlist * (4 * d + 4)
    return vectors * (per_vector + GPU_ID_BYTES) + nlist * per_list + quantizer + fixed


def faiss_temp_memory(total: int) -> int:
    """Temporary memory a StandardGpuResources reserves on a device of ``total`` bytes, by default
    (``getDefaultTempMemForGPU``)."""
    if total <= 4 * GIB:
        return 512 * 2**20
    if total <= 8 * GIB:
        return 1 * GIB
    return 1536 * 2**20


def device_budget(total: int) -> int:
    """Bytes of a device of ``total`` bytes that shards may fill."""
    return max(0, total - faiss_temp_memory(total) - GPU_CONTEXT_BYTES - int(total * GPU_HEADROOM))


def place(spec: str, k: int, dimension: int, shard_vectors: Sequence[int], device_memory: Sequence[int],
          search_params: str = "") -> Placement:
    """Where each shard (``shard_vectors``: the vectors of each, in load order) of an index of ``spec``
    lives for searches of up to ``k`` neighbours, with GPUs of ``device_memory`` total bytes each
    (one entry per GPU this engine may use, numbered from 0): each shard goes to the GPU with the
    most of its :func:`device_budget` left when it fits there, else to the CPU; every shard on the
    CPU when FAISS cannot search the type, k or nprobe on a GPU. The reason says which and why."""
    shards = len(shard_vectors)
    cpu = (None,) * shards
    if not device_memory:
        return Placement(cpu, "no GPU: every shard on the CPU")
    searchable, why = gpu_searchable(spec, k, dimension, search_params)
    if not searchable:
        return Placement(cpu, why)
    budgets = [device_budget(total) for total in device_memory]
    left, devices, spilled = list(budgets), [], 0
    for vectors in shard_vectors:
        need = gpu_bytes(spec, vectors, dimension)
        device = max(range(len(left)), key=lambda i: (left[i], -i))
        if need <= left[device]:
            left[device] -= need
            devices.append(device)
        else:
            devices.append(None)
            spilled += need
    on_gpu, used = shards - devices.count(None), len(set(devices) - {None})
    budget = ", ".join(f"{b / GIB:.2f}" for b in budgets)
    reason = (f"{why}; {on_gpu} of {shards} shard{'s' if shards != 1 else ''} on {used} GPU{'s' if used != 1 else ''}"
              + (", one StandardGpuResources per GPU" if used else "")
              + f" (GiB for shards per GPU: {budget}; the rest of each is FAISS's temporary memory, the CUDA "
              f"context and {GPU_HEADROOM:.0%} headroom)")
    if spilled:
        reason += (f"; {shards - on_gpu} shard{'s' if shards - on_gpu != 1 else ''} ({spilled / GIB:.2f} GiB on a GPU) "
                   f"do not fit the GPUs' memory and stay on the CPU")
    return Placement(tuple(devices), reason, float16_lookup_tables(spec))


def usable_gpus(in_ray_worker: bool, assigned: Sequence, faiss_gpus: int) -> int:
    """GPUs an engine may put shards on. In a Ray worker: the ones Ray assigned it (``ray.get_gpu_ids()``),
    none when it reserved none: the node's CUDA_VISIBLE_DEVICES then still shows every GPU (Ray leaves the
    variable alone for a worker without GPUs: ``ray/_private/utils.py``, ``set_visible_accelerator_ids``)
    and other actors hold them. For a worker with GPUs Ray sets CUDA_VISIBLE_DEVICES to exactly its
    assigned ids before its code runs (Ray's "Accelerator Support" guide), so FAISS sees them as devices
    0..n-1. Outside Ray (local evaluation, tests): every GPU FAISS sees."""
    if in_ray_worker:
        return min(len(assigned), faiss_gpus)
    return faiss_gpus


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
                  holds_vectors: bool = True, holds_metadata: bool = True, on_gpu: bool = False,
                  copies: int = 0) -> int:
    """Bytes a query actor holds at its peak, requested from Ray as ``memory=``:

    fixed (process, a query file in flight, metadata rewrites)
    + the index (``factory.index_bytes``: Flat n*(4d+8), HNSW, IVF-PQ ...; on a GPU only FAISS's
      host-side id map, 8 bytes a vector)
    + per reference: its id (8), label code (1-4), shard code (0-4) and, while loading, the unsorted ids
      and their order (16)
    + per processed copy (``ingest --augment``; ``copies`` of the ``vectors``): its id and its source's
      (16) and, while loading, their order and the sorted copy (16).

    ``holds_vectors=False``: a front that searches through part actors; ``holds_metadata=False``: an
    index part (searches, never looks up labels or URIs)."""
    index = 0
    if holds_vectors:
        index = vectors * factory.ID_BYTES if on_gpu else factory.index_bytes(spec, vectors, dimension)
    per_reference = reference_bytes(labels, shards) + SORT_BYTES if holds_metadata else 0
    per_copy = 2 * SORT_BYTES if holds_metadata else 0
    return QUERY_FIXED_BYTES + index + vectors * per_reference + copies * per_copy
