"""Plan an ingest: stable ids, stable shards, and what is left to do. Pure functions over Arrow.

An item's shard never changes once planned. A run reads the previous plan (the manifest) a part at a
time and keeps every known item in its shard; new items fill new shards, ``shard_size`` at a time in
id order. Items that are gone leave their shard (the worker rewrites it without them, encoding
nothing); a shard left empty is dropped. So growing a corpus costs what was added, not a re-encode.

A shard's digest covers its items' ids, URIs, versions, labels and families and the embedding
settings: a shard is skipped when its done marker carries the same digest. Everything here is
columnar: the plan is a few numpy arrays over the listing (about 25 bytes an item), and an item's
text is gathered from the listing only per shard, never copied whole in plan order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep.schema import MANIFEST_SCHEMA, stable_id

HASH_CHUNK = 50_000
DIGEST_SHARDS = 64  # shards whose rows become Python strings together while their digests are computed
TEXT_COLUMNS = ("uri", "size", "version", "label", "family")
CHANGE_COLUMNS = ("version", "label", "family")  # what makes a known item fresh


@dataclass
class Plan:
    """Per item, in plan order (shard, id): its id, shard, row of ``listing`` and whether it is new or
    changed since the previous plan; ``shards`` has one row per shard (shard, digest, items, start)."""

    listing: pa.Table
    ids: np.ndarray
    shard: np.ndarray
    rows: np.ndarray
    fresh: np.ndarray
    counts: dict        # inputs, unchanged, new, changed, removed
    dropped: list[int]  # shards of the previous plan that hold no item now
    shards: pa.Table

    def items(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """Plan rows ``start:stop`` as manifest rows, gathered from the listing."""
        return manifest_rows(self.listing, self.ids[start:stop], self.shard[start:stop], self.rows[start:stop])

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
        start = self.shards.column("start")[row].as_py()
        return self.items(start, start + self.shards.column("items")[row].as_py())


def stable_ids(uris: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """:func:`latentsweep.schema.stable_id` of every URI, as int64, a chunk of Python strings at a time."""
    out = np.empty(len(uris), np.int64)
    for start in range(0, len(uris), HASH_CHUNK):
        chunk = uris.slice(start, HASH_CHUNK).to_pylist()
        out[start:start + len(chunk)] = [stable_id(uri) for uri in chunk]
    return out


def take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` one record batch at a time: Arrow's take on a chunked string column first
    concatenates the whole column (a copy of it and ~40 ms per call at 1M rows)."""
    batches = table.to_batches()
    bounds = np.cumsum([0] + [batch.num_rows for batch in batches])
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    cuts = np.searchsorted(ordered, bounds)
    pieces = [batch.take(pa.array(ordered[low:high] - start)) for batch, start, low, high
              in zip(batches, bounds, cuts[:-1], cuts[1:]) if high > low]
    gathered = pa.Table.from_batches(pieces, table.schema).combine_chunks()
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return gathered.take(pa.array(inverse))


def _text(column) -> pa.Array:
    """A string column with nulls as a sentinel, so that equality treats two nulls as equal."""
    return pc.fill_null(column, "\0")


def plan(listing: pa.Table, shard_size: int, settings: dict, previous: Iterable[pa.Table] = ()) -> Plan:
    """Plan ``listing`` (uri, size, version, label, family) against ``previous``, the last plan's
    manifest (id, shard, version, label, family) one part at a time. Duplicate URIs collapse to one
    item (the first listed)."""
    ids, rows = np.unique(stable_ids(listing.column("uri")), return_index=True)  # sorted by id
    shards = np.full(len(ids), -1, np.int32)
    fresh = np.ones(len(ids), bool)
    old_shards: set[int] = set()
    kept_shards: set[int] = set()
    removed = 0
    for part in previous:
        held, kept, gone = _carry_over(part, listing, ids, rows, shards, fresh)
        old_shards |= held
        kept_shards |= kept
        removed += gone
    known = shards >= 0
    changed = int(fresh[known].sum())
    counts = {"inputs": len(ids), "unchanged": int(known.sum()) - changed, "new": int((~known).sum()),
              "changed": changed, "removed": removed}
    shards[~known] = max(old_shards, default=-1) + 1 + np.arange(counts["new"]) // max(1, shard_size)
    order = np.argsort(shards, kind="stable")  # (shard, id) order: ``ids`` are sorted
    ids, shards, rows, fresh = ids[order], shards[order], rows[order], fresh[order]
    del order  # 8 bytes an item, not needed while the digests are computed
    return Plan(listing, ids, shards, rows, fresh, counts, sorted(old_shards - kept_shards),
                shard_table(listing, ids, shards, rows, settings))


def _carry_over(part: pa.Table, listing: pa.Table, ids: np.ndarray, rows: np.ndarray, shards: np.ndarray,
                fresh: np.ndarray) -> tuple[set[int], set[int], int]:
    """Match one part of the previous manifest against the listing (``ids`` sorted, ``rows`` their
    rows of ``listing``): items still listed keep their shard and are fresh only if changed. Returns
    the part's shards, those still holding an item, and how many of its items are gone."""
    old_ids, old_shards = part.column("id").to_numpy(), part.column("shard").to_numpy()
    positions = np.searchsorted(ids, old_ids)
    known = positions < len(ids)
    known[known] = ids[positions[known]] == old_ids[known]
    matched = positions[known]
    shards[matched] = old_shards[known]
    now = take(listing.select(list(CHANGE_COLUMNS)), rows[matched])
    changed = np.zeros(len(matched), bool)
    for name in CHANGE_COLUMNS:
        before = _text(part.column(name).filter(pa.array(known)))
        changed |= pc.not_equal(before, _text(now.column(name))).to_numpy(zero_copy_only=False)
    fresh[matched] = changed
    return set(np.unique(old_shards).tolist()), set(np.unique(old_shards[known]).tolist()), int((~known).sum())


def manifest_rows(listing: pa.Table, ids: np.ndarray, shards: np.ndarray, rows: np.ndarray) -> pa.Table:
    """Manifest rows (MANIFEST_SCHEMA) of the items ``ids`` in ``shards``, their text taken from ``rows``
    of ``listing``."""
    text = take(listing, rows)
    return pa.Table.from_arrays([pa.array(ids, pa.int64()), pa.array(shards, pa.int32())] +
                                [text.column(name) for name in TEXT_COLUMNS], schema=MANIFEST_SCHEMA)


def shard_table(listing: pa.Table, ids: np.ndarray, shards: np.ndarray, rows: np.ndarray,
                settings: dict) -> pa.Table:
    """One row per shard of the plan (``ids``, ``shards``, ``rows`` in plan order): its digest, item
    count and first row. The rows of :data:`DIGEST_SHARDS` shards are Python strings at a time."""
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(shards) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(shards)].astype(np.int64)
    settings_text = json.dumps(settings, sort_keys=True).encode()
    digests = []
    for first in range(0, len(starts), DIGEST_SHARDS):
        low, high = starts[first], ends[min(first + DIGEST_SHARDS, len(starts)) - 1]
        chunk = manifest_rows(listing, ids[low:high], shards[low:high], rows[low:high])
        columns = [chunk.column(name).to_pylist() for name in ("id", "uri", "version", "label", "family")]
        for start, end in zip(starts[first:first + DIGEST_SHARDS] - low, ends[first:first + DIGEST_SHARDS] - low):
            hasher = hashlib.sha256(settings_text)
            for row in zip(*(column[start:end] for column in columns)):
                hasher.update("{}\t{}\t{}\t{}\t{}\n".format(*row).encode())
            digests.append(hasher.hexdigest())
    return pa.table({"shard": pa.array(shards[starts], pa.int32()), "digest": pa.array(digests, pa.string()),
                     "items": pa.array(ends - starts, pa.int32()), "start": pa.array(starts, pa.int64())})
