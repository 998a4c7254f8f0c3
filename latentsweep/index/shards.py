"""Load a sharded index (checksums verified), search every shard and merge the results.

Merging keeps each shard's global int64 ids, so search over the shards equals one index over all
vectors (exact for Flat). Shards move to GPUs when the installed faiss has them.
"""

from __future__ import annotations

import numpy as np

from latentsweep.errors import JobFailed, UsageError
from latentsweep.index import factory
from latentsweep.index.manifest import Manifest, locate, read_verified
from latentsweep.index.scaler import Scaler

MISSING = -1


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-way merge of per-shard (scores, ids), highest score first; missing hits are id -1
    (FAISS's marker; ids are signed, so only -1 itself means missing)."""
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(ids == MISSING, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    if top_scores.shape[1] < k:
        pad = k - top_scores.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=MISSING)
    return top_scores.astype(np.float32), top_ids


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class ShardedIndex:
    """A loaded index: the manifest, the scaler, one FAISS index per shard and their metadata."""

    def __init__(self, root: str, manifest: Manifest, indices: list, metadata):
        self.root, self.manifest, self.indices, self.metadata = root, manifest, indices, metadata
        self.scaler = Scaler.from_dict(manifest.scaler)

    @classmethod
    def load(cls, root: str, shard_ids: list[int] | None = None, use_gpu: bool = True,
             load_vectors: bool = True) -> "ShardedIndex":
        """``shard_ids``: only these shards (an index part); ``load_vectors=False``: manifest, scaler and
        metadata only, for a front that searches through part actors."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        root, manifest = locate(root)  # INDEX (its current version) or INDEX/v-NNNNNN (pinned)
        entries = [s for s in manifest.shards if shard_ids is None or s.shard_id in shard_ids]
        indices, tables = [], []
        gpus = gpu_count() if use_gpu else 0
        for position, entry in enumerate(entries):
            raw = read_verified(root, entry.metadata_file, entry.metadata_sha256)
            tables.append(pq.read_table(pa.BufferReader(raw)))
            if not load_vectors:
                continue
            data = read_verified(root, entry.index_file, entry.index_sha256)
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
            if index.d != manifest.dimension:
                raise JobFailed(f"{entry.index_file} has dimension {index.d}, the manifest says {manifest.dimension}")
            factory.apply_search_params(index, manifest.search_params)
            if gpus:
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), position % gpus, index)
            indices.append(index)
        metadata = pa.concat_tables(tables) if tables else None
        return cls(root, manifest, indices, metadata)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Raw pooled vectors (columns concatenated as in the manifest) -> z-scored, L2-normalised."""
        if vectors.shape[1] != self.manifest.dimension:
            raise UsageError(f"query vectors have {vectors.shape[1]} dims, the index has {self.manifest.dimension}")
        return self.scaler.transform(vectors)

    def search(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard: (scores float32 (n, k), ids int64 (n, k))."""
        results = [index.search(prepared, min(k, max(index.ntotal, 1))) for index in self.indices]
        return merge(results, k)
