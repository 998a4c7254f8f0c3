"""URIs and labels of an index's references without holding them: lookup files and ``References``.

An engine holds, per reference, its int64 id (sorted), its label as a small integer code and the code
of its shard; never a URI. URIs are read for the neighbours a search returns, from a lookup file per
shard written once into the node's cache (:mod:`latentsweep.index.cache`) from the shard's metadata
Parquet (read column-projected: id, label, uri; sorted by id in buckets of :data:`REWRITE_ROWS` rows,
so bounded memory): ids ascending, label codes, URI offsets and URI bytes, read with positional
reads. A lookup reads the 4 KiB block of ids holding each wanted id, its URI offsets and the URI
bytes from the block's first wanted URI to its last, nothing else: Parquet row groups were measured
to be too coarse (ids are hashes, so 10,000 neighbours of a batch touch every row group of a
1M-reference shard and decode every URI). The lookup file's own checksum is kept beside it and
checked on every reuse.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from latentsweep import storage
from latentsweep.errors import JobFailed
from latentsweep.index.cache import HASH_CHUNK, file_sha256, unique_temporary, verified_file
from latentsweep.index.manifest import ShardEntry
from latentsweep.index.placement import code_bytes

LOOKUP_ROWS = 512                       # ids (and URI offsets) read per block when fetching URIs: 4 KiB
REWRITE_ROWS = 131_072                  # rows sorted at once when writing an id-sorted copy
METADATA_COLUMNS = ["id", "label", "uri"]
_REWRITES = threading.Semaphore(2)      # metadata rewrites at once (placement.METADATA_REWRITE_BYTES)
MISSING = -1


def _sorted_table(table):
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("label", pa.string()), ("uri", pa.string())])
    table = table.select(METADATA_COLUMNS).cast(schema)
    order = np.argsort(table.column("id").to_numpy(), kind="stable")
    return table.take(pa.array(order))


def sorted_buckets(source: str, scratch: str):
    """``source``'s id, label and uri as tables in ascending id order, at most about
    :data:`REWRITE_ROWS` rows each: rows are dealt into id-range buckets (boundaries from the sorted
    ids) kept as Arrow files in ``scratch``, then each bucket is read back and sorted."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    source_file = pq.ParquetFile(source)
    if source_file.metadata.num_rows <= REWRITE_ROWS:
        yield _sorted_table(source_file.read(columns=METADATA_COLUMNS, use_threads=False))
        return
    ids = source_file.read(columns=["id"], use_threads=False).column("id").to_numpy()
    bounds = np.sort(ids)[REWRITE_ROWS::REWRITE_ROWS]
    del ids
    writers, paths = {}, [os.path.join(scratch, f"bucket-{b:06d}.arrow") for b in range(len(bounds) + 1)]
    try:
        for batch in source_file.iter_batches(batch_size=65_536, columns=METADATA_COLUMNS, use_threads=False):
            buckets = np.searchsorted(bounds, batch.column("id").to_numpy(), side="right")
            for bucket in np.unique(buckets):
                if bucket not in writers:
                    writers[bucket] = ipc.new_file(paths[bucket], batch.schema)
                writers[bucket].write_batch(batch.filter(pa.array(buckets == bucket)))
    finally:
        for writer in writers.values():
            writer.close()
    for bucket in sorted(writers):
        with pa.OSFile(paths[bucket]) as handle:
            table = ipc.open_file(handle).read_all()
        os.unlink(paths[bucket])
        yield _sorted_table(table)


# A lookup file: MAGIC, the header's length (uint64, little-endian), the header (JSON: rows, labels,
# section offsets), then four sections, each 8-byte aligned: ids (int64, ascending), label codes
# (int32 into the header's labels, -1 for NULL), URI offsets (int64, rows + 1) and URI bytes (UTF-8).
LOOKUP_MAGIC = b"LSLOOKUP"
LOOKUP_VERSION = 1
SECTIONS = ("ids", "labels", "uri_offsets", "uri_bytes")


def _codes(encoded, missing: int) -> np.ndarray:
    """The indices of a dictionary-encoded Arrow array as int64, ``missing`` where NULL (numpy only:
    Arrow's compute kernels cost ~27 MB of resident memory the first time they run)."""
    indices = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where NULL
    return (np.where(np.isnan(indices), missing, indices) if encoded.null_count else indices).astype(np.int64)


def write_lookup(source: str, destination: str, scratch: str) -> None:
    """Write the lookup file of the metadata Parquet ``source`` (memory: one bucket of rows)."""
    import shutil
    import struct

    parts = {name: open(os.path.join(scratch, name), "wb") for name in SECTIONS}
    names: dict[str, int] = {}
    rows, uri_total, previous = 0, 0, None
    try:
        parts["uri_offsets"].write(np.zeros(1, np.int64).tobytes())
        for table in sorted_buckets(source, scratch):
            ids = table.column("id").to_numpy()
            if len(ids) and (previous is not None and ids[0] <= previous or np.any(ids[1:] <= ids[:-1])):
                raise JobFailed(f"{source}: an id appears twice in the index metadata")
            previous = ids[-1] if len(ids) else previous
            encoded = table.column("label").combine_chunks().dictionary_encode()
            local = encoded.dictionary.to_pylist()
            mapping = np.array([names.setdefault(name, len(names)) for name in local] + [-1], np.int32)
            codes = mapping[_codes(encoded, len(local))]
            uris = table.column("uri").combine_chunks()
            offsets = np.frombuffer(uris.buffers()[1], np.int32, len(uris) + 1, uris.offset * 4).astype(np.int64)
            data = uris.buffers()[2]
            parts["ids"].write(ids.astype(np.int64).tobytes())
            parts["labels"].write(codes.tobytes())
            parts["uri_offsets"].write((offsets[1:] - offsets[0] + uri_total).tobytes())
            if data is not None:
                parts["uri_bytes"].write(memoryview(data)[offsets[0]:offsets[-1]])
            uri_total += int(offsets[-1] - offsets[0])
            rows += len(ids)
    finally:
        for handle in parts.values():
            handle.close()
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    sizes = {name: os.path.getsize(os.path.join(scratch, name)) for name in SECTIONS}
    header = {"version": LOOKUP_VERSION, "rows": rows, "labels": list(names), "sections": {}}
    reserved = 0
    while True:  # the offsets depend on the header's length: reserve room until the header fits it
        position = len(LOOKUP_MAGIC) + 8 + reserved
        for name in SECTIONS:
            position += -position % 8
            header["sections"][name] = [position, sizes[name]]
            position += sizes[name]
        text = json.dumps(header).encode()
        if len(text) <= reserved:
            text = text.ljust(reserved)  # JSON allows trailing spaces
            break
        reserved = len(text) + 64
    with open(destination, "wb") as out:
        out.write(LOOKUP_MAGIC + struct.pack("<Q", len(text)) + text)
        for name in SECTIONS:
            padding = header["sections"][name][0] - out.tell()
            assert 0 <= padding < 8, "lookup sections are laid out after the header"
            out.write(b"\0" * padding)
            with open(os.path.join(scratch, name), "rb") as part:
                shutil.copyfileobj(part, out, HASH_CHUNK)


def read_lookup_header(path: str) -> dict:
    import struct

    with open(path, "rb") as handle:
        magic, size = handle.read(len(LOOKUP_MAGIC)), handle.read(8)
        if magic != LOOKUP_MAGIC or len(size) != 8:
            raise JobFailed(f"{path} is not a latentsweep lookup file")
        header = json.loads(handle.read(struct.unpack("<Q", size)[0]))
    if header.get("version") != LOOKUP_VERSION:
        raise JobFailed(f"{path} is lookup version {header.get('version')}, expected {LOOKUP_VERSION}")
    return header


def lookup_file(root: str, entry: ShardEntry, cache: str) -> str:
    """A local lookup file of ``entry``'s metadata (ids sorted, label codes, URIs by position), written
    once into ``cache`` from the verified metadata Parquet (read column-projected: id, label, uri) and
    named by its checksum; the file's own checksum, kept beside it in ``.sha256``, is checked on every
    reuse."""
    import shutil
    import tempfile

    final = os.path.join(cache, f"{entry.metadata_sha256}.lookup")
    sidecar = final + ".sha256"
    if os.path.exists(final) and os.path.exists(sidecar):
        with open(sidecar) as handle:
            recorded = handle.read().strip()
        if file_sha256(final) == recorded:
            os.utime(final)
            os.utime(sidecar)
            return final
    source = verified_file(root, entry.metadata_file, entry.metadata_sha256, cache, ".parquet")
    downloaded = storage.Location.parse(root).is_s3
    temporary = unique_temporary(final)
    scratch = tempfile.mkdtemp(dir=cache, prefix=".rewrite-")
    try:
        with _REWRITES:
            write_lookup(source, temporary, scratch)
        digest = file_sha256(temporary)
        os.replace(temporary, final)
        storage.write_bytes(sidecar, (digest + "\n").encode())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if os.path.exists(temporary):
            os.unlink(temporary)
        if downloaded and os.path.exists(source):
            os.unlink(source)  # only the lookup file is kept
    return final


class ShardLookup:
    """URIs of one shard's references by id, read with positional reads from its lookup file: per block
    of :data:`LOOKUP_ROWS` ids holding wanted ids, its ids, its URI offsets and the span of URI bytes
    that covers the wanted ones. Holds the first id of each block (8 bytes per LOOKUP_ROWS references)."""

    def __init__(self, path: str, header: dict, first_ids: np.ndarray):
        self.path, self.header, self.first_ids = path, header, first_ids
        self._fd = None
        self._opening = threading.Lock()

    def _read(self, offset: int, size: int) -> bytes:
        if self._fd is None:
            with self._opening:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise JobFailed(f"{self.path} is truncated")
        return data

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)

    def spans(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The URIs of ``wanted`` (sorted, unique ids) as ``(found, data, starts, stops)``: the UTF-8
        URI of ``wanted[found][i]`` is ``data[starts[i]:stops[i]]``. Three positional reads per block
        of ids holding wanted ids (sorted, so each block's are one run): its ids, its URI offsets, and
        the bytes from its first wanted URI to its last."""
        sections = self.header["sections"]
        ids_at, offsets_at, bytes_at = (sections[name][0] for name in ("ids", "uri_offsets", "uri_bytes"))
        blocks = np.unique(np.searchsorted(self.first_ids, wanted, side="right") - 1)
        first = blocks[blocks >= 0] * LOOKUP_ROWS
        size = np.minimum(self.header["rows"], first + LOOKUP_ROWS) - first
        ids = np.frombuffer(b"".join(self._read(ids_at + 8 * int(row), 8 * int(count))
                                     for row, count in zip(first, size)), np.int64)
        offsets = np.frombuffer(b"".join(self._read(offsets_at + 8 * int(row), 8 * int(count) + 8)
                                         for row, count in zip(first, size)), np.int64)
        hit = np.clip(np.searchsorted(ids, wanted), 0, max(len(ids) - 1, 0))
        found = ids[hit] == wanted if len(ids) else np.zeros(len(wanted), bool)
        hit = hit[found]
        block = np.repeat(np.arange(len(first)), size)[hit]  # a block's offsets hold one entry more than its ids
        starts, stops = offsets[hit + block], offsets[hit + block + 1]
        _, run = np.unique(block, return_index=True)  # where each block's hits begin (they ascend)
        ends = np.append(run[1:], len(hit))
        low, high = starts[run], stops[ends - 1]
        data = b"".join(self._read(bytes_at + int(a), int(b - a)) for a, b in zip(low, high))
        shift = np.repeat(np.cumsum(high - low) - (high - low) - low, ends - run)
        return found, np.frombuffer(data, np.uint8), starts + shift, stops + shift

    def table(self):
        """Every row (id, label, uri) as an Arrow table, read now."""
        import pyarrow as pa

        sections, rows = self.header["sections"], self.header["rows"]
        ids = np.frombuffer(self._read(sections["ids"][0], 8 * rows), np.int64)
        codes = np.frombuffer(self._read(sections["labels"][0], 4 * rows), np.int32)
        names = np.array(self.header["labels"] + [None], dtype=object)
        offsets = np.frombuffer(self._read(sections["uri_offsets"][0], 8 * (rows + 1)), np.int64)
        data = self._read(sections["uri_bytes"][0], int(offsets[-1]))
        uris = pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
        return pa.table({"id": pa.array(ids), "label": pa.array(names[codes].tolist(), pa.string()),
                         "uri": uris.cast(pa.string())})


class References:
    """Per reference: its id (sorted int64), label code (int8/16/32, -1 when NULL) and shard code
    (uint8/16/32; absent with one shard); the label names; each shard's URI lookup."""

    def __init__(self, ids: np.ndarray, label_codes: np.ndarray, label_names: list[str],
                 shard_codes: np.ndarray | None, lookups: list[ShardLookup],
                 copies: tuple[np.ndarray, np.ndarray] | None = None):
        self.ids, self.label_codes, self.label_names = ids, label_codes, label_names
        self.shard_codes, self.lookups = shard_codes, lookups
        # processed copies (ingest/augment.py): their ids, sorted, and their sources' ids
        self.copy_ids, self.copy_sources = copies if copies is not None else (np.zeros(0, np.int64),) * 2
        self._names = np.array(list(label_names) + [None], dtype=object)  # code -1 -> None

    @property
    def nbytes(self) -> int:
        """What the references hold in memory: ids, codes and the lookups' block index."""
        return (self.ids.nbytes + self.label_codes.nbytes + (self.shard_codes.nbytes if self.shard_codes is not None
                                                             else 0)
                + sum(lookup.first_ids.nbytes for lookup in self.lookups)
                + self.copy_ids.nbytes + self.copy_sources.nbytes)

    def sources(self, ids: np.ndarray) -> np.ndarray:
        """The source of each id, shaped like ``ids``: its own id unless it is a processed copy."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.copy_ids):
            return ids
        flat = ids.reshape(-1)
        positions = np.clip(np.searchsorted(self.copy_ids, flat), 0, len(self.copy_ids) - 1)
        copy = self.copy_ids[positions] == flat
        return np.where(copy, self.copy_sources[positions], flat).reshape(ids.shape)

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self.ids):
            return np.zeros(len(flat), np.int64), np.zeros(len(flat), bool)
        positions = np.clip(np.searchsorted(self.ids, flat), 0, len(self.ids) - 1)
        return positions, (self.ids[positions] == flat) & (flat != MISSING)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.positions(ids)[1].reshape(np.shape(ids))

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """Label codes (into ``label_names``) shaped like ``ids``, -1 for missing neighbours and NULL labels."""
        positions, found = self.positions(ids)
        codes = np.where(found, self.label_codes[positions] if len(self.ids) else -1, -1)
        return codes.reshape(np.shape(ids))

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Label names (object array shaped like ``ids``), None for missing neighbours and NULL labels."""
        return self.names_of(self.codes(ids))

    def names_of(self, codes: np.ndarray) -> np.ndarray:
        """Label names of :meth:`codes` (object array), None for -1."""
        return self._names[codes]

    def uri_array(self, ids: np.ndarray):
        """URIs of ``ids`` (flattened) as an Arrow string array, null for missing ids: their bytes
        gathered with numpy from :meth:`_uri_spans`, no Python string per neighbour (a part's 10,000
        neighbours cost milliseconds)."""
        import pyarrow as pa

        valid, data, starts, stops = self._uri_spans(ids)
        offsets = np.zeros(len(valid) + 1, np.int64)
        offsets[1:][valid] = stops - starts
        np.cumsum(offsets, out=offsets)
        if offsets[-1] >= 2**31:
            raise JobFailed(f"the URIs of {len(valid)} neighbours exceed 2 GiB: search fewer queries at once")
        values = data[np.repeat(starts - offsets[:-1][valid], stops - starts) + np.arange(offsets[-1])]
        return pa.StringArray.from_buffers(len(valid), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values),
                                           pa.py_buffer(np.packbits(valid, bitorder="little")),
                                           null_count=int(len(valid) - np.count_nonzero(valid)))

    def _uri_spans(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(valid, data, starts, stops)``: which of ``ids`` (flattened) have a URI, and for those the
        bounds of its bytes in ``data``. Each distinct id is read once, from its shard's lookup file."""
        positions, found = self.positions(ids)
        wanted, inverse = np.unique(positions[found], return_inverse=True)  # positions ascend with ids
        shards = self.shard_codes[wanted] if self.shard_codes is not None else np.zeros(len(wanted), int)
        present = np.zeros(len(wanted), bool)
        starts, stops = np.zeros(len(wanted), np.int64), np.zeros(len(wanted), np.int64)
        chunks, base = [], 0
        for shard in np.unique(shards):
            mine = np.flatnonzero(shards == shard)
            hit, data, first, last = self.lookups[int(shard)].spans(self.ids[wanted[mine]])
            present[mine[hit]] = True
            starts[mine[hit]], stops[mine[hit]] = first + base, last + base
            chunks.append(data)
            base += len(data)
        valid = found.copy()
        valid[found] = present[inverse]
        inverse = inverse[present[inverse]]
        return valid, np.concatenate(chunks or [np.zeros(0, np.uint8)]), starts[inverse], stops[inverse]

    def uris(self, ids: np.ndarray) -> np.ndarray:
        """URIs of ``ids`` (object array shaped like them, None for missing ids), read for these ids only."""
        return self.uri_array(ids).to_numpy(zero_copy_only=False).reshape(np.shape(ids))

    def table(self):
        """Every reference's id, label and uri as one Arrow table, read now from the lookup files (for
        tests and tools; an engine never holds it)."""
        import pyarrow as pa

        tables = [lookup.table() for lookup in self.lookups]
        return pa.concat_tables(tables) if tables else None


class _ReferenceBuilder:
    """Fills the references shard by shard (threads) into arrays allocated once, then sorts them."""

    def __init__(self, counts: list[int], label_names: list[str]):
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.ids = np.empty(total, np.int64)
        self.names = list(label_names)
        self.codes = np.empty(total, np.dtype(f"int{8 * code_bytes(len(self.names))}"))
        shards = len(counts)
        self.shard_codes = (np.empty(total, np.dtype(f"uint{8 * code_bytes(shards, signed=False)}"))
                            if shards > 1 else None)
        self.lookups: list[ShardLookup | None] = [None] * shards
        self.copies: list[tuple[np.ndarray, np.ndarray] | None] = [None] * shards

    def fill_copies(self, position: int, path: str) -> None:
        """The shard's processed copies: (id, source) of its verified copies file."""
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["id", "source"])
        self.copies[position] = (table.column("id").to_numpy(), table.column("source").to_numpy())

    def fill(self, position: int, entry: ShardEntry, path: str) -> None:
        header = read_lookup_header(path)
        rows, sections = header["rows"], header["sections"]
        if rows != entry.count:
            raise JobFailed(f"{entry.metadata_file} holds {rows} rows, the manifest says {entry.count}")
        known = {name: code for code, name in enumerate(self.names)}
        unknown = [name for name in header["labels"] if name not in known]
        if unknown:
            raise JobFailed(f"{entry.metadata_file} has labels the manifest does not list ({', '.join(unknown[:5])}): "
                            f"the index is inconsistent; rebuild it")
        mapping = np.array([known[name] for name in header["labels"]] + [-1], dtype=self.codes.dtype)
        start, stop = self.offsets[position], self.offsets[position + 1]
        with open(path, "rb") as handle:
            handle.seek(sections["ids"][0])
            handle.readinto(memoryview(self.ids[start:stop]).cast("B"))
            handle.seek(sections["labels"][0])
            self.codes[start:stop] = mapping[np.frombuffer(handle.read(4 * rows), np.int32)]
        if self.shard_codes is not None:
            self.shard_codes[start:stop] = position
        self.lookups[position] = ShardLookup(path, header, self.ids[start:stop:LOOKUP_ROWS].copy())

    def finish(self) -> References:
        if self.shard_codes is not None:  # each shard's run is sorted: a stable sort merges the runs
            order = np.argsort(self.ids, kind="stable")
            self.ids = self.ids[order]
            self.codes = self.codes[order]
            self.shard_codes = self.shard_codes[order]
            del order
        found = [part for part in self.copies if part is not None]
        copies = None
        if found:
            ids, sources = np.concatenate([p[0] for p in found]), np.concatenate([p[1] for p in found])
            order = np.argsort(ids)
            copies = (ids[order], sources[order])
        return References(self.ids, self.codes, self.names, self.shard_codes, self.lookups, copies)

