"""Plan an ingest: stable ids, stable shards, and what is left to do, one id range at a time.

An item's shard never changes once planned. A run reads the previous plan (the manifest) and keeps
every known item in its shard; new items fill new shards, ``shard_size`` at a time in id order.
Items that are gone leave their shard (the worker rewrites it without them, encoding nothing); a
shard left empty is dropped. So growing a corpus costs what was added, not a re-encode.

A shard's digest covers its items' ids, URIs, versions, labels and families and the embedding
settings: a shard is skipped when its done marker carries the same digest.

The driver never holds the corpus. The listing is spilled as it streams in, split into
:data:`PARTITIONS` ranges of the (uniform) id, into Arrow files in a scratch folder; so is the
previous plan. Each range is planned against its slice of the previous plan, and its rows are
spilled again by manifest part, where the digests are computed. What stays in memory is one range
or one part and a few numbers per shard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep.ingest.sources import BITSTREAM_SUFFIXES
from latentsweep.schema import MANIFEST_SCHEMA, stable_id

HASH_CHUNK = 50_000
PARTITION_BITS = 8
PARTITIONS = 1 << PARTITION_BITS  # id ranges planned one at a time: 4k items each at 1M, 390k at 100M
SPILL_ROWS = 65_536  # listing rows split by id range at a time (so each range's file gets few, large pieces)
SHARDS_PER_PART = 1024  # shards of one manifest part (one Parquet file, a row group per shard)
DIGEST_SHARDS = 64  # shards whose rows become Python strings together while their digests are computed
CHANGE_COLUMNS = ("version", "label", "family")  # what makes a known item fresh
SHARD_SCHEMA = pa.schema([("shard", pa.int32()), ("digest", pa.string()), ("items", pa.int32()), ("fresh", pa.int32())])


class Spill:
    """Tables appended to numbered buckets (Arrow IPC files, LZ4) in a scratch folder and read back a
    bucket at a time: what lets the driver hold one id range or one manifest part, not the corpus."""

    def __init__(self, folder: str, name: str):
        self.folder, self.name = folder, name
        self.rows = 0
        self._writers: dict[int, tuple[pa.ipc.RecordBatchStreamWriter, pa.OSFile]] = {}

    def _path(self, bucket: int) -> str:
        return os.path.join(self.folder, f"{self.name}-{bucket:06d}.arrow")

    def add(self, table: pa.Table | pa.RecordBatch, buckets: np.ndarray) -> None:
        """Append each row of ``table`` to its bucket (rows keep their order within a bucket)."""
        order = np.argsort(buckets, kind="stable")
        ordered, table = buckets[order], table.take(pa.array(order))
        for low, high in zip(*(bounds.tolist() for bounds in runs(ordered))):
            self._writer(int(ordered[low]), table.schema).write(table.slice(low, high - low))
        self.rows += len(buckets)

    def _writer(self, bucket: int, schema: pa.Schema) -> pa.ipc.RecordBatchStreamWriter:
        if bucket not in self._writers:
            sink = pa.OSFile(self._path(bucket), "wb")
            options = pa.ipc.IpcWriteOptions(compression="lz4")
            self._writers[bucket] = (pa.ipc.new_stream(sink, schema, options=options), sink)
        return self._writers[bucket][0]

    def buckets(self) -> list[int]:
        """The buckets holding rows, in order (what was written is closed and readable)."""
        for writer, sink in self._writers.values():
            if not sink.closed:
                writer.close()
                sink.close()
        return sorted(self._writers)

    def read(self, bucket: int) -> pa.Table | None:
        """The rows of ``bucket`` in the order they were added; None when it has none."""
        if bucket not in self._writers:
            return None
        with pa.OSFile(self._path(bucket)) as source:
            return pa.ipc.open_stream(source).read_all()


@dataclass
class Plan:
    """What a run does: ``shards`` has one row per shard (shard, digest, items, and ``fresh``: its
    items new or changed since the previous plan), sorted by shard; the items are spilled by part."""

    shards: pa.Table
    counts: dict        # inputs, unchanged, new, changed, removed
    dropped: list[int]  # shards of the previous plan that hold no item now
    planned: Spill

    def part_items(self, part: int) -> Iterator[pa.Table]:
        """The manifest rows of one part (its shards' items, sorted by shard and id), a few shards at a time."""
        for chunk in _sorted_chunks(self.planned.read(part)):
            yield chunk.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)

    def pending_mask(self, done: dict[int, str]) -> pa.BooleanArray:
        """Which rows of ``shards`` have no done marker with their digest."""
        return pa.array([done.get(shard) != digest for shard, digest in zip(
            self.shards.column("shard").to_pylist(), self.shards.column("digest").to_pylist())], pa.bool_())


def stable_ids(uris: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """:func:`latentsweep.schema.stable_id` of every URI, as int64, a chunk of Python strings at a time."""
    out = np.empty(len(uris), np.int64)
    for start in range(0, len(uris), HASH_CHUNK):
        chunk = uris.slice(start, HASH_CHUNK).to_pylist()
        out[start:start + len(chunk)] = [stable_id(uri) for uri in chunk]
    return out


def _partition(ids: np.ndarray) -> np.ndarray:
    """The id range of each id (its top bits, so that ranges follow id order)."""
    return (ids >> (64 - PARTITION_BITS)) + PARTITIONS // 2


class ListedSpill(Spill):
    """The spilled listing, how many of its rows are ``.jai`` bitstreams and the first of them: a source of
    bitstreams only is refused before the job for a feature set that a bitstream cannot give, or when its
    first bitstream was coded in another embedding space (``ingest/run.py``)."""

    def __init__(self, folder: str):
        super().__init__(folder, "listed")
        self.bitstreams = 0
        self.first_bitstream: str | None = None


def spill_listing(batches: Iterable[pa.RecordBatch], folder: str) -> ListedSpill:
    """Listing batches (uri, size, version, label, family) spilled by id range, each row with its id."""
    listed = ListedSpill(folder)
    for rows in _regrouped(batches, SPILL_ROWS):
        ids = stable_ids(rows.column("uri"))
        listed.add(rows.append_column("id", pa.array(ids, pa.int64())), _partition(ids))
        uris = pc.utf8_lower(rows.column("uri"))
        bitstream = functools.reduce(pc.or_, (pc.ends_with(uris, suffix) for suffix in BITSTREAM_SUFFIXES))
        found = pc.sum(bitstream).as_py() or 0
        if found and listed.first_bitstream is None:
            listed.first_bitstream = rows.column("uri")[pc.index(bitstream, True).as_py()].as_py()
        listed.bitstreams += found
    return listed


def _regrouped(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """``batches`` as tables of at least ``rows`` rows (the last one may have fewer)."""
    pending: list[pa.RecordBatch] = []
    for batch in batches:
        pending.append(batch)
        if sum(part.num_rows for part in pending) >= rows:
            yield pa.Table.from_batches(pending).combine_chunks()
            pending = []
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks()


def plan(listed: Spill, shard_size: int, settings: dict, previous: Iterable[pa.Table], folder: str) -> Plan:
    """Plan the spilled listing against ``previous``, the last plan's manifest (id, shard, version,
    label, family) a part at a time. Duplicate URIs collapse to one item (the first listed)."""
    ranges = set(listed.buckets())  # closes the listing's files before the next spill opens its own
    before, old_shards = Spill(folder, "previous"), set()
    for part in previous:
        before.add(part.select(["id", "shard", *CHANGE_COLUMNS]), _partition(part.column("id").to_numpy()))
        old_shards.update(np.unique(part.column("shard").to_numpy()).tolist())
    ranges |= set(before.buckets())
    planned, kept_shards = Spill(folder, "planned"), set()
    counts = {"inputs": 0, "unchanged": 0, "new": 0, "changed": 0, "removed": 0, "collisions": 0}
    next_shard = max(old_shards, default=-1) + 1
    for bucket in sorted(ranges):  # in id order, so that new shards fill in id order
        rows, old = listed.read(bucket), before.read(bucket)
        if rows is None:  # every item of the range is gone
            counts["removed"] += old.num_rows
            continue
        rows, kept = _plan_range(rows, old, counts, next_shard, shard_size)
        planned.add(rows, rows.column("shard").to_numpy() // SHARDS_PER_PART)
        kept_shards |= kept
    shards = pa.concat_tables([SHARD_SCHEMA.empty_table()] + [_shard_rows(_sorted_chunks(planned.read(part)), settings)
                                                             for part in planned.buckets()])
    return Plan(shards, counts, sorted(old_shards - kept_shards), planned)


def _plan_range(listed: pa.Table, old: pa.Table | None, counts: dict, next_shard: int,
                shard_size: int) -> tuple[pa.Table, set[int]]:
    """Plan one id range: its listed rows (with ids) against the previous plan's rows of the range.
    Known items keep their shard and are fresh only if changed; new ones take the next places in
    the new shards (``counts["new"]``, the new items of the ranges before, says which). Returns the
    planned rows (the manifest's columns and ``fresh``) and the old shards still holding an item."""
    resolved, collisions = resolve_collisions(listed.column("id").to_numpy(), listed.column("uri"))
    counts["collisions"] += collisions
    ids, first = np.unique(resolved, return_index=True)
    rows = listed.take(pa.array(first))  # one per URI, the first listed, sorted by id
    shards, fresh, kept = np.full(len(ids), -1, np.int32), np.ones(len(ids), bool), set()
    if old is not None:
        old_ids, old_shards = old.column("id").to_numpy(), old.column("shard").to_numpy()
        positions = np.searchsorted(ids, old_ids)
        known = positions < len(ids)
        known[known] = ids[positions[known]] == old_ids[known]
        matched = positions[known]
        shards[matched] = old_shards[known]
        now, before = rows.take(pa.array(matched)), old.filter(pa.array(known))
        rows, now = _keep_versions(rows, now, before, matched)
        fresh[matched] = np.any([pc.not_equal(_text(before.column(name)), _text(now.column(name)))
                                 .to_numpy(zero_copy_only=False) for name in CHANGE_COLUMNS], axis=0)
        changed = int(fresh[matched].sum())
        counts.update(unchanged=counts["unchanged"] + len(matched) - changed, changed=counts["changed"] + changed,
                      removed=counts["removed"] + int((~known).sum()))
        kept = set(np.unique(old_shards[known]).tolist())
    new = int((shards < 0).sum())
    shards[shards < 0] = next_shard + (counts["new"] + np.arange(new)) // max(1, shard_size)
    counts["new"] += new
    counts["inputs"] += len(ids)
    planned = {"id": pa.array(ids, pa.int64()), "shard": pa.array(shards, pa.int32())}
    planned.update({name: rows.column(name) for name in MANIFEST_SCHEMA.names[2:]})
    return pa.table({**planned, "fresh": pa.array(fresh)}), kept


LOW_BITS = 64 - PARTITION_BITS
LOW_MASK = (1 << LOW_BITS) - 1


def alternative_id(base: int, uri: str, attempt: int) -> int:
    """The id a URI takes when ``base`` (its :func:`stable_id`) belongs to another URI: its top bits
    (the id range it is planned in) kept, the rest from the SHA-256 of the URI and the attempt number.
    A pure function of its arguments, so the same URI gets the same id every run."""
    low = stable_id(f"{uri}\n#{attempt}") & LOW_MASK
    value = (base >> LOW_BITS << LOW_BITS) & (2**64 - 1) | low  # as unsigned 64 bits, then back to int64
    return value - 2**64 if value >= 2**63 else value


def resolve_collisions(ids: np.ndarray, uris) -> tuple[np.ndarray, int]:
    """``ids`` with those that two different URIs share resolved: of the URIs behind one id, the first in
    string order keeps it and each other takes the next :func:`alternative_id` free in this listing
    (64-bit hashes of URIs collide once in ~37 at 1B items). Rows of the same URI keep one id (listed
    twice is one item). Returns (ids, how many URIs moved)."""
    values, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse] > 1)
    if not len(shared):
        return ids, 0
    resolved, taken, moved = ids.copy(), set(values.tolist()), 0
    groups: dict[int, dict[str, list[int]]] = {}
    for row in shared.tolist():
        groups.setdefault(int(ids[row]), {}).setdefault(uris[row].as_py(), []).append(row)
    for base, by_uri in groups.items():
        for uri in sorted(by_uri)[1:]:
            attempt = 1
            while (candidate := alternative_id(base, uri, attempt)) in taken:
                attempt += 1
            taken.add(candidate)
            resolved[by_uri[uri]] = candidate
            moved += 1
    return resolved, moved


def _keep_versions(rows: pa.Table, now: pa.Table, before: pa.Table, matched: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """``rows`` (and ``now``, their rows of known items, in the order of ``before``) where an item listed
    without a version (a manifest row without one, and no ``--check-versions``: ingest/sources.py) takes
    the version it was planned with: not knowing is no change, so a run without versions neither redoes
    nor forgets what a run with them recorded."""
    unknown = pc.fill_null(pc.and_(pc.equal(now.column("version"), ""), pc.not_equal(before.column("version"), "")),
                           False).to_numpy(zero_copy_only=False).astype(bool)
    if not unknown.any():
        return rows, now
    targets = matched[unknown]
    mask = np.zeros(rows.num_rows, bool)
    mask[targets] = True
    versions = before.column("version").filter(pa.array(unknown)).take(pa.array(np.argsort(targets)))
    column = pc.replace_with_mask(rows.column("version").combine_chunks(), pa.array(mask), versions.combine_chunks())
    rows = rows.set_column(rows.schema.get_field_index("version"), "version", column)
    return rows, rows.take(pa.array(matched))


def _text(column) -> pa.Array:
    """A string column with nulls as a sentinel, so that equality treats two nulls as equal."""
    return pc.fill_null(column, "\0")


def _sorted_chunks(rows: pa.Table) -> Iterator[pa.Table]:
    """``rows`` (planned rows of a part, in the many small batches they were spilled in) sorted by
    shard and id, :data:`DIGEST_SHARDS` shards at a time: never a sorted copy of the whole part."""
    shards = rows.column("shard").to_numpy()
    order = np.lexsort((rows.column("id").to_numpy(), shards))
    starts, ends = runs(shards[order])
    for first in range(0, len(starts), DIGEST_SHARDS):
        yield _take(rows, order[starts[first]:ends[min(first + DIGEST_SHARDS, len(starts)) - 1]])


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` one record batch at a time: Arrow's take on a chunked string column first
    concatenates the whole column."""
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


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values in ``values`` (the shards of rows sorted by shard)."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.zeros(0, np.int64)
    return starts, np.r_[starts[1:], len(values)].astype(np.int64)


def _shard_rows(chunks: Iterable[pa.Table], settings: dict) -> pa.Table:
    """One row per shard of ``chunks`` (planned rows sorted by shard and id, whole shards in each):
    its digest, item count and fresh items."""
    settings_text = json.dumps(settings, sort_keys=True).encode()
    shard_ids, digests, sizes, fresh = [], [], [], []
    for chunk in chunks:
        shards = chunk.column("shard").to_numpy()
        starts, ends = runs(shards)
        columns = [chunk.column(name).to_pylist() for name in ("id", "uri", "version", "label", "family")]
        for start, end in zip(starts.tolist(), ends.tolist()):
            hasher = hashlib.sha256(settings_text)
            for row in zip(*(column[start:end] for column in columns)):
                hasher.update("{}\t{}\t{}\t{}\t{}\n".format(*row).encode())
            digests.append(hasher.hexdigest())
        shard_ids.append(shards[starts])
        sizes.append(ends - starts)
        fresh.append(np.add.reduceat(chunk.column("fresh").to_numpy(zero_copy_only=False).astype(np.int32), starts))
    return pa.table([pa.array(np.concatenate(shard_ids)), pa.array(digests, pa.string()),
                     pa.array(np.concatenate(sizes), pa.int32()), pa.array(np.concatenate(fresh))], schema=SHARD_SCHEMA)
