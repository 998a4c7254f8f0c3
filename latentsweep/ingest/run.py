"""The ingest driver: list -> plan -> Ray Data (decode tasks -> encoder actor pool) -> shard writer.

The driver consumes the pipeline's small output rows (ids and pooled vectors) as they stream in and
writes a shard as soon as all its rows have arrived, so memory holds only unfinished shards.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from latentsweep import lock, storage
from latentsweep.cluster import cpus_and_gpus
from latentsweep.codec.embed import EmbedSettings
from latentsweep.ingest import plan as planning
from latentsweep.ingest.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from latentsweep.ingest.sources import list_source
from latentsweep.ingest.write import DONE_FOLDER, ShardWriter, done_markers
from latentsweep.console import stage_log
from latentsweep.errors import UsageError

DECODE_BATCH = 16
DEVICES = ("auto", "cpu", "cuda")


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
    overwrite: bool = False
    quiet: bool = False
    address: str | None = None


@dataclass
class IngestSummary:
    source: str
    out: str
    inputs: int = 0
    embedded: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    skipped_unsupported: int = 0
    shards: int = 0
    shards_already_done: int = 0
    shards_processed: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0
    device: str = ""
    images_per_node: dict[str, int] = field(default_factory=dict)  # this run's encoded items per Ray node

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def pool_layout(resources: dict, embed: EmbedSettings, workers: int | None) -> dict:
    """How many encoder actors, and what each reserves, from the cluster's resources.

    GPU nodes: one actor per GPU (``num_gpus=1``). CPU only: one single-threaded actor per core
    (they decode in the actor; on 2 cores two 1-thread actors run 1.24x faster than one 2-thread
    actor, benchmarks/bench_ingest.py), whose reservations together leave a CPU free: a pool that
    reserves every CPU starves Ray Data's own tasks and hangs.
    """
    cpus, gpus = cpus_and_gpus(resources)
    if gpus and embed.device != "cpu":
        return {"size": workers or gpus, "num_gpus": 1, "num_cpus": 1, "threads": None, "device": "cuda"}
    size = workers or cpus
    per_actor = min(1.0, max(0.25, (cpus - 1) / size))
    return {"size": size, "num_gpus": 0, "num_cpus": per_actor, "threads": max(1, cpus // size), "device": "cpu"}


def check(job: IngestJob) -> None:
    """Refuse bad settings before anything is read or written (a bad value must not claim ``out``)."""
    from latentsweep.codec.pooling import column_dims

    column_dims(job.embed.feature_set, job.embed.pooling)
    if job.embed.device not in DEVICES:
        raise UsageError(f"unknown --device {job.embed.device!r}: choose one of {', '.join(DEVICES)}")
    for name in ("shard_size", "max_pixels", "min_side"):
        if getattr(job, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(job, name)}")
    if job.embed.max_batch < 1 or (job.workers is not None and job.workers < 1):
        raise UsageError("--batch-size and --workers must be at least 1")


def _plan_settings(job: IngestJob, weights_digest: str) -> dict:
    return {"codec": "jpegai-bop", "weights_digest": weights_digest, "feature_set": job.embed.feature_set,
            "pooling": job.embed.pooling, "max_pixels": job.max_pixels, "min_side": job.min_side}


def _check_previous(out: storage.Location, settings: dict, overwrite: bool) -> None:
    previous = out.join("plan.json")
    if overwrite or not storage.exists(previous):
        return
    old = json.loads(storage.read_bytes(previous)).get("settings", {})
    if old != settings:
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        raise UsageError(f"{out.uri} holds an ingest made with other settings ({', '.join(changed)}): "
                         f"use --overwrite to redo it, or another --out")


def _clear(out: storage.Location) -> None:
    for folder in (DONE_FOLDER, "embeddings", "errors"):
        for info in list(storage.list_files(out.join(folder), missing_ok=True)):
            storage.delete(info.uri)


def _manifest_table(shards: list[planning.Shard]) -> pa.Table:
    items = [item for shard in shards for item in shard.items]
    return pa.table({
        "id": pa.array([i.id for i in items], pa.int64()),
        "shard": pa.array([i.shard for i in items], pa.int32()),
        "uri": pa.array([i.uri for i in items], pa.string()),
        "size": pa.array([i.size for i in items], pa.int64()),
        "version": pa.array([i.version for i in items], pa.string()),
        "label": pa.array([i.label for i in items], pa.string()),
        "family": pa.array([i.family for i in items], pa.string())})


def run(job: IngestJob, log=None) -> IngestSummary:
    """Run (or resume) an ingest and return its summary; also written to ``OUT/summary.json``."""
    from latentsweep.codec import weights

    log = log or stage_log(job.quiet)
    started = time.monotonic()
    out = storage.Location.parse(job.out)
    check(job)
    summary = IngestSummary(job.source, out.uri)
    items, skipped = list_source(job.source, job.labels_from_folders, job.families)
    summary.inputs, summary.skipped_unsupported = len(items), len(skipped)
    if not items:
        raise UsageError(f"no images or .pt latents found in {job.source}")
    _, weights_digest, _ = weights.load(job.embed.weights)
    settings = _plan_settings(job, weights_digest)
    with lock.hold(out, "ingest"):
        todo = _plan_and_process(job, out, items, settings, summary, log)
        _collect_totals(out, summary)
        summary.seconds = round(time.monotonic() - started, 2)
        processed = sum(len(s.items) for s in todo)
        summary.images_per_second = round(processed / summary.seconds, 2) if summary.seconds else 0.0
        storage.write_bytes(out.join("summary.json"), json.dumps(asdict(summary), indent=2).encode())
    return summary


def _plan_and_process(job: IngestJob, out: storage.Location, items: list, settings: dict,
                      summary: IngestSummary, log) -> list[planning.Shard]:
    """Plan against what ``out`` already holds and process the shards left; returns those."""
    _check_previous(out, settings, job.overwrite)
    if job.overwrite:
        _clear(out)
    shards = planning.plan(items, job.shard_size, settings)
    summary.shards = len(shards)
    storage.write_table(out.join("manifest.parquet"), _manifest_table(shards))
    storage.write_bytes(out.join("plan.json"), json.dumps(
        {"settings": settings, "shards": len(shards), "shard_size": job.shard_size,
         "source": job.source}, indent=2).encode())
    todo = planning.pending(shards, done_markers(out))
    summary.shards_already_done = len(shards) - len(todo)
    if todo:
        log(f"ingest: {sum(len(s.items) for s in todo)} items in {len(todo)} of {len(shards)} shards "
            f"to process ({summary.shards_already_done} already done)")
        _process(job, out, todo, settings, summary, log)
    else:
        log(f"ingest: all {len(shards)} shards of {out.uri} are already done; nothing to do")
    return todo


def _collect_totals(out: storage.Location, summary: IngestSummary) -> None:
    """Totals over every finished shard, this run's and earlier ones'."""
    errors: Counter = Counter()
    embedded = 0
    for record in storage.read_json_folder(out.join(DONE_FOLDER)):
        embedded += record["embedded"]
        errors.update(record["errors"])
    summary.embedded, summary.errors = embedded, dict(sorted(errors.items()))


def _process(job: IngestJob, out: storage.Location, todo: list[planning.Shard], settings: dict,
             summary: IngestSummary, log) -> None:
    import ray
    from tqdm import tqdm

    from latentsweep.cluster import connect, quiet_data_context
    from latentsweep.codec.pooling import column_dims
    from latentsweep.ingest.decode import read_and_decode
    from latentsweep.ingest.encode import EncodeActor

    resources = connect(job.address, quiet=job.quiet)
    layout = pool_layout(resources, job.embed, job.workers)
    summary.workers, summary.device = layout["size"], layout["device"]
    quiet_data_context()
    items = [item for shard in todo for item in shard.items]
    # Enough blocks that every encoder actor gets work, at most DECODE_BATCH rows each.
    block_rows = max(1, min(DECODE_BATCH, math.ceil(len(items) / (4 * layout["size"]))))
    blocks = [pa.table({"id": pa.array([i.id for i in chunk], pa.int64()),
                        "shard": pa.array([i.shard for i in chunk], pa.int32()),
                        "uri": pa.array([i.uri for i in chunk], pa.string())})
              for chunk in (items[start:start + block_rows] for start in range(0, len(items), block_rows))]
    embed = EmbedSettings(**{**asdict(job.embed), "device": layout["device"]})
    decode_args = {"max_pixels": job.max_pixels, "min_side": job.min_side}
    dataset = ray.data.from_arrow(blocks)
    if layout["device"] == "cuda":
        # GPU pools: CPU tasks decode so the GPU never waits on PNG/JPEG decoding.
        dataset = dataset.map_batches(read_and_decode, fn_kwargs=decode_args, batch_size=block_rows,
                                      batch_format="numpy", num_cpus=0.5)
    dataset = (dataset
               .map_batches(EncodeActor, fn_constructor_kwargs={
                                "settings": embed, "torch_threads": layout["threads"],
                                # CPU pools decode in the actor: shipping decoded pixels between
                                # processes costs more than it frees on the same cores
                                "decode": None if layout["device"] == "cuda" else decode_args},
                            batch_size=job.embed.max_batch, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=layout["size"]),
                            num_gpus=layout["num_gpus"], num_cpus=layout["num_cpus"]))
    writer = ShardWriter(out, column_dims(job.embed.feature_set, job.embed.pooling),
                         {key: settings[key] for key in ("codec", "weights_digest", "feature_set", "pooling")})
    by_id = {shard.shard_id: shard for shard in todo}
    pending_rows: dict[int, list[dict]] = defaultdict(list)
    arrived: Counter = Counter()
    bar = tqdm(total=len(items), unit="img", desc="ingest", disable=job.quiet, file=sys.stderr)
    last_line = time.monotonic()
    started = last_line
    per_node: Counter = Counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        per_node.update(batch.pop("node").tolist())
        for shard_id in np.unique(batch["shard"]):
            mask = batch["shard"] == shard_id
            pending_rows[int(shard_id)].append({name: values[mask] for name, values in batch.items()})
            arrived[int(shard_id)] += int(mask.sum())
            shard = by_id[int(shard_id)]
            if arrived[int(shard_id)] == len(shard.items):
                parts = pending_rows.pop(int(shard_id))
                rows = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
                writer.write(shard, rows)
                summary.shards_processed += 1
        bar.update(len(batch["id"]))
        now = time.monotonic()
        if not job.quiet and now - last_line > 30:
            log(f"ingest: {bar.n}/{len(items)} images, {bar.n / (now - started):.1f} images/s, "
                f"{summary.shards_processed}/{len(todo)} shards written")
            last_line = now
    bar.close()
    summary.images_per_node = dict(sorted(per_node.items()))
    if pending_rows:
        raise RuntimeError(f"ingest pipeline ended with incomplete shards {sorted(pending_rows)}: rerun to resume")
