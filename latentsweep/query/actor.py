"""The query engine: loads an index once, answers batches of raw vectors with neighbours and labels.

``QueryEngine`` is a plain class so it runs in a Ray actor (``QueryActor``), inside Ray Data's actor
pool (the sweep) or directly (evaluation, tests) with the same code. Per reference it holds the index's
vectors (memory-mapped where the type allows), a sorted int64 id, a label code and a shard code
(``lookup.References``): no URI, no Python object. URIs are read for the neighbours a batch returns.
The memory it needs is :func:`latentsweep.index.placement.engine_memory` of the manifest; the sweep
and the index parts request it from Ray (``memory=``), and their GPUs by :func:`gpu_requests`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentsweep.cluster import largest_node_memory
from latentsweep.errors import UsageError
from latentsweep.index import placement
from latentsweep.index.shards import ShardedIndex, collapse, merge
from latentsweep.resources import memory_shortfall

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
        """Raw pooled vectors -> (scores, ids, labels) of the top-k references, a reference and its
        processed copies counting as one (its best hit); ``exclude_ids[i]`` (a query's own id, for
        leave-one-out) is dropped from row i with its copies, and nothing else."""
        scores, ids = self.search_ids(vectors, k, exclude_ids)
        return scores, ids, self.references.labels(ids)

    def search_ids(self, vectors: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
        """:meth:`search` without the labels: (scores, ids) of the top-k."""
        prepared = self.index.prepare(np.asarray(vectors, dtype=np.float32))
        extra = 1 if exclude_ids is not None else 0
        scores, ids = self.search_prepared(prepared, (k + extra) * (1 + self.manifest.copies_per_source))
        exclude = self.references.sources(exclude_ids) if exclude_ids is not None else None
        return collapse(scores, ids, self.references.sources(ids), exclude, k)

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


PARTS_REMEDY = "more --index-parts make each part hold fewer shards"


def request(wanted: int, what: str, remedy: str = PARTS_REMEDY) -> int:
    """``wanted`` bytes, refused with a :class:`UsageError` when no alive node offers that much memory:
    Ray would never place the actor (and waits forever, saying so only in its logs), and asking for
    less would let it start and be killed for memory once its shards are in."""
    shortfall = memory_shortfall(wanted, largest_node_memory(), what, "placement.engine_memory")
    if shortfall:
        raise UsageError(f"{shortfall}: {remedy}")
    return wanted


@dataclass(frozen=True)
class GpuRequests:
    """``num_gpus`` for each actor of a search: ``parts`` in :func:`start_parts`' order, ``actors`` for
    the sweep's query actors."""
    parts: tuple[int, ...]
    actors: tuple[int, ...]
    reason: str


def gpu_requests(manifest, k: int, gpus: int, parts: int = 0, actors: int = 1) -> GpuRequests:
    """How many GPUs each of ``parts`` index parts (0: none, the query actors hold the vectors) and each
    of ``actors`` sweep query actors requests, for searches of ``k`` neighbours on a cluster of ``gpus``
    GPUs.

    Only actors that hold vectors request a GPU (query actors over index parts hold none), and only
    where FAISS can search the index there (:func:`placement.gpu_searchable`: no HNSW, k and nprobe at
    most 2048 ...): one each, in order, while the cluster's GPUs last; the others request none and
    search on the CPU, where a request beyond the cluster's GPUs would keep them pending forever."""
    holders = parts or actors
    searchable, why = placement.gpu_searchable(manifest.index_spec, k, manifest.dimension, manifest.search_params)
    granted = min(holders, gpus) if searchable else 0
    ones = (1,) * granted + (0,) * (holders - granted)
    if not gpus:
        reason = "no GPU in the cluster"
    elif not searchable:
        reason = f"{why}: no GPU requested"
    else:
        reason = (f"{why}: {granted} of {holders} {'index parts' if parts else 'query actors'} request a GPU "
                  f"(the cluster has {gpus})")
    return GpuRequests(ones if parts else (), (0,) * actors if parts else ones, reason)


def part_memory(manifest, shard_ids: list[int], on_gpu: bool = False) -> int:
    """Bytes of an index part holding ``shard_ids`` (vectors only, no references)."""
    vectors = sum(entry.count for entry in manifest.shards if entry.shard_id in shard_ids)
    return placement.engine_memory(manifest.index_spec, manifest.dimension, vectors, len(manifest.labels),
                                   len(shard_ids), holds_metadata=False, on_gpu=on_gpu)


def front_memory(manifest, holds_vectors: bool = True, on_gpu: bool = False) -> int:
    """Bytes of an engine serving the whole index (``holds_vectors=False``: a front over parts)."""
    per_source = manifest.copies_per_source  # at most this many copies a source: a bound on the copies
    return placement.engine_memory(manifest.index_spec, manifest.dimension, manifest.vectors, len(manifest.labels),
                                   len(manifest.shards), holds_vectors=holds_vectors, on_gpu=on_gpu,
                                   copies=manifest.vectors * per_source // (1 + per_source))


def pool_plan(manifest, size: int, holds_vectors: bool, gpus: int, k: int, parts: int = 1,
              log=None, evidence: list | None = None) -> tuple[int, int]:
    """(memory per sweep actor, pool size): the actor's :func:`front_memory` (refused by :func:`request`
    when no node has that much) and at most as many actors as the cluster's memory holds beside the
    ``parts`` index parts (at least one). The actors share one memory request: their index counts as
    on a GPU only when :func:`gpu_requests` gives every one of them a GPU; the ``evidence`` indices'
    manifests (other descriptor families each actor also searches, on its CPU) add theirs."""
    import ray

    started = 0 if holds_vectors else min(parts, len(manifest.shards))
    requests = gpu_requests(manifest, k, gpus, started, size)
    remedy = ("more --index-parts move the vectors to part actors, leaving the query actors the references"
              if holds_vectors else "the references alone need this much: it takes a node with more memory")
    memory = request(front_memory(manifest, holds_vectors, holds_vectors and all(requests.actors))
                     + sum(front_memory(each) for each in evidence or []), "a sweep query actor", remedy)
    shard_ids = [entry.shard_id for entry in manifest.shards]
    reserved = sum(part_memory(manifest, shard_ids[i::parts], bool(gpu)) for i, gpu in enumerate(requests.parts))
    total = max(0, int(ray.cluster_resources().get("memory", 0)) - reserved)
    fits = max(1, total // memory) if total else size
    if fits < size and log:
        log(f"sweep: {size} query actors of {memory / 2**30:.2f} GiB do not fit the cluster's "
            f"{total / 2**30:.2f} GiB: starting {fits}")
    return memory, min(size, fits)


def start_parts(index_uri: str, count: int, gpus: int = 0, num_cpus: float = PART_CPUS,
                k: int | None = None, log=None) -> list:
    """``count`` actors, each holding every count-th shard of the index (part i: shards i, i+count, ...),
    each requesting the memory its shards need (:func:`part_memory`) and, on a cluster of ``gpus``
    GPUs, one GPU where :func:`gpu_requests` grants it. Every request is checked (:func:`request`)
    before the first actor starts.

    Part actors reserve little CPU: they search only while a sweep worker waits on them, and a pool
    that reserved whole CPUs next to the sweep workers would starve them on small machines."""
    from latentsweep.index.manifest import load

    manifest = load(index_uri)
    shard_ids = [entry.shard_id for entry in manifest.shards]
    requests = gpu_requests(manifest, k or 1, gpus, parts=min(count, len(shard_ids)), actors=0)
    mine = [shard_ids[i::count] for i in range(len(requests.parts))]
    memory = [request(part_memory(manifest, ids, bool(gpu)), f"index part {i} ({len(ids)} of {len(shard_ids)} shards)")
              for i, (ids, gpu) in enumerate(zip(mine, requests.parts))]
    if log:
        log(f"index parts: {requests.reason}")
    return [query_actor(gpu, num_cpus, size).remote(index_uri, shard_ids=ids, metadata=False, k=k)
            for ids, gpu, size in zip(mine, requests.parts, memory)]
