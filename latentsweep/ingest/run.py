"""The ingest driver, a control plane: list -> plan -> hand shards to the worker pool -> count.

The driver lists the source (an Arrow table), plans it against the previous plan (stable shards),
stores the plan, and sends each pending shard's ``(shard, digest, part, row group)`` to a pool of
:class:`~latentsweep.ingest.worker.ShardWorker` actors, which fetch, decode, encode and write their
own shard files and markers. What comes back is counts: the driver's memory is O(shards) beyond the
columnar listing, never a vector or a Python object per item.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep import lock, storage
from latentsweep.cluster import MAX_GPU_REQUEST, WAIT_FOR_GPUS_SECONDS
from latentsweep.codec.settings import EmbedSettings
from latentsweep.console import stage_log
from latentsweep.errors import JobFailed, UsageError
from latentsweep.ingest import augment, manifest, plan as planning
from latentsweep.ingest.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from latentsweep.ingest.sources import Listing, is_manifest, list_source, require_manifest
from latentsweep.ingest.write import DONE_INDEX, done_records, shard_files, write_done_index
from latentsweep.resources import DEVICES
from latentsweep.schema import DESCRIPTORS, DONE_FOLDER, INGEST_COMPLETE_FILE, VERSIONS

PLAN_VERSION = 2  # stable shards (manifest parts + shards.parquet); version 1 re-hashed every run
MAX_BLOCKS = 20_000  # Ray Data blocks of the shard list: one shard each up to this many
ACTOR_RESTARTS = 3  # an encoder actor that exits on an accelerator fault is restarted, its shard retried, this often


@dataclass
class IngestJob:
    source: str
    out: str
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    shard_size: int = 256
    labels_from_folders: bool = False
    families: dict[str, str] = field(default_factory=dict)
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    workers: int | None = None  # encoder actors; default from the cluster's resources
    wait_for_gpus: float = WAIT_FOR_GPUS_SECONDS  # bound on the wait for GPU nodes an autoscaler starts
    overwrite: bool = False
    quiet: bool = False
    address: str | None = None
    check_versions: bool = False  # manifest entries without a version: stat or HEAD each (ingest/sources.py)
    augment: str = "standard"  # processed copies of each labelled image: "standard" or "none" (ingest/augment.py)


@dataclass
class IngestSummary:
    source: str
    out: str
    inputs: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    collisions: int = 0  # URIs whose 64-bit id another URI has: given an alternative id (ingest/plan.py)
    copies: int = 0      # of the inputs, processed copies of labelled images (--augment; ingest/augment.py)
    embedded: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    skipped_unsupported: int = 0
    shards: int = 0
    shards_already_done: int = 0
    shards_processed: int = 0
    items_encoded: int = 0  # fetched and encoded by this run (rows of unchanged items are kept)
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0
    device: str = ""
    images_per_node: dict[str, int] = field(default_factory=dict)  # this run's encoded items per Ray node
    gpus_per_node: dict[str, list[str]] = field(default_factory=dict)  # the GPU ids Ray gave the encoders, per node

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def check(job: IngestJob) -> None:
    """Refuse bad settings before anything is read or written (a bad value must not claim ``out``)."""
    from latentsweep.codec.layout import column_dims

    column_dims(job.embed.feature_set, job.embed.pooling)
    if job.embed.device not in DEVICES:
        raise UsageError(f"unknown --device {job.embed.device!r}: choose one of {', '.join(DEVICES)}")
    for name in ("shard_size", "max_pixels", "min_side"):
        if getattr(job, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(job, name)}")
    if job.embed.max_batch < 1 or (job.workers is not None and job.workers < 1):
        raise UsageError("--batch-size and --workers must be at least 1")
    if job.embed.half and job.embed.device == "cpu":
        raise UsageError("--half is fp16 inference on GPUs, and --device cpu runs on the CPU")
    if job.wait_for_gpus < 0:
        raise UsageError(f"--wait-for-gpus is a number of seconds, got {job.wait_for_gpus}")
    augment.check(job.augment)
    if is_manifest(job.source):
        require_manifest(job.source)  # before a cluster is joined: a missing manifest is one line at once


def _plan_settings(job: IngestJob, weights_digest: str) -> dict:
    return {"codec": "jpegai-bop", "schema": VERSIONS["embeddings"], "weights_digest": weights_digest,
            "feature_set": job.embed.feature_set,
            "pooling": job.embed.pooling, "half": job.embed.half, "max_pixels": job.max_pixels,
            "min_side": job.min_side,
            "descriptors": {name: version for name, (_, version) in DESCRIPTORS.items()} if job.embed.descriptors else {}}


def _check_previous(out: storage.Location, settings: dict, shard_size: int, overwrite: bool) -> None:
    """An output holds one layout: other settings or another shard size are refused (``--overwrite``
    redoes everything), so every row of ``out`` lives in one embedding space."""
    previous = out.join("plan.json")
    if overwrite or not storage.exists(previous):
        return
    recorded = json.loads(storage.read_bytes(previous))
    if recorded.get("plan_version") != PLAN_VERSION:
        raise UsageError(f"{out.uri} holds an ingest of an older latentsweep (plan version "
                         f"{recorded.get('plan_version', 1)}): use --overwrite to redo it, or another --out")
    old = recorded.get("settings", {})
    if old != settings:
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        raise UsageError(f"{out.uri} holds an ingest made with other settings ({', '.join(changed)}): "
                         f"use --overwrite to redo it, or another --out")
    if recorded.get("shard_size") != shard_size:
        raise UsageError(f"{out.uri} is sharded {recorded.get('shard_size')} items a shard, not {shard_size}: "
                         f"keep --shard-size {recorded.get('shard_size')} (shards are stable), or --overwrite "
                         f"to re-shard and redo everything")


def _space(job: IngestJob) -> tuple[str, str | None]:
    """The job's embedding space: (codec weights digest, adapters digest or None), each file checked and
    hashed once a run."""
    from latentsweep.codec import weights

    return weights.digest(job.embed.weights), weights.adapters_digest(job.embed.adapters)


HALF_SUFFIX = "+fp16"


def _settings(job: IngestJob, space: tuple[str, str | None]) -> dict:
    """The plan's settings; the digest every row carries names the embedding space: the codec weights,
    the adapters, and fp16 inference (its pooled values differ from fp32 beyond the CPU/GPU tolerance,
    docs/performance.md), so that an index and its queries are compared within one space."""
    from latentsweep.codec import weights

    return _plan_settings(job, weights.combined_digest(*space) + (HALF_SUFFIX if job.embed.half else ""))


SCRATCH_PREFIX = "latentsweep-plan-"
SCRATCH_HOLDER = ".held"
SCRATCH_GRACE_SECONDS = 60  # a folder made this moment has no holder file yet


@contextmanager
def _scratch() -> Iterator[str]:
    """The local folder the plan spills to while it is made (about 75 bytes an item, LZ4). It is held by
    an exclusive ``flock`` on a file inside for as long as the plan is made; the kernel releases that
    lock when the process ends however it ends (SIGKILL too), and it is seen across PID namespaces
    (containers sharing /tmp), where a process id is not. So the next planner removes exactly the
    folders nobody holds, and never a live run's."""
    import fcntl
    import shutil

    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        if not _held(folder):
            shutil.rmtree(folder, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=SCRATCH_PREFIX)
    try:
        with open(os.path.join(folder, SCRATCH_HOLDER), "w") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _held(folder: Path) -> bool:
    """Whether a live planner holds ``folder`` (see :func:`_scratch`)."""
    import fcntl

    try:
        holder = open(folder / SCRATCH_HOLDER)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < SCRATCH_GRACE_SECONDS
        except FileNotFoundError:  # removed meanwhile
            return True
    with holder:
        try:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def _list(job: IngestJob, scratch: str, space: tuple[str, str | None]) -> tuple[Listing, planning.Spill, int]:
    """The listing (its skipped files), its rows spilled by id range into ``scratch`` with the processed
    copies of its labelled images, and how many copies those are; a source of bitstreams alone is
    checked against the job's ``space`` (:func:`_space`)."""
    # The driver plans with the system allocator: Arrow's default (mimalloc) keeps freed pages, ~35 MB
    # more at the peak of a 1M-entry plan (benchmarks/bench_scale.py); workers keep the default.
    pa.set_memory_pool(pa.system_memory_pool())
    listing = list_source(job.source, job.labels_from_folders, job.families, job.check_versions)
    augmented = augment.WithCopies(listing.batches, job.augment)
    listed = planning.spill_listing(augmented, scratch)
    if not listed.rows:
        raise UsageError(f"no images, .pt latents or .jai bitstreams found in {job.source}")
    if listed.bitstreams == listed.rows:  # bitstreams only: every item would be an error row
        from latentsweep.bitstream.space import missing_columns, missing_columns_reason
        from latentsweep.codec.layout import column_dims

        missing = missing_columns(column_dims(job.embed.feature_set, job.embed.pooling))
        if missing:
            raise UsageError(f"every input of {job.source} is a .jai bitstream, and "
                             f"{missing_columns_reason(job.embed.feature_set, missing)}")
        mismatch = _space_mismatch(listed.first_bitstream, space)
        if mismatch:
            raise UsageError(f"every input of {job.source} is a .jai bitstream, and the first, "
                             f"{listed.first_bitstream}, was {mismatch}")
    return listing, listed, augmented.made


def _space_mismatch(uri: str, space: tuple[str, str | None]) -> str | None:
    """Why the bitstream ``uri`` was coded in another embedding space than ``space``, or None (also for a
    damaged file: that is its own error row, not the job's settings)."""
    from latentsweep.bitstream import container
    from latentsweep.bitstream.space import provenance_mismatch

    try:
        bitstream = container.unpack(storage.read_bytes(uri))
    except container.BitstreamError:
        return None
    base, adapters = space
    return provenance_mismatch(bitstream, base, container.digest_id(adapters) if adapters else b"")


def dry_run(job: IngestJob) -> dict:
    """What ``run`` would do, without writing anything: counts of the listing against the stored plan, and
    ``versions``: where the items' versions (what makes a replaced file fresh) come from
    (:attr:`latentsweep.ingest.sources.Listing.versions`)."""
    check(job)
    out = storage.Location.parse(job.out)
    space = _space(job)
    with _scratch() as scratch:
        listing, listed, copies = _list(job, scratch, space)
        plan, _ = _plan(job, out, listed, _settings(job, space), scratch)
    done = {} if job.overwrite else _digests(done_records(out))
    pending = plan.pending_mask(done).to_numpy(zero_copy_only=False)
    shard_ids, sizes = plan.shards.column("shard").to_numpy(), plan.shards.column("items").to_numpy()
    # a pending shard with earlier output keeps its unchanged items' rows: it encodes only the fresh ones
    encode = np.where(np.isin(shard_ids, list(done)), plan.shards.column("fresh").to_numpy(), sizes)
    return {**plan.counts, "copies": copies, "skipped_unsupported": listing.skipped,
            "shards_total": plan.shards.num_rows,
            "shards_to_process": int(pending.sum()), "items_to_process": int(sizes[pending].sum()),
            "items_to_encode": int(encode[pending].sum()), "shards_dropped": len(plan.dropped),
            "versions": listing.versions}


def _plan(job: IngestJob, out: storage.Location, listed: planning.Spill, settings: dict, scratch: str):
    """(plan, previous shard table) of the spilled listing against what ``out`` holds (nothing with
    ``--overwrite``); refuses an output of other settings or another shard size."""
    _check_previous(out, settings, job.shard_size, job.overwrite)
    previous_items, previous_shards = ((), None) if job.overwrite else manifest.read_previous(out)
    return planning.plan(listed, job.shard_size, settings, previous_items, scratch), previous_shards


def _digests(records) -> dict[int, str]:
    return {int(record["shard_id"]): record["digest"] for record in records}


def run(job: IngestJob, log=None) -> IngestSummary:
    """Run (or resume) an ingest and return its summary; also written to ``OUT/summary.json``."""
    log = log or stage_log(job.quiet)
    started = time.monotonic()
    check(job)
    out = storage.Location.parse(job.out)
    summary = IngestSummary(job.source, out.uri)
    space = _space(job)
    choice = _join(job, out, log)
    with _scratch() as scratch:
        listing, listed, summary.copies = _list(job, scratch, space)
        summary.skipped_unsupported = listing.skipped
        settings = _settings(job, space)
        with lock.hold(out, "ingest") as held:
            storage.delete(out.join(INGEST_COMPLETE_FILE))  # readers refuse this output until it is whole again
            _plan_and_process(job, out, listed, settings, summary, log, held, scratch, choice)
            write_done_index(out)
            _mark_complete(out, summary)
            summary.seconds = round(time.monotonic() - started, 2)
            summary.images_per_second = round(summary.items_encoded / summary.seconds, 2) if summary.seconds else 0.0
            storage.write_bytes(out.join("summary.json"), json.dumps(asdict(summary), indent=2).encode())
    return summary


def _mark_complete(out: storage.Location, summary: IngestSummary) -> None:
    """Every shard of the plan is done (with or without error rows): record it against the plan's
    shard list, for readers to check (schema.INGEST_COMPLETE_FILE)."""
    import hashlib

    plan = storage.read_bytes(out.join(manifest.SHARDS_FILE))
    record = {"plan_sha256": hashlib.sha256(plan).hexdigest(), "shards": summary.shards,
              "embedded": summary.embedded, "failed": summary.failed}
    storage.write_bytes(out.join(INGEST_COMPLETE_FILE), json.dumps(record, indent=2).encode())


def _join(job: IngestJob, out: storage.Location, log):
    """Join (or start) Ray and decide the device before anything is listed or written: the first line
    says where the work runs; local paths on a cluster of several nodes are refused unless every node
    sees them."""
    from latentsweep.cluster import connect, device_choice, require_shared_io

    connect(job.address, quiet=job.quiet)
    choice = device_choice(job.embed.device)
    if job.embed.half and choice.device != "cuda":
        raise UsageError(f"--half is fp16 inference on GPUs, and this job runs on the CPU ({choice.reason})")
    log(f"ingest: {choice.reason}")
    require_shared_io(job.source, out)
    return choice


def _plan_and_process(job: IngestJob, out: storage.Location, listed: planning.Spill, settings: dict,
                      summary: IngestSummary, log, held: lock.Held, scratch: str, choice) -> None:
    """Plan against what ``out`` already holds, store the plan, and process the shards left."""
    plan, previous_shards = _plan(job, out, listed, settings, scratch)
    if job.overwrite:
        _clear(out)
    for name in ("inputs", "new", "changed", "removed", "collisions"):
        setattr(summary, name, plan.counts[name])
    stored = manifest.write(out, plan, previous_shards)
    storage.write_bytes(out.join("plan.json"), json.dumps(
        {"plan_version": PLAN_VERSION, "settings": settings, "shard_size": job.shard_size,
         "shards": stored.num_rows, "source": job.source}, indent=2).encode())
    # every item of these shards is gone: so are their rows
    storage.delete_many(location for shard in plan.dropped for location in shard_files(out, shard))
    records = {int(record["shard_id"]): record for record in done_records(out)}
    pending = plan.pending_mask(_digests(records.values()))
    todo = stored.filter(pending)
    finished = [records[shard] for shard in stored.filter(pc.invert(pending)).column("shard").to_pylist()]
    summary.shards, summary.shards_already_done = stored.num_rows, len(finished)
    errors: Counter = Counter()
    for record in finished:
        summary.embedded += record["embedded"]
        errors.update(record["errors"])
    if todo.num_rows:
        items = int(sum(todo.column("items").to_pylist()))
        log(f"ingest: {items} items in {todo.num_rows} of {stored.num_rows} shards to process "
            f"({len(finished)} already done; {plan.counts['new']} new, {plan.counts['changed']} changed, "
            f"{plan.counts['removed']} removed items)")
        _process(job, out, todo, items, settings, summary, errors, log, held, choice)
    else:
        log(f"ingest: all {stored.num_rows} shards of {out.uri} are already done; nothing to do")
    summary.errors = dict(sorted(errors.items()))


def _clear(out: storage.Location) -> None:
    for folder in (DONE_FOLDER, "embeddings", "errors", manifest.MANIFEST_FOLDER):
        storage.delete_prefix(out.join(folder))
    storage.delete_many(out.join(name) for name in (manifest.SHARDS_FILE, DONE_INDEX))


def _process(job: IngestJob, out: storage.Location, todo, items: int, settings: dict, summary: IngestSummary,
             errors: Counter, log, held: lock.Held, choice) -> None:
    from latentsweep.cluster import encoder_pool, release_request

    layout = encoder_pool(choice, job.workers, min(todo.num_rows, MAX_GPU_REQUEST), job.wait_for_gpus, log)
    try:
        _encode(job, out, todo, items, settings, summary, errors, log, held, layout)
    finally:
        if layout["device"] == "cuda":
            release_request()


def _encode(job: IngestJob, out: storage.Location, todo, items: int, settings: dict, summary: IngestSummary,
            errors: Counter, log, held: lock.Held, layout: dict) -> None:
    import uuid

    import ray
    from tqdm import tqdm

    from latentsweep.accelerator import last_fault
    from latentsweep.cluster import StallWatch, quiet_data_context
    from latentsweep.ingest.worker import ShardWorker

    layout["size"] = min(layout["size"], todo.num_rows)  # an actor without a shard would only load the codec
    summary.workers, summary.device = layout["size"], layout["device"]
    quiet_data_context()
    units = todo.select(["shard", "digest", "part", "row_group"]).to_pylist()
    sizes = dict(zip(todo.column("shard").to_pylist(), todo.column("items").to_pylist()))
    dataset = ray.data.from_items(units, override_num_blocks=min(len(units), MAX_BLOCKS))
    embed = EmbedSettings(**{**asdict(job.embed), "device": layout["device"]})
    run_id = f"{out.uri}:{uuid.uuid4().hex}"  # the key under which its actors report device faults
    provenance = {key: settings[key] for key in ("codec", "weights_digest", "feature_set", "pooling")}
    with warnings.catch_warnings():  # Ray 2.60 (pinned) has no named parameter for the restart arguments yet
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = dataset.map_batches(
            ShardWorker, fn_constructor_kwargs={
                "out": out.uri, "settings": embed, "provenance": provenance,
                "decode": {"max_pixels": job.max_pixels, "min_side": job.min_side},
                "torch_threads": layout["threads"], "fetch_threads": layout["fetch_threads"], "run_id": run_id},
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=layout["size"]),
            num_gpus=layout["num_gpus"], num_cpus=layout["num_cpus"],
            # an actor that hit an accelerator fault exits (worker.py); Ray restarts it and retries its shard,
            # and a fault that outlasts the restarts ends the job (Ray Data's default is to retry forever)
            max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
    bar = tqdm(total=items, unit="img", desc="ingest", disable=job.quiet, file=sys.stderr)
    started = last_line = time.monotonic()
    per_node: Counter = Counter()
    gpus: dict[str, set] = {}
    try:
        with StallWatch("ingest", log) as watch:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                held.check()  # a run that lost its lease stops handing out shards
                watch.progressed()
                for shard, embedded, encoded, shard_errors, node, node_gpus in zip(
                        batch["shard"], batch["embedded"], batch["encoded"], batch["errors"], batch["node"],
                        batch["gpus"]):
                    summary.shards_processed += 1
                    summary.embedded += int(embedded)
                    summary.items_encoded += int(encoded)
                    errors.update(json.loads(shard_errors))
                    per_node[node] += int(encoded)
                    gpus.setdefault(node, set()).update(json.loads(node_gpus))
                    bar.update(sizes[int(shard)])
                now = time.monotonic()
                if not job.quiet and now - last_line > 30:
                    log(f"ingest: {bar.n}/{items} images, {bar.n / (now - started):.1f} images/s, "
                        f"{summary.shards_processed}/{todo.num_rows} shards written")
                    last_line = now
    except ray.exceptions.RayActorError as error:
        fault = last_fault(run_id)
        raise JobFailed(f"an encoder actor died {ACTOR_RESTARTS + 1} times"
                        + (f"; its last accelerator fault: {fault}" if fault else f" ({type(error).__name__})")
                        + f"; {summary.shards_processed} shards were written: rerun to resume") from None
    finally:
        bar.close()
    summary.images_per_node = dict(sorted(per_node.items()))
    summary.gpus_per_node = {node: sorted(ids) for node, ids in sorted(gpus.items()) if ids}
