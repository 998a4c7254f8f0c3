"""Build or extend a sharded index with Ray tasks; the driver holds O(files) numbers, never vectors.

1. Scan, one task per embeddings file, reading only the columns the index uses: partial scaler,
   provenance, label counts, the file's ids (int64) and its deterministic share of the training and
   recall samples (raw vectors, a permutation seeded per file). The driver merges the small results
   in windows of :data:`SCAN_WINDOW` files, never all partials at once.
2. One task checks the ids: ``build`` refuses an id that repeats, ``add`` skips ids the index holds.
3. One task trains IVF/PQ on the sample (at least FAISS's 39 points per centroid when the vectors
   exist) and normalises the held-out recall queries.
4. Shard tasks, each with a ``memory=`` request from :func:`shard_memory`, read their files (shard i
   gets files i, i+N, ...), z-score and L2-normalise with the shared scaler, add vectors with their
   global ids, search the recall queries exactly and with the index, and write
   ``v-NNNNNN/shards/shard-NNNNN.faiss``, ``v-NNNNNN/metadata/shard-NNNNN.parquet`` and, for processed
   copies of references (``ingest --augment``), ``v-NNNNNN/copies/shard-NNNNN.parquet`` (id, source).
5. ANN types get recall@10 against exact search (the search params that reach ``--min-recall``), and
   every type an open-set threshold: the same sampled references, searched exactly with themselves
   left out, give the similarities a known generator's image has to its nearest other reference; the
   ``--open-set-target`` quantile of those is the threshold sweeps use (:func:`open_set_threshold`).
6. ``manifest.save`` switches ``INDEX/manifest.json`` to the new version last, so a half-built
   version is never listed and a reader of the previous version keeps it; versions older than the
   previous one are removed. ``add`` writes a new version too: its new shards, the old ones listed.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from latentsweep import lock, storage
from latentsweep.console import stage_log
from latentsweep.decision.calibration import confidence_tables, open_set_threshold, table_key
from latentsweep.errors import UsageError
from latentsweep.index import factory, reader
from latentsweep.index.manifest import (MANIFEST_NAME, Manifest, ShardEntry, clean, load, locate, save, sha256,
                                        version_number)
from latentsweep.index.scaler import Scaler
from latentsweep.index.lookup import MISSING
from latentsweep.index.shards import collapse, merge
from latentsweep.ingest import augment
from latentsweep.resources import memory_shortfall

DEFAULT_BUDGET = 4 * 2**30
TRAIN_SAMPLE = 100_000
RECALL_QUERIES = 1_000      # sampled vectors recall@10 and the open-set threshold are measured on
DEFAULT_OPEN_SET_TARGET = 0.05  # share of known-generator references a calibrated threshold calls unknown
RECALL_K = 10
DEFAULT_MIN_RECALL = 0.9
SCAN_WINDOW = 256           # scan results the driver holds at once while merging them
# Memory of a task, the terms of shard_memory / train_memory / ids_memory:
WORKER_BYTES = 256 * 2**20  # a Ray worker with numpy, pyarrow and faiss imported
METADATA_ROW_BYTES = 160    # id, uri, label, family of one row as Arrow (a URI of ~100 characters)
FILE_BYTES_PER_DIM = 32     # per dimension of a file in flight: Arrow float32 (4) + float32 matrix (4)
#                             + float64 z-score and its temporary (16) + float32 result (4) + exact-search copy (4)
KMEANS_BYTES_PER_POINT = 16  # k-means assignment (int64) and distance (float32, padded) per training vector
ID_CHECK_BYTES = 24         # per id in the duplicate check: the ids (8), their order (8), the sorted ids (8)


@dataclass
class IndexJob:
    sources: list[str]
    out: str
    features: str = reader.DEFAULT_FEATURES
    index_spec: str = "Flat"
    auto: bool = False
    memory_budget: int = DEFAULT_BUDGET
    shards: int = 4
    train_sample: int = TRAIN_SAMPLE
    quiet: bool = False
    address: str | None = None
    log: object = field(default=None, repr=False)
    min_recall: float = DEFAULT_MIN_RECALL  # recall@10 an ANN type must reach (--auto refuses below it)
    open_set_target: float = DEFAULT_OPEN_SET_TARGET  # false-unknown rate the calibrated threshold aims at
    allow_partial: bool = False  # take ingest outputs that have not finished their plan (what is missing is said)


def shard_memory(spec: str, dimension: int, vectors: int, largest_file: int, queries: int = 0) -> int:
    """Bytes a shard task holds at its peak, requested from Ray as ``memory=``: the finished index
    twice (FAISS's serialised copy is written while the index still exists), the metadata of every
    row, one input file in flight (read, z-scored, normalised, searched exactly) and the recall
    queries with their results, on top of the worker itself."""
    return (WORKER_BYTES
            + 2 * factory.index_bytes(spec, vectors, dimension)
            + vectors * METADATA_ROW_BYTES
            + largest_file * (dimension * FILE_BYTES_PER_DIM + METADATA_ROW_BYTES)
            + queries * (4 * dimension + 12 * (RECALL_K + 1) * (1 + factory.LADDER_STEPS)))


def train_memory(spec: str, dimension: int, train: int, queries: int) -> int:
    """Bytes of the task that trains ``spec`` on ``train`` vectors and normalises the recall queries:
    the sample as it arrives and normalised, k-means bookkeeping, the trained empty index twice."""
    return (WORKER_BYTES + (train + queries) * dimension * FILE_BYTES_PER_DIM + train * KMEANS_BYTES_PER_POINT
            + 2 * factory.index_bytes(spec, 0, dimension))


def ids_memory(ids: int) -> int:
    """Bytes of the task that checks ``ids`` int64 ids for repeats (or collects an index's ids)."""
    return WORKER_BYTES + ids * ID_CHECK_BYTES


def allocate(capacities: list[int], total: int) -> list[int]:
    """Split ``total`` over files holding ``capacities`` rows as evenly as they allow (water-filling:
    a file that has fewer rows than its share gives all it has, the rest goes to the others), in a
    deterministic way; the parts sum to min(total, sum(capacities))."""
    out, remaining = [0] * len(capacities), min(total, sum(capacities))
    order = sorted(range(len(capacities)), key=lambda i: (capacities[i], i))
    for rank, i in enumerate(order):
        out[i] = min(capacities[i], -(-remaining // (len(order) - rank)))
        remaining -= out[i]
    return out


def recall_at_k(truth: np.ndarray, found: np.ndarray, own: np.ndarray, k: int) -> float:
    """Mean share of each query's k exact neighbours that the approximate search found; the query's own
    id (a held-out vector is also in the index) and missing hits (-1) are left out of both lists."""
    shares = []
    for expected, got, self_id in zip(truth, found, own):
        expected = [i for i in expected if i != self_id and i != MISSING][:k]
        got = [i for i in got if i != self_id and i != MISSING][:k]
        if expected:
            shares.append(len(set(expected) & set(got)) / len(expected))
    return float(np.mean(shares)) if shares else 1.0


def _read(uri: str, columns: list[str], skip_ids: np.ndarray | None):
    """One file's batch (projected columns and the URIs) without the ids in ``skip_ids`` (sorted; ``add``)
    and the number of rows skipped."""
    batch = reader.read_columns(uri, columns, with_uri=True)
    if skip_ids is None or not len(skip_ids) or not len(batch.ids):
        return batch, 0
    import pyarrow as pa

    keep = ~np.isin(batch.ids, skip_ids)
    kept = reader.Batch(batch.ids[keep], np.ascontiguousarray(batch.vectors[keep]),
                          batch.metadata.filter(pa.array(keep)), batch.provenance)
    return kept, int(len(keep) - keep.sum())


def _originals(batch: reader.Batch) -> np.ndarray:
    """Which rows of ``batch`` are originals, not processed copies (ingest/augment.py)."""
    return augment.originals(batch.ids, batch.metadata.column("uri").to_pylist())


def _sample(uri: str, batch: reader.Batch, train: int, queries: int) -> dict:
    """A file's deterministic share of the samples, raw (normalised later with the merged scaler): a
    permutation seeded by the file's name; training rows from its front, recall queries (originals
    only: a query's copies are not independent references) from its back, so that a larger share
    extends a smaller one and the two never overlap while they fit the file."""
    order = np.random.default_rng(zlib.crc32(uri.rsplit("/", 1)[-1].encode())).permutation(len(batch.ids))
    originals = order[_originals(batch)[order]]
    train, queries = min(train, len(order)), min(queries, len(originals))
    back = originals[len(originals) - queries:]
    return {"train": batch.vectors[order[:train]], "query": batch.vectors[back], "query_ids": batch.ids[back]}


def _scan(uri: str, columns: list[str], train: int, queries: int, skip_ids: np.ndarray | None):
    """Task (three results): the file's statistics, its ids and its share of the samples. Labels are
    counted over originals: a reference and its copies are one relevant item."""
    batch, skipped = _read(uri, columns, skip_ids)
    originals = _originals(batch)
    labels = batch.metadata.column("label").to_pylist()
    families = {label: family for label, family in zip(labels, batch.metadata.column("family").to_pylist())
                if label is not None and family is not None}
    stats = {"rows": len(batch.ids), "originals": int(originals.sum()), "skipped": skipped,
             "scaler": Scaler.fit(batch.vectors), "provenance": batch.provenance,
             "labels": Counter(l for l, original in zip(labels, originals) if l is not None and original),
             "families": families}
    # ids as int64 numpy: 8 bytes an id, what the duplicate check and ``add`` hold per vector
    return stats, batch.ids, _sample(uri, batch, train, queries)


def _resample(uri: str, columns: list[str], train: int, queries: int, skip_ids: np.ndarray | None) -> dict:
    """Task: a larger share of one file's samples than its scan returned (same permutation)."""
    batch, _ = _read(uri, columns, skip_ids)
    return _sample(uri, batch, train, queries)


def _duplicate(files: list[str], *id_arrays: np.ndarray) -> tuple[int, str, str] | None:
    """Task: the first id (in sorted order) that appears twice among ``files`` and the two files
    holding it, or None. Holds the ids (8 bytes each), their order and the sorted ids: 24 bytes an id."""
    if not id_arrays:
        return None
    bounds = np.cumsum([len(ids) for ids in id_arrays])
    ids = np.concatenate(id_arrays)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
    if not len(repeats):
        return None
    first, second = order[repeats[0]], order[repeats[0] + 1]
    owner = np.searchsorted(bounds, [first, second], side="right")
    return int(ordered[repeats[0]]), files[owner[0]], files[owner[1]]


def _indexed_ids(root: str, metadata_files: list[str]) -> np.ndarray:
    """Task: the sorted ids an index holds (the ``id`` column of its shards' metadata; 8 bytes an id)."""
    location = storage.Location.parse(root)
    parts = [storage.read_table(location.join(name), columns=["id"]).column("id").to_numpy()
             for name in metadata_files]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def _prepare(spec: str, dimension: int, scaler: dict, takes: list[tuple[int, int]], *samples: dict):
    """Task (two results): the trained empty index (serialised, None for untrained types) with the
    normalised recall queries, and the queries' ids. ``takes[i]``: (training rows, queries) to use
    from ``samples[i]`` (a prefix of its training rows, a suffix of its queries)."""
    import faiss

    scaler_ = Scaler.from_dict(scaler)
    train = [sample["train"][:a] for sample, (a, _) in zip(samples, takes) if a]
    query = [sample["query"][len(sample["query"]) - b:] for sample, (_, b) in zip(samples, takes) if b]
    query_ids = [sample["query_ids"][len(sample["query_ids"]) - b:] for sample, (_, b) in zip(samples, takes) if b]
    trained = None
    if factory.needs_training(spec):
        index = factory.create(spec, dimension)
        index.train(scaler_.transform(np.concatenate(train)))
        trained = faiss.serialize_index(index)
    queries = scaler_.transform(np.concatenate(query)) if query else np.zeros((0, dimension), np.float32)
    return {"trained": trained, "queries": queries}, (np.concatenate(query_ids) if query_ids
                                                      else np.zeros(0, np.int64))


def _build_shard(shard_id: int, files: list[str], columns: list[str], dimension: int, scaler: dict, spec: str,
                 payload: dict | None, skip_ids: np.ndarray | None, ladder: list[str], out: str,
                 version: str, k: int) -> dict:
    """Task: one shard of version ``version``, with the (id, source) of its processed copies; with recall
    queries in ``payload``, their exact top-``k`` over this shard's vectors and their top-``k`` by the
    index at each search params of ``ladder``."""
    import faiss
    import pyarrow as pa

    scaler_ = Scaler.from_dict(scaler)
    trained = payload["trained"] if payload else None
    index = faiss.deserialize_index(trained) if trained is not None else factory.create(spec, dimension)
    queries = payload["queries"] if payload and len(payload["queries"]) else None
    tables, copies = [], []
    exact = (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), MISSING, np.int64)) \
        if queries is not None else None
    for uri in files:
        batch, _ = _read(uri, columns, skip_ids)
        sources = augment.source_ids(batch.ids, batch.metadata.column("uri").to_pylist())
        copies.append((batch.ids[sources != batch.ids], sources[sources != batch.ids]))
        if len(batch.ids):
            prepared = scaler_.transform(batch.vectors)
            index.add_with_ids(prepared, batch.ids)
            if queries is not None:
                flat = faiss.IndexFlatIP(dimension)
                flat.add(prepared)
                scores, positions = flat.search(queries, min(k, len(batch.ids)))
                found = (scores, np.where(positions >= 0, batch.ids[np.maximum(positions, 0)], MISSING))
                exact = merge([exact, found], k)
            del prepared
        tables.append(batch.metadata)
    name = f"shard-{shard_id:05d}"
    root = storage.Location.parse(out)
    serialised = faiss.serialize_index(index)  # uint8 array, written without another copy
    entry = {"shard_id": shard_id, "index_file": f"{version}/shards/{name}.faiss", "index_sha256": sha256(serialised),
             "index_bytes": len(serialised), "metadata_file": f"{version}/metadata/{name}.parquet",
             "count": int(index.ntotal)}
    storage.write_bytes(root.join(entry["index_file"]), serialised.data)
    del serialised
    metadata = pa.concat_tables(tables)
    metadata_bytes = storage.table_bytes(metadata)
    storage.write_bytes(root.join(entry["metadata_file"]), metadata_bytes)
    entry["metadata_sha256"] = sha256(metadata_bytes)
    copy_ids, copy_sources = ((np.concatenate(parts) for parts in zip(*copies)) if copies
                              else (np.zeros(0, np.int64),) * 2)
    if len(copy_ids):
        order = np.argsort(copy_ids)
        copies_bytes = storage.table_bytes(pa.table({"id": copy_ids[order], "source": copy_sources[order]}))
        entry["copies_file"] = f"{version}/copies/{name}.parquet"
        entry["copies_sha256"] = sha256(copies_bytes)
        storage.write_bytes(root.join(entry["copies_file"]), copies_bytes)
    recall = None
    if queries is not None:
        approximate = []
        for params in ladder:
            factory.apply_search_params(index, params)
            approximate.append(index.search(queries, k))
        held = np.isin(copy_ids, exact[1])
        recall = {"exact": exact, "approximate": approximate, "labels": _labels_of(metadata, exact[1]),
                  "sources": dict(zip(copy_ids[held].tolist(), copy_sources[held].tolist()))}
    return {"entry": entry, "recall": recall}


def _labels_of(metadata, ids: np.ndarray) -> dict[int, str]:
    """The labels of those ``ids`` this shard holds (the exact neighbours of the sample: what the
    confidence calibration votes with)."""
    import pyarrow as pa

    found = metadata.filter(pa.array(np.isin(metadata.column("id").to_numpy(), ids[ids != MISSING])))
    return {i: label for i, label in zip(found.column("id").to_pylist(), found.column("label").to_pylist())
            if label is not None}


def _log(job: IndexJob):
    return job.log or stage_log(job.quiet)


def build(job: IndexJob) -> Manifest:
    """Build an index from scratch at ``job.out``."""
    files = check(job, existing=None)
    with lock.hold(storage.Location.parse(job.out), "index build") as held:
        return _run(job, files, None, held)


def add(job: IndexJob) -> Manifest:
    """Append ``job.sources`` to the index at ``job.out`` as new shards (scaler and type unchanged)."""
    files = check(job, existing=load(job.out))
    with lock.hold(storage.Location.parse(job.out), "index add") as held:
        return _run(job, files, load(job.out), held)


def _feature_spec(job: IndexJob, existing: Manifest | None) -> str:
    return ",".join(existing.columns) if existing else job.features


def check(job: IndexJob, existing: Manifest | None) -> list[str]:
    """The job's embedding files, once its settings are known to be good: refused before the index
    folder is claimed or any Ray task starts. Features and the index type are checked against the
    first file's schema."""
    for name in ("shards", "train_sample", "memory_budget"):
        if getattr(job, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(job, name)}")
    if not 0.0 <= job.min_recall <= 1.0:
        raise UsageError(f"--min-recall is a recall@10 in [0, 1], got {job.min_recall}")
    if not 0.0 <= job.open_set_target < 1.0:
        raise UsageError(f"--open-set-target is a share of known references in [0, 1), got {job.open_set_target}")
    if existing and locate(job.out)[0] != storage.Location.parse(job.out).uri:
        raise UsageError(f"{job.out} is one version of an index, kept for its readers: add to the index "
                         f"folder above it")
    files = reader.embedding_files(job.sources, job.allow_partial, stage_log(job.quiet))
    if not existing:
        job.features = reader.concrete(files[0], job.features)  # the manifest records what was built
    dimension = sum(reader.columns_of(files[0], _feature_spec(job, existing)).values())
    if not existing and not job.auto:
        factory.check(job.index_spec, dimension)
    return files


def _memory(wanted: int, largest: int, what: str, log) -> int:
    """``wanted`` bytes, or the largest node's memory when no node offers that much (Ray would never
    schedule the task), saying so."""
    shortfall = memory_shortfall(wanted, largest, what, "build.shard_memory")
    if shortfall:
        log(f"index: {shortfall}: requesting that (more --shards make shards smaller)")
        return largest
    return wanted


def _next_version(root: storage.Location, previous: Manifest | None) -> str:
    """``v-NNNNNN``, one above every version folder present (a failed build's too) and the previous one."""
    numbers = [version_number(root.relative(info.uri)) for info in storage.list_files(root, missing_ok=True)]
    if previous and previous.build_version:
        numbers.append(version_number(previous.build_version))
    return f"v-{max([n for n in numbers if n is not None], default=0) + 1:06d}"


def _discard(root: storage.Location, version: str) -> None:
    """Remove what a build that did not finish wrote into its version folder (never listed)."""
    folder = root.join(version)
    storage.delete_prefix(folder)
    if not folder.is_s3:
        import shutil

        shutil.rmtree(folder.key, ignore_errors=True)


@dataclass
class _Context:
    """What every step of one build or add shares."""

    job: IndexJob
    files: list[str]
    existing: Manifest | None  # the index ``add`` extends; None for a build
    root: storage.Location
    version: str               # the version folder this run writes
    columns: list[str]
    dimension: int
    largest: int               # memory of the largest Ray node (0: no node says)
    log: object

    def memory(self, wanted: int, what: str) -> int:
        return _memory(wanted, self.largest, what, self.log)


@dataclass
class _Scanned:
    """The scans' statistics, merged by the driver: O(files) numbers, never vectors."""

    scaler: Scaler      # of the new files (``add`` keeps the index's own)
    labels: Counter     # the index's labels with the new files' (``add``)
    families: dict
    rows: list[int]     # per file, the rows it adds
    originals: list[int]  # per file, those of its rows that are not processed copies (ingest/augment.py)
    skipped: list[int]  # per file, the rows whose ids the index already holds (``add``)
    codec: str
    weights_digest: str
    pooling: str

    @property
    def total(self) -> int:
        return sum(self.rows)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped)

    def copies_per_source(self, existing: Manifest | None) -> int:
        """At most how many processed copies share a source: the recipe's count once any copy is indexed."""
        return max(existing.copies_per_source if existing else 0,
                   augment.COPIES if sum(self.rows) > sum(self.originals) else 0)


def _run(job: IndexJob, files: list[str], existing: Manifest | None, held: lock.Held) -> Manifest:
    """A build (``existing`` None) or an add, in the steps the module's docstring lists: the manifest
    switches to the new version only once every shard is written."""
    from latentsweep.cluster import connect, largest_node_memory

    log = _log(job)
    started = time.monotonic()
    connect(job.address, quiet=job.quiet)
    root = storage.Location.parse(job.out)
    previous = existing or (load(root.uri) if storage.exists(root.join(MANIFEST_NAME)) else None)
    version = _next_version(root, previous)
    widths = reader.columns_of(files[0], _feature_spec(job, existing))
    run = _Context(job, files, existing, root, version, list(widths), sum(widths.values()), largest_node_memory(),
                   log)
    spec = existing.index_spec if existing else None if job.auto else job.index_spec
    per_file = _first_shares(run, spec)
    skip_ids = _ids_to_skip(run)
    scans, scanned = _scan_files(run, per_file, skip_ids)
    _refuse_duplicates(run, scans, scanned.total)
    if existing and scanned.total == 0:
        log(f"index add: all {scanned.skipped_total} ids of {', '.join(job.sources)} are already in the index; "
            f"nothing to add")
        return replace(existing, skipped_existing_ids=scanned.skipped_total)

    spec, params = _choose_type(run, spec, scanned.total)
    scaler = Scaler.from_dict(existing.scaler) if existing else scanned.scaler
    queries, query_takes, train_takes = _sample_takes(run, spec, scanned)
    payload, query_ids = _train(run, spec, scaler, scans, scanned.rows, per_file, query_takes, train_takes, queries,
                                skip_ids)
    del scans  # the driver lets go of every scan result (ids and samples are freed once used)

    measure = not existing and not factory.is_exact(spec)
    ladder = factory.search_ladder(spec) if measure and queries else []
    tasks = _start_shards(run, spec, scaler, scanned, queries, payload, skip_ids, ladder)
    per_source = scanned.copies_per_source(existing)
    results, sampled, exact, recall = _collect_shards(run, spec, tasks, query_ids, queries, ladder, per_source)
    if recall:
        params = recall["search_params"]
    threshold, confidence = (existing.open_set_threshold, existing.confidence) if existing else _calibrate(
        exact, [r["recall"] for r in results], sampled, job.open_set_target, log) if queries else (None, {})
    manifest = _manifest(run, spec, params, scaler, scanned, results, recall, queries, threshold, confidence,
                         per_source)
    held.check()  # never switch the manifest of an index another run has taken over
    save(root.uri, manifest)
    removed = clean(root.uri, [manifest] + ([previous] if previous else []))
    added = sum(r["entry"]["count"] for r in results)
    log(f"index: {manifest.vectors} vectors of {run.dimension} dims in {len(manifest.shards)} shards "
        f"({spec}{', ' + params if params else ''}) at {job.out}, version {version}"
        + (f": added {added}, skipped {scanned.skipped_total} ids already in the index" if existing else "")
        + (f"; removed {len(removed)} files of older versions" if removed else "")
        + f" in {time.monotonic() - started:.1f} s")
    return manifest


def _first_shares(run: _Context, spec: str | None) -> tuple[int, int]:
    """(training rows, recall queries) each file's scan draws: the first shares of the samples. A file
    asked for more later (uneven files, --auto choosing a trained type) is read again for its larger
    share only."""
    train_target = (max(run.job.train_sample, factory.min_train_points(spec))
                    if spec and factory.needs_training(spec) else 0)
    query_target = RECALL_QUERIES if not run.existing else 0
    return -(-train_target // len(run.files)), -(-query_target // len(run.files))


def _ids_to_skip(run: _Context):
    """``add``: the task collecting the ids the index holds, which scans and shards leave out; None
    for a build (or an index without shards)."""
    if not (run.existing and run.existing.shards):
        return None
    import ray

    return ray.remote(_indexed_ids).options(memory=run.memory(
        ids_memory(run.existing.vectors), "collecting the index's ids")).remote(
        run.root.uri, [shard.metadata_file for shard in run.existing.shards])


def _scan_files(run: _Context, per_file: tuple[int, int], skip_ids) -> tuple[list, _Scanned]:
    """Start a scan task per file and merge their statistics; returns the tasks' results (the ids and
    samples stay in the object store) with the merged statistics. Files of mixed provenance, and a build
    without a row, are refused."""
    import ray

    scan = ray.remote(_scan).options(num_returns=3)
    scans = [scan.remote(uri, run.columns, *per_file, skip_ids) for uri in run.files]
    existing = run.existing
    merged, provenance = Scaler.empty(run.dimension), set()
    labels, families = Counter(existing.labels if existing else {}), dict(existing.families if existing else {})
    rows, originals, skipped = [], [], []
    for window in range(0, len(scans), SCAN_WINDOW):  # in file order: the merged scaler is reproducible
        for stats in ray.get([refs[0] for refs in scans[window:window + SCAN_WINDOW]]):
            merged = merged.merge(stats["scaler"])
            provenance |= stats["provenance"]
            labels.update(stats["labels"])
            families.update(stats["families"])
            rows.append(stats["rows"])
            originals.append(stats["originals"])
            skipped.append(stats["skipped"])
    if existing:
        provenance.add((existing.codec, existing.weights_digest, existing.pooling))
    scanned = _Scanned(merged, labels, families, rows, originals, skipped, *reader.check_provenance(provenance, "this index"))
    if scanned.total == 0 and not existing:
        raise UsageError(f"no embedding rows in {', '.join(run.job.sources)}")
    return scans, scanned


def _refuse_duplicates(run: _Context, scans: list, total: int) -> None:
    """Refuse an id that two rows of the job's files share (``add``: ids already indexed were skipped)."""
    import ray

    duplicate = ray.get(ray.remote(_duplicate).options(memory=run.memory(
        ids_memory(total), "the duplicate-id check")).remote(run.files, *[refs[1] for refs in scans]))
    if duplicate:
        found, first, second = duplicate
        where = f"twice in {first}" if first == second else f"in both {first} and {second}"
        raise UsageError(f"id {found} appears {where}: every id may be indexed once (the same images "
                         f"ingested twice, or stale shard files); index one copy of each")


def _choose_type(run: _Context, spec: str | None, total: int) -> tuple[str, str]:
    """The index type and its search params: the index's own for ``add``, --auto's choice for the
    rows and the memory budget, else the type asked for with its default params."""
    if run.existing:
        return spec, run.existing.search_params
    if run.job.auto:
        choice = factory.choose(total, run.dimension, run.job.memory_budget)
        for reason in choice.reasons:
            run.log(f"index --auto: {reason}")
        return choice.spec, choice.search_params
    return spec, factory.default_search_params(spec)


def _sample_takes(run: _Context, spec: str, scanned: _Scanned) -> tuple[int, list[int], list[int]]:
    """(recall queries, their share per file, training rows per file). Every new build samples
    references, held out of training, for recall and the open-set calibration; training takes from
    the rest of each file."""
    trained = factory.needs_training(spec)
    originals = sum(scanned.originals)
    queries = 0 if run.existing else min(RECALL_QUERIES, originals // 5 if trained else originals)
    query_takes = allocate(scanned.originals, queries)
    train_takes = (allocate([r - q for r, q in zip(scanned.rows, query_takes)],
                            max(run.job.train_sample, factory.min_train_points(spec)))
                   if trained else [0] * len(run.files))
    if trained:
        _check_training(spec, sum(train_takes), scanned.total, queries, run.log)
    return queries, query_takes, train_takes


def _train(run: _Context, spec: str, scaler: Scaler, scans: list, rows: list[int], per_file: tuple[int, int],
           query_takes: list[int], train_takes: list[int], queries: int, skip_ids):
    """The training task's two results (the trained empty index with the normalised recall queries,
    and the queries' ids), or (None, None) when there is nothing to train or measure. Each file gives
    the share its scan drew, or is read again for a larger one."""
    import ray

    if not (sum(train_takes) or queries):
        return None, None
    samples, takes = [], []
    for i, uri in enumerate(run.files):
        a, b = train_takes[i], query_takes[i]
        if not a and not b:
            continue
        if a > min(per_file[0], rows[i]) or b > min(per_file[1], rows[i]):
            samples.append(ray.remote(_resample).remote(uri, run.columns, a, b, skip_ids))
        else:
            samples.append(scans[i][2])
        takes.append((a, b))
    return ray.remote(_prepare).options(num_returns=2, memory=run.memory(
        train_memory(spec, run.dimension, sum(train_takes), queries), "training")).remote(
        spec, run.dimension, scaler.to_dict(), takes, *samples)


def _start_shards(run: _Context, spec: str, scaler: Scaler, scanned: _Scanned, queries: int, payload, skip_ids,
                  ladder: list[str]) -> list:
    """One task a shard, numbered on from the index's last shard: shard g takes the files g, g+N, ...
    of those with rows, and asks Ray for the memory :func:`shard_memory` says it holds at its peak."""
    import ray

    rows, skipped, existing = scanned.rows, scanned.skipped, run.existing
    filled = [i for i in range(len(run.files)) if rows[i]]
    count = max(1, min(run.job.shards, len(filled)))
    first = (max(s.shard_id for s in existing.shards) + 1) if existing and existing.shards else 0
    shard_task = ray.remote(_build_shard)
    tasks = []
    for g in range(count):
        group = filled[g::count]
        wanted = shard_memory(spec, run.dimension, sum(rows[i] for i in group),
                              max(rows[i] + skipped[i] for i in group), queries)
        tasks.append(shard_task.options(memory=run.memory(wanted, f"shard {first + g}")).remote(
            first + g, [run.files[i] for i in group], run.columns, run.dimension, scaler.to_dict(), spec, payload,
            skip_ids, ladder, run.root.uri, run.version, exact_k(scanned.copies_per_source(existing))))
    return tasks


def exact_k(copies_per_source: int) -> int:
    """Neighbours each sampled reference keeps from exact search: :data:`RECALL_K` others and itself,
    enough of them to hold that many sources when every source comes with all its copies."""
    return (RECALL_K + 1) * (1 + copies_per_source)


def _collect_shards(run: _Context, spec: str, tasks: list, query_ids, queries: int, ladder: list[str],
                    copies_per_source: int):
    """(the shard tasks' results, the sampled ids, their exact neighbours over all shards, the recall
    measured at each params of ``ladder``). The sample's neighbours are merged as a search merges them.
    A failure removes what this run wrote into its version folder."""
    import ray

    try:
        results = ray.get(tasks)
        sampled = ray.get(query_ids) if queries else None
        k = exact_k(copies_per_source)
        exact = merge([r["recall"]["exact"] for r in results], k) if queries else None
        recall = _recall(spec, ladder, [r["recall"] for r in results], exact[1], sampled, run.job, run.log, k) \
            if ladder else None
    except BaseException:
        _discard(run.root, run.version)
        raise
    return results, sampled, exact, recall


def _manifest(run: _Context, spec: str, params: str, scaler: Scaler, scanned: _Scanned, results: list[dict],
              recall: dict | None, queries: int, threshold: float | None, confidence: dict,
              copies_per_source: int) -> Manifest:
    """The manifest of the new version: ``add`` lists the index's shards before the new ones and keeps
    what was measured when the index was built."""
    existing, job = run.existing, run.job
    return Manifest(
        dimension=run.dimension, features=existing.features if existing else job.features, columns=run.columns,
        pooling=scanned.pooling, codec=scanned.codec, weights_digest=scanned.weights_digest, scaler=scaler.to_dict(),
        index_spec=spec, search_params=params,
        shards=(existing.shards if existing else []) + [ShardEntry(**r["entry"]) for r in results],
        labels=dict(sorted(scanned.labels.items())), families=dict(sorted(scanned.families.items())),
        sources=(existing.sources if existing else []) + list(job.sources), build_version=run.version,
        recall_at_10=recall["recall_at_10"] if recall else existing.recall_at_10 if existing else None,
        recall_queries=queries if recall else existing.recall_queries if existing else 0,
        recall_tried=recall["tried"] if recall else existing.recall_tried if existing else [],
        skipped_existing_ids=scanned.skipped_total, open_set_threshold=threshold,
        open_set_target=existing.open_set_target if existing else job.open_set_target,
        open_set_queries=existing.open_set_queries if existing else queries, confidence=confidence,
        copies_per_source=copies_per_source)


def _check_training(spec: str, train: int, total: int, queries: int, log) -> None:
    """Refuse fewer training vectors than centroids (FAISS cannot train); warn below its recommended
    39 per centroid."""
    centroids, recommended = factory.centroids(spec), factory.min_train_points(spec)
    held = f" ({queries} more are held out to measure recall)" if queries else ""
    if train < centroids:
        raise UsageError(f"{spec} trains {centroids} centroids and needs at least as many training vectors; "
                         f"{total} vectors exist{held}: choose fewer lists (IVF<n>), fewer PQ bits, or Flat")
    if train < recommended:
        log(f"index: warning: training {spec} on {train} vectors, fewer than FAISS's recommended 39 per "
            f"centroid ({recommended}): all there are{held}")
    else:
        log(f"index: training {spec} on {train} sampled vectors ({train // centroids} per centroid, at least "
            f"39 recommended){held}")


def _calibrate(exact: tuple[np.ndarray, np.ndarray], shard_recall: list[dict], query_ids: np.ndarray,
               target: float, log) -> tuple[float | None, dict]:
    """The open-set threshold and the vote's confidence tables from the sample's exact neighbours (merged
    over the shards) and their labels and copies' sources (each shard's own); each sampled reference votes
    with its neighbours other than itself and its copies, a source and its copies counting once."""
    sources = {i: source for part in shard_recall for i, source in part["sources"].items()}
    find = np.vectorize(lambda i: sources.get(int(i), int(i)), otypes=[np.int64])
    scores, ids = collapse(*exact, find(exact[1]) if sources else exact[1], query_ids, RECALL_K)
    shard_labels = [part["labels"] for part in shard_recall]
    threshold = open_set_threshold(scores, ids, query_ids, target, MISSING)
    if threshold is not None:
        log(f"index: open-set threshold {threshold:.4f}: {target:.0%} of {len(query_ids)} sampled references "
            f"fall below it against the others (sweeps call such queries unknown; --open-set-threshold overrides)")
    labels = {i: label for part in shard_labels for i, label in part.items()}
    codes = {label: code for code, label in enumerate(sorted(set(labels.values())))}
    code_of = np.vectorize(lambda i: codes.get(labels.get(int(i)), -1), otypes=[np.int64])
    tables = confidence_tables(code_of(ids), scores, code_of(query_ids)) if codes else {}
    if table_key(RECALL_K, False) in tables:
        log(f"index: vote confidence calibrated on {sum(tables[table_key(RECALL_K, False)]['queries'])} labelled "
            f"sampled references (leave-one-out accuracy by vote share; sweeps report it as `confidence`)")
    return threshold, tables


def _recall(spec: str, ladder: list[str], parts: list[dict], truth: np.ndarray, query_ids: np.ndarray, job: IndexJob,
            log, k: int) -> dict:
    """recall@10 of ``spec`` at each search params of ``ladder`` (cheapest first) against exact search,
    merged over the shards as a search merges them (``truth``: the merged exact ids); the first params that
    reach ``job.min_recall``, else (without --auto) the best; --auto refuses a type that reaches it at none."""
    tried = []
    for step, params in enumerate(ladder):
        _, found = merge([part["approximate"][step] for part in parts], k)
        tried.append({"search_params": params,
                      "recall_at_10": round(recall_at_k(truth, found, query_ids, RECALL_K), 4)})
    said = ", ".join(f"{t['search_params'] or spec}: {t['recall_at_10']:.3f}" for t in tried)
    chosen = next((t for t in tried if t["recall_at_10"] >= job.min_recall), None)
    if chosen is None:
        best = max(tried, key=lambda t: t["recall_at_10"])
        if job.auto:
            raise UsageError(f"index --auto: {spec} reaches recall@10 {best['recall_at_10']:.3f} at best on "
                             f"{len(query_ids)} held-out vectors, below --min-recall {job.min_recall} (tried "
                             f"{said}): raise --memory-budget for a larger index, lower --min-recall, "
                             f"or choose --index-type")
        log(f"index: warning: {spec} reaches recall@10 {best['recall_at_10']:.3f} at best, below "
            f"--min-recall {job.min_recall} (tried {said}); keeping {best['search_params'] or 'its defaults'}")
        chosen = best
    log(f"index: recall@10 {chosen['recall_at_10']:.3f} against exact search on {len(query_ids)} held-out "
        f"vectors at {chosen['search_params'] or spec} (tried {said})")
    return {**chosen, "tried": tried}
