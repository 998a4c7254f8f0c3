"""Synthetic embedding Parquet in the ingest layout: index and query tests and benchmarks (no codec).

Benchmark data, not product logic: clustered vectors in the embeddings schema, and a numpy brute
force to compare searches against."""

from __future__ import annotations


import numpy as np
import pyarrow as pa

from latentsweep import schema, storage

DIMS = {"y_hat_luma": 24, "y_hat_chroma": 8}


def clustered(n: int, labels: int, dim: int, seed: int = 0, spread: float = 0.35):
    """Vectors around one random centre per label; returns (vectors, label index)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels, dim)) * 2
    assignment = rng.integers(labels, size=n)
    return (centres[assignment] + rng.normal(size=(n, dim)) * spread * 2).astype(np.float32), assignment


def write_ingest_output(root: str, vectors: np.ndarray, labels: list[str], families: dict[str, str],
                        files: int = 4, id_offset: int = 0, codec: str = "jpegai-bop",
                        weights: str = "w1", pooling: str = "gap", dims=DIMS) -> list[int]:
    """Write ``root/embeddings/shard-*.parquet`` holding ``vectors`` split over the columns in ``dims``."""
    n = len(vectors)
    ids = [schema.stable_id(f"img://{id_offset + i}") for i in range(n)]
    location = storage.Location.parse(str(root))
    bounds = np.linspace(0, n, files + 1).astype(int)
    for part in range(files):
        rows = range(bounds[part], bounds[part + 1])
        count = len(rows)
        columns = {
            "id": pa.array([ids[i] for i in rows], pa.int64()),
            "uri": [f"img://{id_offset + i}" for i in rows], "sha256": [None] * count, "version": ["1"] * count,
            "label": [labels[i] for i in rows], "family": [families.get(labels[i]) for i in rows],
            "width": pa.array([64] * count, pa.int32()), "height": pa.array([64] * count, pa.int32()),
            "source": ["image"] * count, "codec": [codec] * count, "weights_digest": [weights] * count,
            "feature_set": ["all"] * count, "pooling": [pooling] * count,
            **{field.name: pa.nulls(count, field.type) for field in schema.DECLARED_FIELDS},  # nothing declared
        }
        start = 0
        for name, dim in dims.items():
            block = np.ascontiguousarray(vectors[bounds[part]:bounds[part + 1], start:start + dim])
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
            start += dim
        table = pa.table(columns, schema=schema.embedding_schema(dims))
        storage.write_table(location.join("embeddings", f"shard-{part:05d}.parquet"), table)
    return ids


def exact_search(reference: np.ndarray, queries: np.ndarray, k: int):
    """Brute force with numpy after the paper's normalisation fitted on ``reference``."""
    mean, std = reference.astype(np.float64).mean(0), reference.astype(np.float64).std(0)
    std[std == 0] = 1

    def prepare(x):
        z = (x - mean) / std
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    scores = prepare(queries.astype(np.float64)) @ prepare(reference.astype(np.float64)).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order
