"""Plan an ingest: stable ids, stable shards, and what is left to do. Pure functions over Arrow.

An item's shard never changes once planned. A run reads the previous plan (the manifest) and keeps
every known item in its shard; new items fill new shards, ``shard_size`` at a time in id order.
Items that are gone leave their shard (the worker rewrites it without them, encoding nothing); a
shard left empty is dropped. So growing a corpus costs what was added, not a re-encode.

A shard's digest covers its items' ids, URIs, versions, labels and families and the embedding
settings: a shard is skipped when its done marker carries the same digest. Everything here is
columnar (numpy / Arrow): the driver never holds a Python object per item.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep.schema import MANIFEST_SCHEMA, stable_id

HASH_CHUNK = 50_000


@dataclass
class Plan:
    items: pa.Table   # MANIFEST_SCHEMA rows, sorted by (shard, id)
    shards: pa.Table  # shard, digest, items, start (first row of the shard in ``items``)
    counts: dict      # inputs, unchanged, new, changed, removed
    dropped: list[int]  # shards of the previous plan that hold no item now
    fresh: np.ndarray  # per row of ``items``: new or changed since the previous plan

    def fresh_per_shard(self) -> np.ndarray:
        """New or changed items in each row of ``shards`` (what a shard with earlier output encodes)."""
        starts = self.shards.column("start").to_numpy()
        return np.add.reduceat(self.fresh.astype(np.int64), starts) if len(starts) else np.zeros(0, np.int64)

    def pending_mask(self, done: dict[int, str]) -> pa.BooleanArray:
        """Which rows of ``shards`` have no done marker with their digest."""
        return pa.array([done.get(shard) != digest for shard, digest in zip(
            self.shards.column("shard").to_pylist(), self.shards.column("digest").to_pylist())], pa.bool_())

    def pending(self, done: dict[int, str]) -> pa.Table:
        """The rows of ``shards`` whose done marker is missing or carries another digest."""
        return self.shards.filter(self.pending_mask(done))

    def shard_items(self, row: int) -> pa.Table:
        """The items of the shard in row ``row`` of ``shards``."""
        return self.items.slice(self.shards.column("start")[row].as_py(), self.shards.column("items")[row].as_py())


def stable_ids(uris: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """:func:`latentsweep.schema.stable_id` of every URI, as int64, a chunk of Python strings at a time."""
    out = np.empty(len(uris), np.int64)
    for start in range(0, len(uris), HASH_CHUNK):
        chunk = uris.slice(start, HASH_CHUNK).to_pylist()
        out[start:start + len(chunk)] = [stable_id(uri) for uri in chunk]
    return out


def _text(column) -> pa.Array:
    """A string column with nulls as a sentinel, so that equality treats two nulls as equal."""
    return pc.fill_null(column, "\0")


def plan(listing: pa.Table, shard_size: int, settings: dict, previous: pa.Table | None = None) -> Plan:
    """Plan ``listing`` (uri, size, version, label, family) against ``previous`` (the last manifest).
    Duplicate URIs collapse to one item (the first listed)."""
    ids = stable_ids(listing.column("uri"))
    ids, first = np.unique(ids, return_index=True)  # sorted by id, one row per URI (rows of ``listing``)
    shards = np.full(len(ids), -1, np.int32)
    fresh = np.ones(len(ids), bool)
    counts = {"inputs": len(ids), "unchanged": 0, "new": 0, "changed": 0, "removed": 0}
    dropped: list[int] = []
    next_shard = 0
    if previous is not None and previous.num_rows:
        old_ids = previous.column("id").to_numpy()
        order = np.argsort(old_ids)
        positions = np.clip(np.searchsorted(old_ids[order], ids), 0, len(order) - 1)
        known = old_ids[order][positions] == ids
        rows = pa.array(order[positions[known]])
        shards[known] = previous.column("shard").to_numpy()[order[positions[known]]]
        changed = np.zeros(known.sum(), bool)
        for name in ("version", "label", "family"):
            before = _text(previous.column(name).take(rows))
            now = _text(listing.column(name).take(pa.array(first[known])))
            changed |= pc.not_equal(before, now).to_numpy(zero_copy_only=False)
        fresh[known] = changed
        old_shards = previous.column("shard").to_numpy()
        removed = ~np.isin(old_ids, ids, assume_unique=True)
        dropped = sorted(set(np.unique(old_shards).tolist()) - set(np.unique(shards[known]).tolist()))
        counts.update(unchanged=int((~changed).sum()), changed=int(changed.sum()), removed=int(removed.sum()))
        next_shard = int(old_shards.max()) + 1
    new = shards < 0
    counts["new"] = int(new.sum())
    shards[new] = next_shard + np.arange(counts["new"]) // max(1, shard_size)
    order = np.lexsort((ids, shards))
    rows = pa.array(first[order])  # one copy of the listing, in plan order
    items = pa.Table.from_arrays([pa.array(ids[order], pa.int64()), pa.array(shards[order], pa.int32())] +
                                 [listing.column(name).take(rows) for name in ("uri", "size", "version", "label",
                                                                              "family")], schema=MANIFEST_SCHEMA)
    return Plan(items, shard_table(items, settings), counts, dropped, fresh[order])


def shard_table(items: pa.Table, settings: dict) -> pa.Table:
    """One row per shard of ``items`` (sorted by shard, id): its digest, item count and first row."""
    shard_ids = items.column("shard").to_numpy()
    starts = np.flatnonzero(np.r_[True, shard_ids[1:] != shard_ids[:-1]]) if len(shard_ids) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(shard_ids)])
    settings_text = json.dumps(settings, sort_keys=True).encode()
    digests = []
    for start, size in zip(starts.tolist(), sizes.tolist()):
        part = items.slice(start, size)
        hasher = hashlib.sha256(settings_text)
        for row in zip(*(part.column(name).to_pylist() for name in ("id", "uri", "version", "label", "family"))):
            hasher.update("{}\t{}\t{}\t{}\t{}\n".format(*row).encode())
        digests.append(hasher.hexdigest())
    return pa.table({"shard": pa.array(shard_ids[starts], pa.int32()), "digest": pa.array(digests, pa.string()),
                     "items": pa.array(sizes, pa.int32()), "start": pa.array(starts, pa.int64())})
