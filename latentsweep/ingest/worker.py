"""The shard worker: one call turns one shard of the plan into its output files.

Like clip-retrieval's workers, the shard id decides both what is read (one row group of the
manifest) and what is written (``embeddings/shard-N``, ``errors/shard-N``, ``_done/shard-N``); the
driver sends ``(shard, digest, part, row group)`` and gets counts back, never vectors. Inside, a
thread pool fetches and decodes ahead of the encoder (S3 GETs in flight, Pillow decoding outside the
GIL), a bounded window ahead so memory holds a few batches of pixels, not a shard of them. A device
fault ends the actor's process (:mod:`latentsweep.accelerator`) before its shard is marked done.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np

from latentsweep import storage
from latentsweep.accelerator import AcceleratorFault, compute_device, leave
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest import manifest
from latentsweep.ingest.decode import Fetched, fetch
from latentsweep.ingest.write import ShardWriter


def prefetched(function: Callable, items: Iterable, pool: ThreadPoolExecutor, window: int) -> Iterator:
    """``map(function, items)`` in order, computed on ``pool`` at most ``window`` items ahead."""
    iterator = iter(items)
    pending = deque(pool.submit(function, item) for item in islice(iterator, window))
    while pending:
        result = pending.popleft().result()
        for item in islice(iterator, 1):
            pending.append(pool.submit(function, item))
        yield result


class ShardWorker:
    """Ray Data callable class (an actor of the encoder pool): each row of a batch is a shard."""

    def __init__(self, out: str, settings: EmbedSettings, provenance: dict, decode: dict,
                 torch_threads: int | None = None, fetch_threads: int = 4, run_id: str = ""):
        import ray

        from latentsweep.ingest.encode import Encoder

        self.out, self.run_id = storage.Location.parse(out), run_id
        try:
            device = compute_device(settings.device)
        except AcceleratorFault as fault:
            leave(fault, run_id)
        self.encoder = Encoder(EmbedSettings(**{**asdict(settings), "device": device}), torch_threads)
        self.writer = ShardWriter(self.out, self.encoder.columns, provenance)
        self.decode = decode  # fetch() arguments: max_pixels, min_side
        self.batch = settings.max_batch
        self.pool = ThreadPoolExecutor(max_workers=max(1, fetch_threads))
        self.node = ray.get_runtime_context().get_node_id()
        self.gpus = json.dumps([str(gpu) for gpu in ray.get_gpu_ids()])

    def __call__(self, batch: dict) -> dict:
        try:
            results = [self.process(int(shard), str(digest), int(part), int(row_group)) for shard, digest, part,
                       row_group in zip(batch["shard"], batch["digest"], batch["part"], batch["row_group"])]
        except AcceleratorFault as fault:
            leave(fault, self.run_id)
        return {"shard": np.array([r.shard_id for r in results], np.int64),
                "embedded": np.array([r.embedded for r in results], np.int64),
                "encoded": np.array([r.encoded for r in results], np.int64),
                "errors": np.array([json.dumps(r.errors) for r in results], dtype=object),
                "node": np.array([self.node] * len(results), dtype=object),
                "gpus": np.array([self.gpus] * len(results), dtype=object)}

    def process(self, shard: int, digest: str, part: int, row_group: int):
        planned = manifest.read_shard(self.out, part, row_group)
        kept = self.writer.reusable(shard, planned)
        done = set(kept[0].column("id").to_pylist()) | set(kept[1].column("id").to_pylist())
        todo = [uri for item_id, uri in zip(planned.column("id").to_pylist(), planned.column("uri").to_pylist())
                if item_id not in done]
        fetched: list[Fetched] = []
        parts: list[dict[str, np.ndarray]] = []
        stream = prefetched(lambda uri: fetch(uri, **self.decode), todo, self.pool, 2 * self.batch)
        while batch := list(islice(stream, self.batch)):
            parts.append(self.encoder.encode(batch))
            fetched += batch
            for item in batch:  # the pixels are pooled: free them before the next batch decodes
                item.image = item.latents = None
        vectors = {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros((0, dim), np.float32)
                   for name, dim in self.encoder.columns.items()}
        return self.writer.write(shard, digest, planned, fetched, vectors, kept)
