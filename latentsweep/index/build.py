"""Build or extend a sharded index with Ray tasks.

Pass 1 (one task per embeddings file): partial scalers, provenance, label counts -> merged on the
driver. Trained types (IVF/PQ) train once on a deterministic sample. Pass 2 (one task per shard):
each shard reads its own files (shard i gets files i, i+N, ...), z-scores and L2-normalises with the
shared scaler, adds vectors with their global ids and writes ``shards/shard-NNNNN.faiss`` and
``metadata/shard-NNNNN.parquet``. The manifest is written last, so a half-built index is never
listed; ``add`` appends new shards and keeps the recorded scaler.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from latentsweep import lock, storage
from latentsweep.console import stage_log
from latentsweep.errors import UsageError
from latentsweep.index import factory, features
from latentsweep.index.manifest import Manifest, ShardEntry, load, save, sha256
from latentsweep.index.scaler import Scaler

DEFAULT_BUDGET = 4 * 2**30
TRAIN_SAMPLE = 100_000


@dataclass
class IndexJob:
    sources: list[str]
    out: str
    features: str = "2lat"
    index_spec: str = "Flat"
    auto: bool = False
    memory_budget: int = DEFAULT_BUDGET
    shards: int = 4
    train_sample: int = TRAIN_SAMPLE
    quiet: bool = False
    address: str | None = None
    log: object = field(default=None, repr=False)


def _scan(uri: str, feature_spec: str) -> dict:
    batch, columns = features.read(uri, feature_spec)
    families = {}
    for label, family in zip(batch.metadata.column("label").to_pylist(), batch.metadata.column("family").to_pylist()):
        if label is not None and family is not None:
            families[label] = family
    return {"scaler": Scaler.fit(batch.vectors), "provenance": batch.provenance, "columns": columns,
            "labels": Counter(l for l in batch.metadata.column("label").to_pylist() if l is not None),
            "families": families, "dimension": batch.vectors.shape[1]}


def _build_shard(shard_id: int, files: list[str], feature_spec: str, scaler: dict, spec: str,
                 trained: bytes | None, out: str) -> dict:
    import faiss
    import pyarrow as pa

    scaler_ = Scaler.from_dict(scaler)
    index = faiss.deserialize_index(np.frombuffer(trained, np.uint8)) if trained else None
    tables = []
    for uri in files:
        batch, _ = features.read(uri, feature_spec)
        if index is None:
            index = factory.create(spec, batch.vectors.shape[1])
        if len(batch.ids):
            index.add_with_ids(scaler_.transform(batch.vectors), batch.ids.astype(np.int64))
        tables.append(batch.metadata)
    name = f"shard-{shard_id:05d}"
    index_bytes = faiss.serialize_index(index).tobytes()
    root = storage.Location.parse(out)
    storage.write_bytes(root.join("shards", f"{name}.faiss"), index_bytes)
    metadata_bytes = storage.table_bytes(pa.concat_tables(tables))
    storage.write_bytes(root.join("metadata", f"{name}.parquet"), metadata_bytes)
    return {"shard_id": shard_id, "index_file": f"shards/{name}.faiss", "index_sha256": sha256(index_bytes),
            "index_bytes": len(index_bytes), "metadata_file": f"metadata/{name}.parquet",
            "metadata_sha256": sha256(metadata_bytes), "count": int(index.ntotal)}


def _train(spec: str, dimension: int, files: list[str], feature_spec: str, scaler: Scaler, sample: int) -> bytes:
    """Train an empty index of ``spec`` on a deterministic sample of the transformed vectors."""
    import faiss

    rng = np.random.default_rng(0)
    per_file = max(1, -(-sample // len(files)))
    parts = []
    for uri in files:
        vectors = features.read(uri, feature_spec)[0].vectors
        take = rng.choice(len(vectors), size=min(per_file, len(vectors)), replace=False) if len(vectors) else []
        parts.append(vectors[np.sort(take)])
    data = scaler.transform(np.concatenate(parts))
    index = factory.create(spec, dimension)
    index.train(data)
    return faiss.serialize_index(index).tobytes()


def _log(job: IndexJob):
    return job.log or stage_log(job.quiet)


def build(job: IndexJob) -> Manifest:
    """Build an index from scratch at ``job.out``."""
    files = check(job, existing=None)
    with lock.hold(storage.Location.parse(job.out), "index build"):
        return _run(job, files, existing=None)


def add(job: IndexJob) -> Manifest:
    """Append ``job.sources`` to the index at ``job.out`` as new shards (scaler and type unchanged)."""
    files = check(job, existing=load(job.out))
    with lock.hold(storage.Location.parse(job.out), "index add"):
        return _run(job, files, existing=load(job.out))


def _feature_spec(job: IndexJob, existing: Manifest | None) -> str:
    return ",".join(existing.columns) if existing else job.features


def check(job: IndexJob, existing: Manifest | None) -> list[str]:
    """The job's embedding files, once its settings are known to be good: refused before the index
    folder is claimed or any Ray task starts. Features and the index type are checked against the
    first file's schema."""
    for name in ("shards", "train_sample", "memory_budget"):
        if getattr(job, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(job, name)}")
    files = features.embedding_files(job.sources)
    dimension = sum(features.columns_of(files[0], _feature_spec(job, existing)).values())
    if not existing and not job.auto:
        factory.check(job.index_spec, dimension)
    return files


def _run(job: IndexJob, files: list[str], existing: Manifest | None) -> Manifest:
    import ray

    from latentsweep.cluster import connect

    log = _log(job)
    started = time.monotonic()
    connect(job.address, quiet=job.quiet)
    feature_spec = _feature_spec(job, existing)
    scan = ray.remote(_scan)
    scans = ray.get([scan.remote(uri, feature_spec) for uri in files])
    provenance = set().union(*(s["provenance"] for s in scans))
    if existing:
        provenance.add((existing.codec, existing.weights_digest, existing.pooling))
    codec, weights_digest, pooling = features.check_provenance(provenance, "this index")
    columns = scans[0]["columns"]
    dimension = scans[0]["dimension"]
    labels, families = Counter(existing.labels if existing else {}), dict(existing.families if existing else {})
    merged = Scaler.empty(dimension)
    for result in scans:
        merged = merged.merge(result["scaler"])
        labels.update(result["labels"])
        families.update(result["families"])
    if merged.count == 0 and not existing:
        raise UsageError(f"no embedding rows in {', '.join(job.sources)}")
    scaler = Scaler.from_dict(existing.scaler) if existing else merged
    if existing:
        spec, params = existing.index_spec, existing.search_params
    elif job.auto:
        choice = factory.choose(merged.count, dimension, job.memory_budget)
        spec, params = choice.spec, choice.search_params
        for reason in choice.reasons:
            log(f"index --auto: {reason}")
    else:
        spec, params = job.index_spec, _default_params(job.index_spec)
    trained = (_train(spec, dimension, files, feature_spec, scaler, job.train_sample)
               if factory.needs_training(spec) else None)
    count = max(1, min(job.shards, len(files)))
    first = (max(s.shard_id for s in existing.shards) + 1) if existing and existing.shards else 0
    shard_task = ray.remote(_build_shard)
    entries = ray.get([shard_task.remote(first + i, files[i::count], feature_spec, scaler.to_dict(), spec,
                                         trained, storage.Location.parse(job.out).uri)
                       for i in range(count)])
    manifest = Manifest(
        dimension=dimension, features=existing.features if existing else job.features, columns=columns,
        pooling=pooling, codec=codec, weights_digest=weights_digest, scaler=scaler.to_dict(),
        index_spec=spec, search_params=params,
        shards=(existing.shards if existing else []) + [ShardEntry(**entry) for entry in entries],
        labels=dict(sorted(labels.items())), families=dict(sorted(families.items())),
        sources=(existing.sources if existing else []) + list(job.sources))
    save(job.out, manifest)
    log(f"index: {manifest.vectors} vectors of {dimension} dims in {len(manifest.shards)} shards "
        f"({spec}) at {job.out} in {time.monotonic() - started:.1f} s")
    return manifest


def _default_params(spec: str) -> str:
    if spec.startswith("HNSW"):
        return "efSearch=128"
    if spec.startswith("IVF"):
        nlist = int(spec[3:].split(",")[0].split("_")[0] or 1)
        return f"nprobe={max(8, nlist // 64)}"
    return ""
