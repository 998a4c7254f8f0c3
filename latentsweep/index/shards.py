"""Load a sharded index (checksums verified), search every shard and merge the results.

Merging keeps each shard's global int64 ids, so search over the shards equals one index over all
vectors (exact for Flat). Shards move to the GPUs this engine may use (:func:`gpu_count`) when
:func:`latentsweep.index.placement.place` says FAISS can search them there and they fit the devices'
memory (:func:`device_memory`); one StandardGpuResources per device. Loading runs in threads,
one shard each: files come verified (and memory-mapped) from :mod:`latentsweep.index.cache`, labels
and URIs are served by :mod:`latentsweep.index.lookup`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from latentsweep.errors import JobFailed, UsageError
from latentsweep.index import factory
from latentsweep.index.cache import cache_dir, clean_cache, read_flags, release_mapped_pages, verified_file
from latentsweep.index.lookup import MISSING, References, _ReferenceBuilder, lookup_file
from latentsweep.index.manifest import Manifest, ShardEntry, locate
from latentsweep.index.placement import GPU_MAX_K, Placement, place, usable_gpus
from latentsweep.index.scaler import Scaler

LOAD_THREADS = 8                        # shards downloaded, verified and mapped at once


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-way merge of per-shard (scores, ids), highest score first; missing hits are id -1
    (FAISS's marker; ids are signed, so only -1 itself means missing)."""
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(ids == MISSING, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores, top_ids = _padded(np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1), k)
    return top_scores.astype(np.float32), top_ids


def _padded(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) with missing hits (-inf, -1) appended up to k columns."""
    pad = k - ids.shape[1]
    if pad <= 0:
        return scores, ids
    return (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, pad)), constant_values=MISSING))


def collapse(scores: np.ndarray, ids: np.ndarray, sources: np.ndarray, exclude: np.ndarray | None,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of merged hits (best first) with one hit per source, its best: a reference and its processed
    copies (ingest/augment.py) are one neighbour. ``sources[i, j]``: the source of hit j of row i (its
    own id for an original); ``exclude[i]``: a source row i must not see (leave-one-out drops a query
    with its copies), or None. Missing hits stay missing, at the end."""
    n, m = ids.shape
    keep = ids != MISSING
    if exclude is not None:
        keep &= sources != np.asarray(exclude, np.int64)[:, None]
    keyed = np.where(keep, sources, np.iinfo(np.int64).max)
    order = np.argsort(keyed, axis=1, kind="stable")  # stable: a source's best hit comes first in its group
    grouped = np.take_along_axis(keyed, order, axis=1)
    repeat = np.zeros((n, m), bool)
    repeat[:, 1:] = grouped[:, 1:] == grouped[:, :-1]
    later = np.empty_like(repeat)
    np.put_along_axis(later, order, repeat, axis=1)
    keep &= ~later
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, first, axis=1)
    return _padded(np.where(kept, np.take_along_axis(scores, first, axis=1), -np.inf),
                   np.where(kept, np.take_along_axis(ids, first, axis=1), MISSING), k)


def ray_gpu_assignment() -> tuple[bool, list]:
    """(whether this process is a Ray worker, the GPU ids Ray assigned it: ``ray.get_gpu_ids()``)."""
    import sys

    ray = sys.modules.get("ray")  # a Ray worker has imported Ray before it runs any of our code
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return False, []
    return True, list(ray.get_gpu_ids())


def gpu_count() -> int:
    """GPUs this process may put shards on (:func:`latentsweep.index.placement.usable_gpus`): in a Ray
    worker the ones Ray assigned it, elsewhere every GPU the installed faiss sees (none with faiss-cpu)."""
    import faiss

    in_worker, assigned = ray_gpu_assignment()
    return usable_gpus(in_worker, assigned, faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)


def device_memory(gpus: int) -> list[int]:
    """Total memory of each of this process's first ``gpus`` CUDA devices, in FAISS's numbering (both
    follow CUDA_VISIBLE_DEVICES), read through torch; empty when torch cannot see them (a CPU build)."""
    if gpus <= 0:
        return []
    import torch

    if torch.cuda.device_count() < gpus:
        return []
    return [torch.cuda.get_device_properties(device).total_memory for device in range(gpus)]


def placement_of(manifest: Manifest, entries: list[ShardEntry], k: int | None, memory: list[int]) -> Placement:
    """Where ``entries`` of ``manifest`` live for searches of up to ``k`` neighbours with GPUs of
    ``memory`` bytes each (:func:`device_memory`)."""
    return place(manifest.index_spec, k or 1, manifest.dimension, [entry.count for entry in entries], memory,
                 manifest.search_params)


class ShardedIndex:
    """A loaded index: the manifest, the scaler, one FAISS index per shard (on the device its placement
    says) and the references (ids, label codes, URI lookups)."""

    def __init__(self, root: str, manifest: Manifest, indices: list, references: References | None,
                 placement=None, gpu_resources: dict | None = None):
        self.root, self.manifest, self.indices, self.references = root, manifest, indices, references
        self.placement, self.gpu_resources = placement, gpu_resources or {}
        self.scaler = Scaler.from_dict(manifest.scaler)

    @property
    def metadata(self):
        """id, label and uri of every reference, read from disk now (never held)."""
        return self.references.table() if self.references else None

    @classmethod
    def load(cls, root: str, shard_ids: list[int] | None = None, use_gpu: bool = True,
             load_vectors: bool = True, load_metadata: bool = True, k: int | None = None,
             threads: int = LOAD_THREADS) -> "ShardedIndex":
        """``shard_ids``: only these shards (an index part); ``load_vectors=False``: manifest, scaler and
        references only, for a front that searches through part actors; ``load_metadata=False``: no
        references (an index part only searches); ``k``: the largest k this index will be searched
        with (above FAISS-GPU's 2048 its shards stay on the CPU). Shards load in ``threads`` threads."""
        import faiss

        root, manifest = locate(root)  # INDEX (its current version) or INDEX/v-NNNNNN (pinned)
        entries = [s for s in manifest.shards if shard_ids is None or s.shard_id in shard_ids]
        cache = cache_dir()
        clean_cache(cache)
        gpus = gpu_count() if use_gpu and load_vectors else 0
        memory = device_memory(gpus)
        # a search for k sources fetches k hits per source and its copies (QueryEngine.search_ids)
        placement = placement_of(manifest, entries, k and k * (1 + manifest.copies_per_source), memory)
        if gpus and not memory:
            placement = Placement(placement.devices, f"faiss sees {gpus} GPU{'s' if gpus != 1 else ''} but torch "
                                  f"cannot read their memory (a CPU build of torch): every shard on the CPU")
        builder = _ReferenceBuilder([entry.count for entry in entries], sorted(manifest.labels)) \
            if load_metadata else None

        def load_shard(position: int, entry: ShardEntry):
            if builder is not None:
                builder.fill(position, entry, lookup_file(root, entry, cache))
                if entry.copies_file:
                    builder.fill_copies(position, verified_file(root, entry.copies_file, entry.copies_sha256, cache,
                                                                ".parquet"))
            if not load_vectors:
                return None
            path = verified_file(root, entry.index_file, entry.index_sha256, cache, ".faiss")
            index = faiss.read_index(path, read_flags())
            release_mapped_pages(path)
            if index.d != manifest.dimension:
                raise JobFailed(f"{entry.index_file} has dimension {index.d}, the manifest says {manifest.dimension}")
            factory.apply_search_params(index, manifest.search_params)
            return index

        with ThreadPoolExecutor(max(1, min(threads, len(entries)))) as pool:
            indices = [index for index in pool.map(load_shard, range(len(entries)), entries) if index is not None]
        resources = {device: faiss.StandardGpuResources() for device in placement.gpus_used}
        options = None
        if resources:
            options = faiss.GpuClonerOptions()
            options.useFloat16 = placement.float16_lookup_tables  # IVF-PQ: float16 lookup tables, nothing else
        for position, device in enumerate(placement.devices if indices else ()):
            if device is not None:  # one shard at a time: its mapped pages are copied to the GPU, then unmapped
                indices[position] = faiss.index_cpu_to_gpu(resources[device], device, indices[position], options)
        references = builder.finish() if builder is not None else None
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # Arrow keeps freed buffers of the metadata reads otherwise
        return cls(root, manifest, indices, references, placement, resources)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Raw pooled vectors (columns concatenated as in the manifest) -> z-scored, L2-normalised."""
        if vectors.shape[1] != self.manifest.dimension:
            raise UsageError(f"query vectors have {vectors.shape[1]} dims, the index has {self.manifest.dimension}")
        return self.scaler.transform(vectors)

    def search(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard: (scores float32 (n, k), ids int64 (n, k))."""
        if k > GPU_MAX_K and self.placement is not None and self.placement.gpus_used:
            raise UsageError(f"k={k} is above FAISS-GPU's limit of {GPU_MAX_K} and this index was loaded onto "
                             f"GPUs: load it with k={k} (its shards then stay on the CPU)")
        results = [index.search(prepared, min(k, max(index.ntotal, 1))) for index in self.indices]
        return merge(results, k)
