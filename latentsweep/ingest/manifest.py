"""The ingest plan on storage: ``DEST/manifest/part-NNNNN.parquet`` and ``DEST/shards.parquet``.

Each part holds the items of :data:`SHARDS_PER_PART` consecutive shards, one Parquet row group per
shard, so a worker reads exactly its shard's rows (one range read) and the driver hands it only
``(shard, part, row group)``. ``shards.parquet`` lists the plan's shards (digest, item count, part,
row group): the next run's baseline, and the shard list that ``index build`` reads instead of a glob.
A run rewrites only the parts whose shards changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from latentsweep import schema, storage
from latentsweep.ingest.plan import SHARDS_PER_PART, Plan, runs

MANIFEST_FOLDER = "manifest"
SHARDS_FILE = schema.INGEST_SHARDS_FILE


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


def read_previous(out: storage.Location) -> tuple[Iterator[pa.Table], pa.Table | None]:
    """The plan stored in ``out``: its items (id, shard, version, label, family) one manifest part at a
    time, so the driver never holds the whole previous plan, and its shard table; nothing for a new
    output."""
    if not storage.exists(out.join(SHARDS_FILE)):
        return iter(()), None
    shards = _read(out.join(SHARDS_FILE))
    schema.check(shards.schema, "manifest", out.join(SHARDS_FILE).uri)
    parts = np.unique(shards.column("part").to_numpy()).tolist()
    columns = ["id", "shard", "version", "label", "family"]
    return (_read(out.join(MANIFEST_FOLDER, part_name(part)), columns=columns) for part in parts), shards


def write(out: storage.Location, plan: Plan, previous_shards: pa.Table | None) -> pa.Table:
    """Store ``plan``: the parts whose shards or digests changed, then ``shards.parquet`` (last, so a
    crash in between leaves the old index of parts or a complete new one). Returns the shard table
    with each shard's ``part`` and ``row_group``."""
    parts = plan.shards.column("shard").to_numpy() // SHARDS_PER_PART
    starts, ends = runs(parts)
    row_groups = np.arange(len(parts)) - np.repeat(starts, ends - starts)
    stored = plan.shards.drop_columns(["fresh"]).append_column("part", pa.array(parts, pa.int32())) \
        .append_column("row_group", pa.array(row_groups, pa.int32()))
    previous, current = _digests_by_part(previous_shards), _digests_by_part(stored)
    for part, members in current.items():
        if previous.get(part) != members:  # else same shards, same items: the stored part is this part
            _write_part(out, part, plan.part_items(part))
    for part in set(previous) - set(current):
        storage.delete(out.join(MANIFEST_FOLDER, part_name(part)))
    storage.write_table(out.join(SHARDS_FILE), stored, schema.tag("manifest"))
    return stored


def _write_part(out: storage.Location, part: int, chunks: Iterable[pa.Table]) -> None:
    """One manifest part: a row group per shard of ``chunks`` (manifest rows sorted by shard and id)."""
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(buffer, schema.MANIFEST_SCHEMA, compression="zstd") as writer:
        for items in chunks:
            for start, end in zip(*(bounds.tolist() for bounds in runs(items.column("shard").to_numpy()))):
                writer.write_table(items.slice(start, end - start), row_group_size=end - start)
    storage.write_bytes(out.join(MANIFEST_FOLDER, part_name(part)), buffer.getvalue().to_pybytes())


def _digests_by_part(shards: pa.Table | None) -> dict[int, list[tuple[int, str]]]:
    if shards is None:
        return {}
    by_part: dict[int, list[tuple[int, str]]] = {}
    for shard, digest, part in zip(*(shards.column(name).to_pylist() for name in ("shard", "digest", "part"))):
        by_part.setdefault(part, []).append((shard, digest))
    return by_part


def read_shard(out: storage.Location, part: int, row_group: int) -> pa.Table:
    """The items of one shard: one row group of its manifest part."""
    return _read(out.join(MANIFEST_FOLDER, part_name(part)), row_groups=[row_group])


def _read(location: storage.Location, row_groups: list[int] | None = None,
          columns: list[str] | None = None) -> pa.Table:
    """Row groups (all by default) of one Parquet file of the plan, read from the file itself (no
    dataset discovery, which costs several times the file's memory)."""
    with storage.parquet_errors(location):
        with storage.filesystem(location).open_input_file(location.fs_path) as handle:
            parquet = pq.ParquetFile(handle)
            return parquet.read_row_groups(row_groups or range(parquet.num_row_groups), columns=columns)
