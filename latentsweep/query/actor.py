"""The query engine: loads an index once, answers batches of raw vectors with neighbours and labels.

``QueryEngine`` is a plain class so it runs in a Ray actor (``QueryActor``), inside Ray Data's actor
pool (the sweep) or directly (evaluation, tests) with the same code.
"""

from __future__ import annotations

import numpy as np

from latentsweep.index.shards import MISSING, ShardedIndex, merge


class QueryEngine:
    """``shard_ids``: serve only these shards (an index part). ``parts``: serve the whole index by
    fanning each search out to part actors and merging their results (for indices larger than one
    worker's memory); this engine then holds only the scaler and the metadata."""

    def __init__(self, index_uri: str, use_gpu: bool = True, shard_ids: list[int] | None = None,
                 parts: list | None = None):
        self.parts = parts
        self.index = ShardedIndex.load(index_uri, shard_ids=shard_ids, use_gpu=use_gpu, load_vectors=not parts)
        metadata = self.index.metadata
        ids = metadata.column("id").to_numpy()
        order = np.argsort(ids)
        self._ids = ids[order]
        self._labels = np.array(metadata.column("label").to_pylist(), dtype=object)[order]
        self._uris = np.array(metadata.column("uri").to_pylist(), dtype=object)[order]
        self.families = dict(self.index.manifest.families)

    @property
    def manifest(self):
        return self.index.manifest

    def lookup(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Metadata values (labels or URIs) for neighbour ids; None for missing neighbours."""
        flat = ids.reshape(-1)
        positions = np.clip(np.searchsorted(self._ids, flat), 0, len(self._ids) - 1)
        found = (self._ids[positions] == flat) & (flat != MISSING)
        out = np.where(found, values[positions], None)
        return out.reshape(ids.shape)

    def search(self, vectors: np.ndarray, k: int, exclude_ids: np.ndarray | None = None):
        """Raw pooled vectors -> (scores, ids, labels) of the top-k; ``exclude_ids[i]`` (a query's own
        id, for leave-one-out) is dropped from row i once, and only that id."""
        prepared = self.index.prepare(np.asarray(vectors, dtype=np.float32))
        extra = 1 if exclude_ids is not None else 0
        scores, ids = self.search_prepared(prepared, k + extra)
        if exclude_ids is not None:
            scores, ids = drop_self(scores, ids, exclude_ids, k)
        return scores, ids, self.lookup(ids, self._labels)

    def search_prepared(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of already normalised vectors over this engine's shards, or over its parts."""
        if not self.parts:
            return self.index.search(prepared, k)
        import ray

        return merge(ray.get([part.search_prepared.remote(prepared, k) for part in self.parts]), k)

    def uris(self, ids: np.ndarray) -> np.ndarray:
        return self.lookup(ids, self._uris)


def drop_self(scores: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int):
    """Remove each row's own id (first occurrence) and keep k columns."""
    keep = np.ones_like(ids, dtype=bool)
    is_self = ids == own[:, None]
    first = np.argmax(is_self, axis=1)
    rows = np.flatnonzero(is_self.any(axis=1))
    keep[rows, first[rows]] = False
    keep[~is_self.any(axis=1), -1] = False  # no self-match: drop the extra last column instead
    return scores[keep].reshape(len(ids), -1)[:, :k], ids[keep].reshape(len(ids), -1)[:, :k]


def query_actor(num_gpus: float = 0, num_cpus: float = 1):
    """A Ray actor class serving ``QueryEngine``: ``actor.search.remote(vectors, k)``."""
    import ray

    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus)(QueryEngine)


def start_parts(index_uri: str, count: int, num_gpus: float = 0, num_cpus: float = 0.1) -> list:
    """``count`` actors, each holding every count-th shard of the index (part i: shards i, i+count, ...).

    Part actors reserve little CPU: they search only while a sweep worker waits on them, and a pool
    that reserved whole CPUs next to the sweep workers would starve them on small machines."""
    from latentsweep.index.manifest import load

    shard_ids = [entry.shard_id for entry in load(index_uri).shards]
    actor = query_actor(num_gpus, num_cpus)
    return [actor.remote(index_uri, shard_ids=shard_ids[i::count]) for i in range(min(count, len(shard_ids)))]
