"""The query engine: loads an index once, answers batches of raw vectors with neighbours and labels.

``QueryEngine`` is a plain class so it runs in a Ray actor (``QueryActor``), inside Ray Data's actor
pool (the sweep) or directly (evaluation, tests) with the same code. Per reference it holds the index's
vectors (memory-mapped where the type allows), a sorted int64 id, a label code and a shard code
(``lookup.References``): no URI, no Python object. URIs are read for the neighbours a batch returns.
The memory it needs is :func:`latentsweep.index.placement.engine_memory` of the manifest; the sweep
and the index parts request it from Ray (``memory=``).
"""

from __future__ import annotations

import numpy as np

from latentsweep.index import placement
from latentsweep.index.shards import ShardedIndex, merge

PART_CPUS = 0.1  # CPUs an index part reserves: it searches only while a query actor waits on it


class QueryEngine:
    """``shard_ids``: serve only these shards (an index part). ``parts``: serve the whole index by
    fanning each search out to part actors and merging their results (for indices larger than one
    worker's memory); this engine then holds only the scaler and the references. ``metadata=False``:
    no references (an index part: it searches, the front looks labels up). ``k``: the largest k it
    will be asked for (GPU placement: above 2048 the shards stay on the CPU)."""

    def __init__(self, index_uri: str, use_gpu: bool = True, shard_ids: list[int] | None = None,
                 parts: list | None = None, metadata: bool = True, k: int | None = None):
        self.parts = parts
        self.index = ShardedIndex.load(index_uri, shard_ids=shard_ids, use_gpu=use_gpu, load_vectors=not parts,
                                       load_metadata=metadata, k=k)
        self.references = self.index.references
        self.families = dict(self.index.manifest.families)

    @property
    def manifest(self):
        return self.index.manifest

    def search(self, vectors: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
        """Raw pooled vectors -> (scores, ids, labels) of the top-k; ``exclude_ids[i]`` (a query's own
        id, for leave-one-out) is dropped from row i once, and only that id."""
        scores, ids = self.search_ids(vectors, k, exclude_ids)
        return scores, ids, self.references.labels(ids)

    def search_ids(self, vectors: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
        """:meth:`search` without the labels: (scores, ids) of the top-k."""
        prepared = self.index.prepare(np.asarray(vectors, dtype=np.float32))
        extra = 1 if exclude_ids is not None else 0
        scores, ids = self.search_prepared(prepared, k + extra)
        if exclude_ids is not None:
            scores, ids = drop_self(scores, ids, exclude_ids, k)
        return scores, ids

    def search_prepared(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of already normalised vectors over this engine's shards, or over its parts."""
        if not self.parts:
            return self.index.search(prepared, k)
        import ray

        return merge(ray.get([part.search_prepared.remote(prepared, k) for part in self.parts]), k)

    def uris(self, ids: np.ndarray) -> np.ndarray:
        """The neighbours' URIs (None for missing ones), read from the id-sorted metadata now."""
        return self.references.uris(ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each id is a reference of this index."""
        return self.references.contains(ids)


def drop_self(scores: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int):
    """Remove each row's own id (first occurrence) and keep k columns."""
    keep = np.ones_like(ids, dtype=bool)
    is_self = ids == own[:, None]
    first = np.argmax(is_self, axis=1)
    rows = np.flatnonzero(is_self.any(axis=1))
    keep[rows, first[rows]] = False
    keep[~is_self.any(axis=1), -1] = False  # no self-match: drop the extra last column instead
    return scores[keep].reshape(len(ids), -1)[:, :k], ids[keep].reshape(len(ids), -1)[:, :k]


def set_threads(threads: int) -> None:
    """Search with ``threads`` cores in this process. Ray sets ``OMP_NUM_THREADS`` to an actor's CPU
    reservation (1 when fractional) and the OpenBLAS that FAISS loads sizes its pool from it once, at
    load time; ``openblas_set_num_threads`` (of each OpenBLAS this process has mapped) and FAISS's
    OpenMP setting change both at any time. A ``runtime_env`` setting the variables would do it too,
    at the price of a fresh worker process per actor (about 1.2 s more to start)."""
    import ctypes

    import faiss

    faiss.omp_set_num_threads(threads)
    for path in _mapped_libraries("openblas"):
        setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads", None)
        if setter is not None:  # numpy's own OpenBLAS names its functions otherwise and is left alone
            setter(threads)


def _mapped_libraries(name: str) -> set[str]:
    """Paths of the shared libraries mapped into this process whose file name contains ``name``
    (Linux; none elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return set()
    return {path for path in paths if name in path.rsplit("/", 1)[-1]}


def query_actor(num_gpus: float = 0, num_cpus: float = 1, memory: int | None = None):
    """A Ray actor class serving ``QueryEngine``: ``actor.search.remote(vectors, k)``."""
    import ray

    options = {"memory": memory} if memory else {}
    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, **options)(QueryEngine)


def _largest_node_memory() -> int:
    import ray

    return int(max((node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")), default=0))


def request(wanted: int, what: str, log=None) -> int:
    """``wanted`` bytes, or the largest node's memory when no node offers that much (Ray would never
    place the actor), saying so."""
    largest = _largest_node_memory()
    if largest and wanted > largest:
        if log:
            log(f"{what} needs about {wanted / 2**30:.2f} GiB by placement.engine_memory; the largest Ray node "
                f"offers {largest / 2**30:.2f} GiB: requesting that (more --index-parts make parts smaller)")
        return largest
    return wanted


def part_memory(manifest, shard_ids: list[int], on_gpu: bool = False) -> int:
    """Bytes of an index part holding ``shard_ids`` (vectors only, no references)."""
    vectors = sum(entry.count for entry in manifest.shards if entry.shard_id in shard_ids)
    return placement.engine_memory(manifest.index_spec, manifest.dimension, vectors, len(manifest.labels),
                                   len(shard_ids), holds_metadata=False, on_gpu=on_gpu)


def front_memory(manifest, holds_vectors: bool = True, on_gpu: bool = False) -> int:
    """Bytes of an engine serving the whole index (``holds_vectors=False``: a front over parts)."""
    return placement.engine_memory(manifest.index_spec, manifest.dimension, manifest.vectors, len(manifest.labels),
                                   len(manifest.shards), holds_vectors=holds_vectors, on_gpu=on_gpu)


def pool_plan(manifest, size: int, holds_vectors: bool, gpus: int, k: int, parts: int = 1,
              log=None) -> tuple[int, int]:
    """(memory per sweep actor, pool size): the actor's :func:`front_memory` (capped to the largest node)
    and at most as many actors as the cluster's memory holds beside the index parts (at least one)."""
    import ray

    on_gpu = bool(gpus) and bool(placement.place(manifest.index_spec, k, 1, 1, manifest.search_params).gpus_used)
    memory = request(front_memory(manifest, holds_vectors, on_gpu), "a sweep actor", log)
    shard_ids = [entry.shard_id for entry in manifest.shards]
    reserved = sum(part_memory(manifest, shard_ids[i::parts], on_gpu) for i in range(min(parts, len(shard_ids)))) \
        if not holds_vectors else 0
    total = max(0, int(ray.cluster_resources().get("memory", 0)) - reserved)
    fits = max(1, total // memory) if total else size
    if fits < size and log:
        log(f"sweep: {size} query actors of {memory / 2**30:.2f} GiB do not fit the cluster's "
            f"{total / 2**30:.2f} GiB: starting {fits}")
    return memory, min(size, fits)


def start_parts(index_uri: str, count: int, num_gpus: float = 0, num_cpus: float = PART_CPUS,
                k: int | None = None, log=None) -> list:
    """``count`` actors, each holding every count-th shard of the index (part i: shards i, i+count, ...),
    each requesting the memory its shards need (:func:`part_memory`).

    Part actors reserve little CPU: they search only while a sweep worker waits on them, and a pool
    that reserved whole CPUs next to the sweep workers would starve them on small machines."""
    from latentsweep.index.manifest import load

    manifest = load(index_uri)
    shard_ids = [entry.shard_id for entry in manifest.shards]
    on_gpu = bool(num_gpus) and bool(placement.place(manifest.index_spec, k or 1, 1, 1,
                                                     manifest.search_params).gpus_used)
    actors = []
    for i in range(min(count, len(shard_ids))):
        mine = shard_ids[i::count]
        memory = request(part_memory(manifest, mine, on_gpu), f"index part {i}", log)
        actors.append(query_actor(num_gpus, num_cpus, memory).remote(index_uri, shard_ids=mine, metadata=False, k=k))
    return actors
