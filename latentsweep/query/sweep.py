"""Bulk attribution sweeps: every query file streams through a pool of query actors.

Each input embeddings file becomes one result part, named from its URI, in a date partition
(``OUT/date=YYYY-MM-DD/part-<hash>-<name>.parquet``), written atomically with a done marker; a rerun
of the same night skips parts already attributed with the same index and settings. The partition
ends with ``_SUCCESS.json`` listing every part with its size and SHA-256, which ``pull`` verifies.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from latentsweep import lock, schema, storage
from latentsweep.console import stage_log
from latentsweep.errors import UsageError
from latentsweep.index import features
from latentsweep.query import metrics, report
from latentsweep.query.vote import vote

DONE_FOLDER = "_done"
SUCCESS = "_SUCCESS.json"
REPORT = "report.html"


@dataclass
class SweepJob:
    queries: list[str]
    index: str
    out: str
    date: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
    k: int = 10
    weighted: bool = False
    open_set_threshold: float | None = None
    workers: int | None = None
    index_parts: int = 1  # >1: spread the shards over this many actors, searched and merged per query batch
    overwrite: bool = False
    quiet: bool = False
    address: str | None = None


@dataclass
class SweepSummary:
    out: str
    queries: int = 0
    attributed: int = 0
    unknown: int = 0
    parts: int = 0
    parts_already_done: int = 0
    seconds: float = 0.0
    queries_per_second: float = 0.0
    labelled: int = 0
    metrics: dict | None = None  # the paper's metrics when queries carry labels (AP truncated at k)


def partition(job: SweepJob) -> storage.Location:
    try:
        datetime.date.fromisoformat(job.date)
    except ValueError:
        raise UsageError(f"--date must be YYYY-MM-DD, got {job.date!r}") from None
    return storage.Location.parse(job.out).join(f"date={job.date}")


def part_name(query_uri: str) -> str:
    stem = query_uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet")
    return f"part-{hashlib.sha256(query_uri.encode()).hexdigest()[:10]}-{stem}"


class SweepWorker:
    """Ray Data callable class: loads the index once; each row is a query file to attribute."""

    def __init__(self, index_uri: str, settings: dict, partition_uri: str, parts: list | None = None):
        from latentsweep.query.actor import QueryEngine

        self.engine = QueryEngine(index_uri, parts=parts, k=settings["k"])  # k decides GPU or CPU search
        self.settings = settings
        self.partition = storage.Location.parse(partition_uri)
        manifest = self.engine.manifest
        self.expected = (manifest.codec, manifest.weights_digest, manifest.pooling)
        self.columns = ",".join(manifest.columns)

    def __call__(self, batch: dict) -> dict:
        rows, unknown = [], []
        for uri, name, digest in zip(batch["uri"], batch["part"], batch["digest"]):
            count, missing = self.attribute(uri, name, digest)
            rows.append(count)
            unknown.append(missing)
        return {"part": batch["part"], "rows": np.array(rows), "unknown": np.array(unknown)}

    def attribute(self, uri: str, name: str, digest: str) -> tuple[int, int]:
        batch, _ = features.read(uri, self.columns)
        require_index_space(batch.provenance, self.expected, uri)
        k = self.settings["k"]
        scores, ids, labels = self.engine.search(batch.vectors, k)
        votes = [vote(list(labels[i]), scores[i], self.engine.families, self.settings["weighted"],
                      self.settings["open_set_threshold"]) for i in range(len(ids))]
        meta = batch.metadata
        table = pa.table({
            "id": meta.column("id"), "uri": meta.column("uri"),
            "predicted_label": [v.label for v in votes], "predicted_family": [v.family for v in votes],
            "vote_share": pa.array([v.share for v in votes], pa.float32()),
            "top_score": pa.array([v.top_score for v in votes], pa.float32()),
            "unknown": [v.unknown for v in votes],
            "neighbor_ids": pa.array(ids.tolist(), pa.list_(pa.int64())),
            "neighbor_labels": pa.array(labels.tolist(), pa.list_(pa.string())),
            "neighbor_scores": pa.array(scores.tolist(), pa.list_(pa.float32())),
            "neighbor_uris": pa.array(self.engine.uris(ids).tolist(), pa.list_(pa.string())),
            "label": meta.column("label"), "family": meta.column("family"),
        }, schema=schema.RESULT_SCHEMA)
        storage.write_table(self.partition.join(f"{name}.parquet"), table)
        marker = {"part": name, "digest": digest, "rows": table.num_rows,
                  "unknown": int(sum(v.unknown for v in votes))}
        storage.write_bytes(self.partition.join(DONE_FOLDER, f"{name}.json"), json.dumps(marker).encode())
        return table.num_rows, marker["unknown"]


def require_index_space(provenance: set, expected: tuple[str, str, str], uri: str) -> None:
    """Refuse queries embedded with another codec, weights or pooling than the index."""
    if provenance and provenance != {expected}:
        found = features.check_provenance(provenance, uri)
        raise UsageError(f"{uri} was embedded with codec={found[0]} weights={found[1][:12]} "
                         f"pooling={found[2]}, the index with {expected[0]} weights={expected[1][:12]} "
                         f"pooling={expected[2]}: embed the queries with the index's settings")


def check(job: SweepJob):
    """Refuse bad settings and a missing index before anything is ingested, claimed or started;
    returns the index manifest."""
    from latentsweep.index.manifest import load

    partition(job)
    if job.k < 1:
        raise UsageError(f"-k must be at least 1, got {job.k}")
    if job.index_parts < 1 or (job.workers is not None and job.workers < 1):
        raise UsageError("--index-parts and --workers must be at least 1")
    if job.open_set_threshold is not None and not -1.0 <= job.open_set_threshold <= 1.0:
        raise UsageError(f"--open-set-threshold is a cosine similarity in [-1, 1], got {job.open_set_threshold}")
    return load(job.index)


def check_queries(files: list[str], manifest) -> None:
    """The first query file against the index (its columns and embedding space), so that a
    mismatch is one clear error before any actor starts; workers check every file again."""
    features.columns_of(files[0], ",".join(manifest.columns))
    require_index_space(features.provenance_of(files[0]),
                        (manifest.codec, manifest.weights_digest, manifest.pooling), files[0])


def _digest(uri: str, version: str, index_digest: str, settings: dict) -> str:
    text = json.dumps([uri, version, index_digest, settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _done(location: storage.Location) -> dict[str, dict]:
    return {record["part"]: record for record in storage.read_json_folder(location.join(DONE_FOLDER))}


def sweep(job: SweepJob, log=None) -> SweepSummary:
    """Attribute every query file of ``job`` into its date partition; one sweep per partition at a time."""
    manifest = check(job)
    check_queries(features.embedding_files(job.queries), manifest)
    location = partition(job)
    with lock.hold(location, "sweep") as held:
        return _sweep(job, location, manifest, log or stage_log(job.quiet), held)


def _sweep(job: SweepJob, location: storage.Location, manifest, log, held: lock.Held) -> SweepSummary:
    import ray

    from latentsweep.cluster import connect, cpus_and_gpus, quiet_data_context, thread_env
    from latentsweep.index.manifest import sha256, version_uri

    started = time.monotonic()
    summary = SweepSummary(location.uri)
    # every actor loads this version, even if a rebuild switches INDEX/manifest.json mid-sweep
    pinned = version_uri(job.index, manifest)
    index_digest = sha256(manifest.to_json().encode())
    settings = {"k": job.k, "weighted": job.weighted, "open_set_threshold": job.open_set_threshold}
    files = features.embedding_files(job.queries)
    parts = [(uri, part_name(uri), _digest(uri, storage.info(uri).version, index_digest, settings)) for uri in files]
    if job.overwrite:
        for info in list(storage.list_files(location, missing_ok=True)):
            if not lock.is_lock_file(info.uri):
                storage.delete(info.uri)
    done = _done(location)
    todo = [p for p in parts if done.get(p[1], {}).get("digest") != p[2]]
    summary.parts, summary.parts_already_done = len(parts), len(parts) - len(todo)
    if todo:
        resources = connect(job.address, quiet=job.quiet)
        cpus, gpus = cpus_and_gpus(resources)
        size = min(job.workers or (gpus or max(1, cpus // 2)), len(todo))
        quiet_data_context()
        from latentsweep.query.actor import pool_plan, start_parts

        index_parts = (start_parts(pinned, job.index_parts, num_gpus=1 if gpus else 0, k=job.k, log=log)
                       if job.index_parts > 1 else None)
        # memory= per actor from the manifest (placement.engine_memory); no more actors than memory holds
        memory, size = pool_plan(manifest, size, not index_parts, gpus, job.k, parts=job.index_parts, log=log)
        threads = max(1, cpus // size)  # each actor searches with its share of the cores
        log(f"sweep: {len(todo)} of {len(parts)} query files to attribute with {size} query actors"
            + (f" over {len(index_parts)} index parts" if index_parts else ""))
        dataset = ray.data.from_items([{"uri": u, "part": n, "digest": d} for u, n, d in todo],
                                      override_num_blocks=len(todo))
        dataset = dataset.map_batches(
            SweepWorker, fn_constructor_kwargs={"index_uri": pinned, "settings": settings,
                                                "partition_uri": location.uri, "parts": index_parts},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=1 if gpus and not index_parts else 0,  # with parts, the part actors hold the GPUs
            num_cpus=1 if gpus else min(1.0, max(0.5, cpus / size)), runtime_env=thread_env(threads), memory=memory)
        threading.Thread(target=report.warm_up, daemon=True).start()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            held.check()  # a run that lost its lease stops here
            log(f"sweep: attributed {int(batch['rows'].sum())} queries ({', '.join(batch['part'])})")
        for actor in index_parts or []:
            ray.kill(actor)
    else:
        log(f"sweep: all {len(parts)} query files of {location.uri} are already attributed; nothing to do")
    _finish(location, parts, manifest, job, summary, started)  # fills the timing fields too
    return summary


def _finish(location: storage.Location, parts: list, manifest, job: SweepJob, summary: SweepSummary,
            started: float) -> None:
    """Totals and metrics over every part of the partition, the report, then ``_SUCCESS.json`` with
    checksums, the summary (timing included: measured up to this record) and the provenance."""
    from latentsweep.index.manifest import sha256

    listing, tables = [], []
    for _, name, _ in parts:  # result parts only: the report is rendered from them below
        uri = location.join(f"{name}.parquet")
        data = storage.read_bytes(uri)
        table = storage.parse_table(data, uri)
        schema.check(table.schema, "results", uri.uri)
        listing.append({"file": f"{name}.parquet", "bytes": len(data), "sha256": sha256(data), "rows": table.num_rows})
        tables.append(table)
    results = pa.concat_tables(tables) if tables else schema.RESULT_SCHEMA.empty_table()
    summary.queries = results.num_rows
    summary.unknown = sum(results.column("unknown").to_pylist())
    summary.attributed = summary.queries - summary.unknown
    labelled = results.filter(results.column("label").is_valid())  # NULL label: not scored
    summary.labelled = labelled.num_rows
    if labelled.num_rows:
        labels = labelled.column("label").to_pylist()
        rows = metrics.per_queries(labels, labelled.column("neighbor_labels").to_pylist(),
                                   [manifest.labels.get(label, 0) for label in labels], manifest.families, job.k,
                                   predicted=labelled.column("predicted_label").to_pylist())
        summary.metrics = metrics.summarise(labels, rows, manifest.families)
        summary.metrics["map_truncated_at"] = job.k
    provenance = _provenance(location, manifest, job)
    page = report.render(results, asdict(summary), provenance, manifest.families)
    storage.write_bytes(location.join(REPORT), page)
    listing.append({"file": REPORT, "bytes": len(page), "sha256": sha256(page), "rows": 0})
    summary.seconds = round(time.monotonic() - started, 2)
    summary.queries_per_second = round(summary.queries / summary.seconds, 1) if summary.seconds else 0.0
    record = {"parts": listing, "summary": asdict(summary), "provenance": provenance}
    storage.write_bytes(location.join(SUCCESS), json.dumps(record, indent=2).encode())


def _provenance(location: storage.Location, manifest, job: SweepJob) -> dict:
    """What made this night's results: the index (URI and version: its manifest's creation time and
    SHA-256), its features, pooling and codec weights, and the vote's settings (JSON-serialisable)."""
    from importlib.metadata import PackageNotFoundError, version

    from latentsweep.index.manifest import sha256

    try:
        release = version("latentsweep")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = None

    return {"index": storage.Location.parse(job.index).uri, "index_created": manifest.created,
            "index_manifest_sha256": sha256(manifest.to_json().encode()), "index_type": manifest.index_spec,
            "index_vectors": manifest.vectors, "index_labels": len(manifest.labels),
            "features": manifest.features, "columns": list(manifest.columns), "pooling": manifest.pooling,
            "codec": manifest.codec, "weights_digest": manifest.weights_digest,
            "k": job.k, "weighted": job.weighted, "open_set_threshold": job.open_set_threshold,
            "date": job.date, "partition": location.uri, "latentsweep": release,
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
