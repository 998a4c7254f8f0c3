"""Bulk attribution sweeps: every query file streams through a pool of query actors.

Each input embeddings file becomes one result part, named from its URI, in a date partition
(``OUT/date=YYYY-MM-DD/part-<hash>-<name>.parquet``), written atomically with a done marker; a rerun
of the same night skips parts already attributed with the same index and settings. The partition
ends with ``_SUCCESS.json`` listing every part with its size and SHA-256, which ``pull`` verifies.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from latentsweep import lock, schema, storage
from latentsweep.console import stage_log
from latentsweep.errors import UsageError
from latentsweep.index import reader
from latentsweep.decision import calibration
from latentsweep.query import metrics, report
from latentsweep.query.attribution import Attribution
from latentsweep.query.verdict import ATTRIBUTE_AT
from latentsweep.schema import DONE_FOLDER

QUEUED = 2          # calls waiting on each query actor at once
ACTOR_RESTARTS = 3  # a query actor whose process dies is restarted and its calls retried this often
SUCCESS = "_SUCCESS.json"
AGGREGATES = "_aggregates"  # per part: its report candidates and counts (write_aggregate)
AGGREGATE_KEY = "latentsweep.aggregate"
REVIEWS = "_review"  # per part: its rows to route to an expert, joined into REVIEW at the end
REVIEW = "review.parquet"
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
    allow_partial: bool = False  # take query ingests that have not finished their plan (what is missing is said)
    evidence: list[str] = field(default_factory=list)  # indices of other descriptor families that must agree
    attribute_at: float = ATTRIBUTE_AT  # the calibrated confidence a vote needs to be `attributed`


@dataclass
class SweepSummary:
    out: str
    queries: int = 0
    attributed: int = 0  # verdicts (query/verdict.py)
    uncertain: int = 0
    unknown: int = 0
    conflicts: int = 0   # rows whose file declares an origin a confident attribution contradicts
    review: int = 0      # rows to route to an expert: uncertain or in conflict (review.parquet)
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
    """A query actor of the sweep: attributes query files, one result part each.

    The index is loaded by the first call, not by the constructor: an error raised while loading (a
    corrupt shard) then reaches the driver as itself, where Ray keeps only the message of an error
    raised in an actor's constructor; and an actor restarted after its process died loads the same
    pinned version when its retried call arrives."""

    def __init__(self, index_uri: str, settings: dict, partition_uri: str, parts: list | None = None,
                 threads: int = 1, evidence: list[str] | None = None):
        self.index_uri, self.settings, self.parts, self.threads = index_uri, settings, parts, threads
        self.evidence = evidence or []
        self.partition = storage.Location.parse(partition_uri)
        self.engine = None

    def _load(self) -> None:
        from latentsweep.query.actor import QueryEngine, set_threads

        set_threads(self.threads)
        self.engine = QueryEngine(self.index_uri, parts=self.parts, k=self.settings["k"])  # k: GPU or CPU
        evidence = [QueryEngine(uri, use_gpu=False, k=self.settings["k"]) for uri in self.evidence]
        self.attribution = Attribution(self.engine, self.settings, evidence)
        self.expected = [(engine.manifest.codec, engine.manifest.weights_digest, engine.manifest.pooling)
                         for engine in [self.engine, *evidence]]

    def attribute(self, uri: str, name: str, digest: str) -> int:
        """Attribute one query file: its result part, then its done marker; returns its rows."""
        if self.engine is None:
            self._load()
        rows = reader.read_queries(uri, self.attribution.columns())
        for expected in self.expected:
            require_index_space(reader.provenance_in(rows), expected, uri)
        table = self.attribution.results(rows, uri)
        data = storage.table_bytes(table)
        storage.write_bytes(self.partition.join(f"{name}.parquet"), data)
        write_aggregate(self.partition, name, table, data, self.engine.manifest, self.settings["k"])
        unknown = int(np.count_nonzero(table.column("unknown").to_numpy()))
        marker = {"part": name, "digest": digest, "rows": table.num_rows, "unknown": unknown}
        storage.write_bytes(self.partition.join(DONE_FOLDER, f"{name}.json"), json.dumps(marker).encode())
        return table.num_rows


def require_index_space(provenance: set, expected: tuple[str, str, str], uri: str) -> None:
    """Refuse queries embedded with another codec, weights or pooling than the index."""
    if provenance and provenance != {expected}:
        found = reader.check_provenance(provenance, uri)
        raise UsageError(f"{uri} was embedded with codec={found[0]} weights={found[1][:12]} "
                         f"pooling={found[2]}, the index with {expected[0]} weights={expected[1][:12]} "
                         f"pooling={expected[2]}: embed the queries with the index's settings")


def check(job: SweepJob):
    """Refuse bad settings and a missing index before anything is ingested, claimed or started;
    returns the index manifest. A job without --open-set-threshold takes the index's calibrated one."""
    from latentsweep.index.manifest import load

    partition(job)
    if job.k < 1:
        raise UsageError(f"-k must be at least 1, got {job.k}")
    if job.index_parts < 1 or (job.workers is not None and job.workers < 1):
        raise UsageError("--index-parts and --workers must be at least 1")
    if job.open_set_threshold is not None and not -1.0 <= job.open_set_threshold <= 1.0:
        raise UsageError(f"--open-set-threshold is a cosine similarity in [-1, 1], got {job.open_set_threshold}")
    if not 0.0 <= job.attribute_at <= 1.0:
        raise UsageError(f"--attribute-at is a probability in [0, 1], got {job.attribute_at}")
    if job.evidence and job.index_parts > 1:
        raise UsageError("--evidence indices are searched by each query actor: use them with --index-parts 1")
    manifest = load(job.index)
    for uri in job.evidence:  # a missing or damaged one: one line, before anything is claimed
        load(uri)
    if job.open_set_threshold is None and manifest.open_set_threshold is not None:
        # the threshold the index calibrated at build (None before), a float32 similarity: within
        # [-1, 1] up to rounding, which must not fail the check above when the job is checked again
        job.open_set_threshold = min(1.0, max(-1.0, manifest.open_set_threshold))
    return manifest


def check_queries(files: list[str], manifest, evidence: list | None = None) -> None:
    """The first query file against the index and the ``evidence`` indices' manifests (its columns and
    embedding space), so that a mismatch is one clear error before any actor starts; workers check
    every file again."""
    for each in [manifest, *(evidence or [])]:
        reader.columns_of(files[0], ",".join(each.columns))
        require_index_space(reader.provenance_of(files[0]), (each.codec, each.weights_digest, each.pooling), files[0])


def _digest(uri: str, version: str, index_digest: str, settings: dict) -> str:
    text = json.dumps([uri, version, index_digest, settings, schema.VERSIONS["results"]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _done(location: storage.Location) -> dict[str, dict]:
    return {record["part"]: record for record in storage.read_json_folder(location.join(DONE_FOLDER))}


def sweep(job: SweepJob, log=None) -> SweepSummary:
    """Attribute every query file of ``job`` into its date partition; one sweep per partition at a time."""
    manifest = check(job)
    files = reader.embedding_files(job.queries, job.allow_partial, log or stage_log(job.quiet))
    evidence = _evidence(job)  # loaded (and verified) once for the whole sweep
    check_queries(files, manifest, evidence)
    location = partition(job)
    with lock.hold(location, "sweep") as held:
        return _sweep(job, files, location, manifest, evidence, log or stage_log(job.quiet), held)


def _sweep(job: SweepJob, files: list[str], location: storage.Location, manifest, evidence: list, log,
           held: lock.Held) -> SweepSummary:
    started = time.monotonic()
    summary = SweepSummary(location.uri)
    storage.delete(location.join(SUCCESS))  # the partition is not complete again until this run's record
    parts, todo = _plan(job, files, location, manifest, evidence)
    summary.parts, summary.parts_already_done = len(parts), len(parts) - len(todo)
    if todo:
        _attribute(job, todo, len(parts), location, manifest, evidence, log, held)
    else:
        log(f"sweep: all {len(parts)} query files of {location.uri} are already attributed; nothing to do")
    _finish(location, parts, manifest, job, summary, started)  # fills the timing fields too
    return summary


def _plan(job: SweepJob, files: list[str], location: storage.Location, manifest,
          evidence: list) -> tuple[list, list]:
    """Every query file as (uri, part name, digest), and those without a done marker of that digest
    (the digest covers the file's version, the index and the settings). The versions are asked for in
    parallel: one request each on S3."""
    from concurrent.futures import ThreadPoolExecutor

    from latentsweep.index.manifest import sha256

    index_digest = sha256("".join(each.to_json() for each in [manifest, *evidence]).encode())
    with ThreadPoolExecutor(storage.LISTING_THREADS) as pool:
        versions = list(pool.map(lambda uri: storage.info(uri).version, files))
    parts = [(uri, part_name(uri), _digest(uri, version, index_digest, _settings(job)))
             for uri, version in zip(files, versions)]
    if job.overwrite:
        storage.delete_prefix(location, keep=lambda info: lock.is_lock_file(info.uri))
    _remove_stale(location, {name for _, name, _ in parts})
    done = _done(location)
    return parts, [p for p in parts if done.get(p[1], {}).get("digest") != p[2]]


def _remove_stale(location: storage.Location, current: set[str]) -> None:
    """Result parts (and their done markers) of query files that are no longer in the night: the
    partition holds exactly the parts its ``_SUCCESS.json`` lists."""
    def stale(info: storage.FileInfo) -> bool:
        folder, _, name = location.relative(info.uri).rpartition("/")
        stem = name.rsplit(".", 1)[0]
        return stem.startswith("part-") and folder in ("", DONE_FOLDER, AGGREGATES, REVIEWS) and stem not in current

    storage.delete_prefix(location, keep=lambda info: not stale(info))


def _evidence(job: SweepJob) -> list:
    from latentsweep.index.manifest import load

    return [load(uri) for uri in job.evidence]


def _settings(job: SweepJob) -> dict:
    return {"k": job.k, "weighted": job.weighted, "open_set_threshold": job.open_set_threshold,
            "attribute_at": job.attribute_at}


def _attribute(job: SweepJob, todo: list, total: int, location: storage.Location, manifest, evidence: list,
               log, held: lock.Held) -> None:
    """Start the query actors (and index parts), keep every actor busy until each part of ``todo`` is
    written, then end them. Plain actors, not a Ray Data pipeline: no executor to start, no dataset
    blocks through the object store, no runtime env (a fresh worker process) per actor."""
    import ray

    from latentsweep.cluster import connect, nodes
    from latentsweep.index.manifest import version_uri
    from latentsweep.query.actor import gpu_requests, pool_plan, start_parts

    connect(job.address, quiet=job.quiet)
    present = nodes()  # each actor must fit one node: pool_plan and start_parts refuse what none holds
    cpus = max(1, int(sum(node.cpus for node in present)))
    gpus = int(sum(node.gpus for node in present))
    pinned = version_uri(job.index, manifest)  # every actor loads this version, even if INDEX is rebuilt meanwhile
    # memory= per actor from the manifest (placement.engine_memory), refused before any actor starts when no
    # node holds it; no more actors than the cluster's memory holds
    memory, size = pool_plan(manifest, min(job.workers or gpus or cpus, len(todo)), job.index_parts <= 1, gpus,
                             job.k, parts=job.index_parts, log=log, evidence=evidence)
    index_parts = (start_parts(pinned, job.index_parts, gpus=gpus, k=job.k, log=log)
                   if job.index_parts > 1 else [])
    gpu_plan = gpu_requests(manifest, job.k, gpus, parts=len(index_parts), actors=size)  # parts hold the GPUs
    actors: list = []
    try:
        log(f"sweep: {len(todo)} of {total} query files to attribute with {size} query actors"
            + (f" over {len(index_parts)} index parts" if index_parts else f"; {gpu_plan.reason}"))
        if calibration.table_key(job.k, job.weighted) not in manifest.confidence:
            log(f"sweep: confidence is NULL: the index calibrated its votes for k <= 10 at build, not for "
                f"k={job.k}{' weighted' if job.weighted else ''} (indices built before calibration have none)")
        worker = ray.remote(SweepWorker)
        options = dict(num_cpus=_actor_cpus(cpus, size, gpus, len(index_parts)), memory=memory,
                       max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        threads = max(1, cpus // size)  # each actor searches with its share of the cores
        actors = [worker.options(num_gpus=num_gpus, **options)
                  .remote(pinned, _settings(job), location.uri, index_parts or None, threads,
                          [version_uri(uri, each) for uri, each in zip(job.evidence, evidence)])
                  for num_gpus in gpu_plan.actors]
        threading.Thread(target=report.warm_up, daemon=True).start()  # the report's imports, while actors load
        for rows, name in _dispatch(actors, todo):
            held.check()  # a run that lost its lease stops here
            log(f"sweep: attributed {rows} queries ({name})")
    finally:
        for actor in actors + index_parts:
            ray.kill(actor)


def _actor_cpus(cpus: int, size: int, gpus: int, parts: int) -> float:
    """CPUs a query actor reserves: one on GPU nodes; on CPU nodes its share of what the index parts
    leave, at most one (an actor alone searches with more threads than it reserves)."""
    from latentsweep.query.actor import PART_CPUS

    return 1 if gpus else max(PART_CPUS, min(1.0, (cpus - PART_CPUS * parts) / size))


def _dispatch(actors: list, todo: list):
    """Yields (rows, part name) as parts are written. Each actor holds up to :data:`QUEUED` calls, so
    its next part is already there when it finishes one (no idle round trip to the driver); a part
    goes to the actor that just finished one."""
    import ray

    waiting, running = collections.deque(todo), {}

    def submit(actor) -> None:
        uri, name, digest = waiting.popleft()
        running[actor.attribute.remote(uri, name, digest)] = (actor, name)

    for _ in range(QUEUED):
        for actor in actors:
            if waiting:
                submit(actor)
    while running:
        [ref], _ = ray.wait(list(running))
        actor, name = running.pop(ref)
        rows = ray.get(ref)
        if waiting:
            submit(actor)
        yield rows, name


def write_aggregate(partition: storage.Location, name: str, table: pa.Table, data: bytes, manifest, k: int) -> dict:
    """What the partition's summary, metrics and report need of one result part (``data``, the bytes of
    ``table``), computed where the part is written and stored beside it (``_aggregates/<part>.parquet``):
    its report :func:`~latentsweep.query.report.candidates`, with, in the file's metadata, its size,
    SHA-256 and counts, the queries per predicted label and the metrics' tally of its labelled queries."""
    from latentsweep.index.manifest import sha256

    labelled = table.filter(table.column("label").is_valid())  # NULL label: not scored
    tally = None
    if labelled.num_rows:
        labels = labelled.column("label").to_pylist()
        rows = metrics.per_queries(labels, labelled.column("neighbor_labels").to_pylist(),
                                   [manifest.labels.get(label, 0) for label in labels], manifest.families, k,
                                   predicted=labelled.column("predicted_label").to_pylist())
        tally = metrics.tally(labels, rows)
    review = table.filter(report.is_review(table))
    verdicts = table.column("verdict").value_counts().to_pylist()
    stats = {"file": f"{name}.parquet", "bytes": len(data), "sha256": sha256(data), "rows": table.num_rows,
             "verdicts": {item["values"]: item["counts"] for item in verdicts},
             "conflicts": table.num_rows - table.column("declared_conflict").null_count, "review": review.num_rows,
             "labelled": labelled.num_rows,
             "predicted": report.predicted_counts(table.column("predicted_label").to_pylist()), "tally": tally}
    storage.write_table(partition.join(REVIEWS, f"{name}.parquet"), review)
    storage.write_table(partition.join(AGGREGATES, f"{name}.parquet"), report.candidates(table),
                        metadata={AGGREGATE_KEY: json.dumps(stats)})
    return stats


def _aggregate(location: storage.Location, name: str, manifest, k: int) -> tuple[dict, pa.Table]:
    """A part's aggregate, read; made from the part when it has none (a partition of an older version)."""
    uri = location.join(AGGREGATES, f"{name}.parquet")
    if not storage.exists(uri):
        data = storage.read_bytes(location.join(f"{name}.parquet"))
        table = storage.parse_table(data, location.join(f"{name}.parquet"))
        schema.check(table.schema, "results", location.join(f"{name}.parquet").uri)
        write_aggregate(location, name, table, data, manifest, k)
    table = storage.parse_table(storage.read_bytes(uri), uri)  # one file: no dataset discovery of date=...
    return json.loads(table.schema.metadata[AGGREGATE_KEY.encode()]), table


def _finish(location: storage.Location, parts: list, manifest, job: SweepJob, summary: SweepSummary,
            started: float) -> None:
    """Totals and metrics of the partition added up from its parts' aggregates, the report from their
    candidates (reduced as they come: the driver holds O(parts) numbers and a bounded table, never the
    night's results), then ``_SUCCESS.json`` with checksums, the summary (timing included: measured up
    to this record) and the provenance."""
    from concurrent.futures import ThreadPoolExecutor

    from latentsweep.index.manifest import sha256

    listing, predicted, tally = [], {}, None
    shown = report.candidates(schema.RESULT_SCHEMA.empty_table())
    window = storage.LISTING_THREADS  # aggregates read in flight: a window, never every part's at once
    with ThreadPoolExecutor(window) as pool:
        read = (item for start in range(0, len(parts), window)
                for item in pool.map(lambda part: _aggregate(location, part[1], manifest, job.k),
                                     parts[start:start + window]))
        for stats, table in read:
            listing.append({key: stats[key] for key in ("file", "bytes", "sha256", "rows")})
            summary.queries += stats["rows"]
            for verdict, count in stats["verdicts"].items():
                setattr(summary, verdict, getattr(summary, verdict) + count)
            summary.conflicts += stats["conflicts"]
            summary.review += stats["review"]
            summary.labelled += stats["labelled"]
            for label, count in stats["predicted"].items():
                predicted[label] = predicted.get(label, 0) + count
            if stats["tally"]:
                tally = stats["tally"] if tally is None else metrics.merge_tallies(tally, stats["tally"])
            shown = report.candidates(pa.concat_tables([shown, table]))
    listing.append(_join_reviews(location, parts))
    if tally:
        summary.metrics = metrics.summarise_tally(tally, manifest.families)
        summary.metrics["map_truncated_at"] = job.k
    provenance = _provenance(location, manifest, job)
    page = report.render(shown, asdict(summary), provenance, manifest.families, predicted=dict(sorted(predicted.items())))
    storage.write_bytes(location.join(REPORT), page)
    listing.append({"file": REPORT, "bytes": len(page), "sha256": sha256(page), "rows": 0})
    summary.seconds = round(time.monotonic() - started, 2)
    summary.queries_per_second = round(summary.queries / summary.seconds, 1) if summary.seconds else 0.0
    record = {"parts": listing, "summary": asdict(summary), "provenance": provenance}
    storage.write_bytes(location.join(SUCCESS), json.dumps(record, indent=2).encode())


def _join_reviews(location: storage.Location, parts: list) -> dict:
    """The parts' review rows joined into one ``review.parquet``, a part at a time through a local
    temporary file (the driver holds one part's review rows, never the night's); its entry for
    ``_SUCCESS.json``."""
    import tempfile

    import pyarrow.parquet as pq

    rows = 0
    with tempfile.TemporaryDirectory(prefix="latentsweep-review-") as folder:
        path = f"{folder}/{REVIEW}"
        with pq.ParquetWriter(path, schema.RESULT_SCHEMA, compression="zstd") as writer:
            for _, name, _ in parts:
                table = storage.read_table(location.join(REVIEWS, f"{name}.parquet"))
                writer.write_table(table.cast(schema.RESULT_SCHEMA))
                rows += table.num_rows
        digest = hashlib.sha256()
        with open(path, "rb") as written:
            while chunk := written.read(1 << 20):
                digest.update(chunk)
        size = os.path.getsize(path)
        storage.upload(path, location.join(REVIEW))
    return {"file": REVIEW, "bytes": size, "sha256": digest.hexdigest(), "rows": rows}


def _provenance(location: storage.Location, manifest, job: SweepJob) -> dict:
    """What made this night's results: the index (URI and version: its manifest's creation time and
    SHA-256), its features, pooling and codec weights, and the vote's settings (JSON-serialisable)."""
    from importlib.metadata import PackageNotFoundError, version

    from latentsweep.index.manifest import sha256

    try:
        release = version("latentsweep")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = None
    table = manifest.confidence.get(calibration.table_key(job.k, job.weighted))
    return {"index": storage.Location.parse(job.index).uri, "index_created": manifest.created,
            "index_manifest_sha256": sha256(manifest.to_json().encode()), "index_type": manifest.index_spec,
            "index_vectors": manifest.vectors, "index_labels": len(manifest.labels),
            "features": manifest.features, "columns": list(manifest.columns), "pooling": manifest.pooling,
            "codec": manifest.codec, "weights_digest": manifest.weights_digest,
            "k": job.k, "weighted": job.weighted, "open_set_threshold": job.open_set_threshold,
            "confidence_calibrated_on": sum(table["queries"]) if table else None,
            "date": job.date, "partition": location.uri, "latentsweep": release,
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
