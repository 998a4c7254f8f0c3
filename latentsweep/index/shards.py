"""Load a sharded index (checksums verified), search every shard and merge the results.

Merging keeps each shard's global int64 ids, so search over the shards equals one index over all
vectors (exact for Flat). Shards move to GPUs when the installed faiss has them and
:func:`latentsweep.index.placement.place` says FAISS can search them there.

Loading (threads, one shard each): every file the manifest lists is verified against its SHA-256
before use, streamed from disk (a local index is read in place; an S3 index is downloaded to a local
cache file named by its checksum first), then the FAISS file is memory-mapped (``IO_FLAG_MMAP_IFC``:
Flat and PQ codes, the HNSW graph and its vectors, IVF lists stay in the file's pages; ids and
centroids are read) so no process holds the file's bytes and the deserialised index at once.

References: an engine holds, per reference, its int64 id (sorted), its label as a small integer code
and the code of its shard; never a URI. URIs are read for the neighbours a search returns, from a
lookup file per shard written once into the local cache from the shard's metadata Parquet (read
column-projected: id, label, uri; sorted by id in buckets of :data:`REWRITE_ROWS` rows, so bounded
memory): ids ascending, label codes, URI offsets and URI bytes, read with positional reads. A lookup
reads the 4 KiB block of ids holding each wanted id and that URI's bytes, nothing else: Parquet row
groups were measured to be too coarse (ids are hashes, so 10,000 neighbours of a batch touch every
row group of a 1M-reference shard and decode every URI). The lookup file's own checksum is kept
beside it and checked on every reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError
from latentsweep.index import factory
from latentsweep.index.manifest import Manifest, ShardEntry, locate
from latentsweep.index.placement import GPU_MAX_K, code_bytes, place
from latentsweep.index.scaler import Scaler

CACHE_VARIABLE = "LATENTSWEEP_CACHE"   # where verified downloads and id-sorted metadata copies live
CACHE_DAYS = 7                          # cache files unused for this long are removed at the next load
LOAD_THREADS = 8                        # shards downloaded, verified and mapped at once
LOOKUP_ROWS = 512                       # ids (and URI offsets) read per block when fetching URIs: 4 KiB
REWRITE_ROWS = 131_072                  # rows sorted at once when writing an id-sorted copy
HASH_CHUNK = 8 * 2**20
METADATA_COLUMNS = ["id", "label", "uri"]
_REWRITES = threading.Semaphore(2)      # metadata rewrites at once (placement.METADATA_REWRITE_BYTES)
MISSING = -1


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-way merge of per-shard (scores, ids), highest score first; missing hits are id -1
    (FAISS's marker; ids are signed, so only -1 itself means missing)."""
    scores = np.concatenate([r[0] for r in results], axis=1)
    ids = np.concatenate([r[1] for r in results], axis=1)
    scores = np.where(ids == MISSING, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    if top_scores.shape[1] < k:
        pad = k - top_scores.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=MISSING)
    return top_scores.astype(np.float32), top_ids


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def cache_dir() -> str:
    """``$LATENTSWEEP_CACHE`` or ``~/.cache/latentsweep``: on local disk (mapped files must not live in
    RAM-backed ``/tmp``)."""
    folder = os.environ.get(CACHE_VARIABLE) or os.path.join(os.path.expanduser("~"), ".cache", "latentsweep")
    os.makedirs(folder, exist_ok=True)
    return folder


def file_sha256(path: str) -> str:
    """SHA-256 of a file, streamed (never the whole file in memory)."""
    digest, buffer = hashlib.sha256(), bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while read := handle.readinto(buffer):
            digest.update(view[:read])
    return digest.hexdigest()


def _mismatch(uri: str, expected: str, found: str) -> JobFailed:
    return JobFailed(f"checksum mismatch for {uri}: the file is corrupt or was replaced "
                     f"(expected sha256 {expected[:16]}..., found {found[:16]}...)")


def _unique_temporary(path: str) -> str:
    return f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"


def verified_file(root: str, relative: str, expected: str, cache: str, suffix: str = "") -> str:
    """A local path to a file the manifest lists, its SHA-256 verified now: the file itself for a local
    index; for S3, a download into ``cache`` named by the checksum (reused when it still verifies)."""
    location = storage.Location.parse(root).join(relative)
    if not location.is_s3:
        if not os.path.isfile(location.key):
            raise JobFailed(f"{location.uri} is missing: the index is incomplete")
        found = file_sha256(location.key)
        if found != expected:
            raise _mismatch(location.uri, expected, found)
        return location.key
    cached = os.path.join(cache, expected + suffix)
    if os.path.exists(cached) and file_sha256(cached) == expected:
        os.utime(cached)
        return cached
    temporary = _unique_temporary(cached)
    try:
        storage.download(location, temporary)
        found = file_sha256(temporary)
        if found != expected:
            raise _mismatch(location.uri, expected, found)
        os.replace(temporary, cached)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return cached


def read_flags() -> int:
    """FAISS read flags that map the file instead of copying it: ``IO_FLAG_MMAP_IFC`` (faiss 1.11+:
    Flat/PQ/SQ codes, HNSW graph and storage, IVF lists) read-only; older faiss maps IVF lists only
    (``IO_FLAG_MMAP``) and reads other types from the file into memory (still never file bytes and
    index at once)."""
    import faiss

    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP


def release_mapped_pages(path: str) -> int:
    """Drop this process's resident pages of every mapping of ``path`` (Linux ``madvise(MADV_DONTNEED)``
    on a read-only file mapping: the data stays in the page cache and is faulted in again when touched).
    Called once a mapped index is read: FAISS copies some parts out of the mapping (an IDMap's ids, HNSW
    levels, IVF list sizes), and the pages it read them from would otherwise stay counted in the
    process's resident memory (8 bytes a vector for an IDMap); the vectors are faulted in by the first
    search. Returns the bytes advised (0 where unsupported)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            ranges = [line.split()[0] for line in maps if line.rstrip("\n").endswith(" " + target)]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return 0
    released = 0
    for address in ranges:
        start, stop = (int(value, 16) for value in address.split("-"))
        if libc.madvise(start, stop - start, 4) == 0:  # MADV_DONTNEED
            released += stop - start
    return released


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
    temporary = _unique_temporary(final)
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


def clean_cache(cache: str, days: float = CACHE_DAYS) -> None:
    """Remove cache files unused for ``days`` (every load touches the files it uses)."""
    limit = time.time() - days * 86_400
    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        try:
            if os.path.isfile(path) and os.stat(path).st_mtime < limit:
                os.unlink(path)
        except OSError:
            pass  # another process removed or is replacing it


class ShardLookup:
    """URIs of one shard's references by id, read with positional reads from its lookup file: per
    wanted id, the block of :data:`LOOKUP_ROWS` ids and URI offsets that holds it (read once per block)
    and the URI's own bytes. Holds the first id of each block (8 bytes per LOOKUP_ROWS references)."""

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

    def uris(self, wanted: np.ndarray) -> list:
        """URIs of ``wanted`` (sorted, unique ids), None for an id this shard lacks."""
        sections, rows = self.header["sections"], self.header["rows"]
        out = [None] * len(wanted)
        blocks = np.searchsorted(self.first_ids, wanted, side="right") - 1
        for block in np.unique(blocks[blocks >= 0]):
            first, last = int(block) * LOOKUP_ROWS, min(rows, (int(block) + 1) * LOOKUP_ROWS)
            ids = np.frombuffer(self._read(sections["ids"][0] + 8 * first, 8 * (last - first)), np.int64)
            offsets = np.frombuffer(self._read(sections["uri_offsets"][0] + 8 * first, 8 * (last - first + 1)),
                                    np.int64)
            mine = np.flatnonzero(blocks == block)
            local = np.clip(np.searchsorted(ids, wanted[mine]), 0, len(ids) - 1)
            for row, position in zip(mine, local):
                if ids[position] == wanted[row]:
                    start, stop = int(offsets[position]), int(offsets[position + 1])
                    out[row] = self._read(sections["uri_bytes"][0] + start, stop - start).decode()
        return out

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
                 shard_codes: np.ndarray | None, lookups: list[ShardLookup]):
        self.ids, self.label_codes, self.label_names = ids, label_codes, label_names
        self.shard_codes, self.lookups = shard_codes, lookups
        self._names = np.array(list(label_names) + [None], dtype=object)  # code -1 -> None

    @property
    def nbytes(self) -> int:
        """What the references hold in memory: ids, codes and the lookups' block index."""
        return (self.ids.nbytes + self.label_codes.nbytes + (self.shard_codes.nbytes if self.shard_codes is not None
                                                             else 0)
                + sum(lookup.first_ids.nbytes for lookup in self.lookups))

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self.ids):
            return np.zeros(len(flat), np.int64), np.zeros(len(flat), bool)
        positions = np.clip(np.searchsorted(self.ids, flat), 0, len(self.ids) - 1)
        return positions, (self.ids[positions] == flat) & (flat != MISSING)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.positions(ids)[1].reshape(np.shape(ids))

    def labels(self, ids: np.ndarray) -> np.ndarray:
        """Label names (object array shaped like ``ids``), None for missing neighbours and NULL labels."""
        positions, found = self.positions(ids)
        codes = np.where(found, self.label_codes[positions] if len(self.ids) else -1, -1)
        return self._names[codes].reshape(np.shape(ids))

    def uris(self, ids: np.ndarray) -> np.ndarray:
        """URIs of ``ids`` (object array shaped like them), read for these ids only."""
        positions, found = self.positions(ids)
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.full(len(flat), None, dtype=object)
        wanted, inverse = np.unique(flat[found], return_inverse=True)
        if len(wanted):
            unique_positions = np.searchsorted(self.ids, wanted)
            shards = self.shard_codes[unique_positions] if self.shard_codes is not None else np.zeros(len(wanted), int)
            values = np.full(len(wanted), None, dtype=object)
            for shard in np.unique(shards):
                mine = np.flatnonzero(shards == shard)
                values[mine] = self.lookups[int(shard)].uris(wanted[mine])
            out[np.flatnonzero(found)] = values[inverse]
        return out.reshape(np.shape(ids))

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
        return References(self.ids, self.codes, self.names, self.shard_codes, self.lookups)


class ShardedIndex:
    """A loaded index: the manifest, the scaler, one FAISS index per shard (on the device its placement
    says) and the references (ids, label codes, URI lookups)."""

    def __init__(self, root: str, manifest: Manifest, indices: list, references: References | None,
                 placement=None, gpu_resources: dict | None = None):
        self.root, self.manifest, self.indices, self.references = root, manifest, indices, references
        self.placement, self.gpu_resources = placement, gpu_resources or {}
        self.scaler = Scaler.from_dict(manifest.scaler)

    @property
    def metadata(self):
        """id, label and uri of every reference, read from disk now (never held)."""
        return self.references.table() if self.references else None

    @classmethod
    def load(cls, root: str, shard_ids: list[int] | None = None, use_gpu: bool = True,
             load_vectors: bool = True, load_metadata: bool = True, k: int | None = None,
             threads: int = LOAD_THREADS) -> "ShardedIndex":
        """``shard_ids``: only these shards (an index part); ``load_vectors=False``: manifest, scaler and
        references only, for a front that searches through part actors; ``load_metadata=False``: no
        references (an index part only searches); ``k``: the largest k this index will be searched
        with (above FAISS-GPU's 2048 its shards stay on the CPU). Shards load in ``threads`` threads."""
        import faiss

        root, manifest = locate(root)  # INDEX (its current version) or INDEX/v-NNNNNN (pinned)
        entries = [s for s in manifest.shards if shard_ids is None or s.shard_id in shard_ids]
        cache = cache_dir()
        clean_cache(cache)
        gpus = gpu_count() if use_gpu and load_vectors else 0
        placement = place(manifest.index_spec, k or 1, gpus, len(entries), manifest.search_params)
        builder = _ReferenceBuilder([entry.count for entry in entries], sorted(manifest.labels)) \
            if load_metadata else None

        def load_shard(position: int, entry: ShardEntry):
            if builder is not None:
                builder.fill(position, entry, lookup_file(root, entry, cache))
            if not load_vectors:
                return None
            path = verified_file(root, entry.index_file, entry.index_sha256, cache, ".faiss")
            index = faiss.read_index(path, read_flags())
            release_mapped_pages(path)
            if index.d != manifest.dimension:
                raise JobFailed(f"{entry.index_file} has dimension {index.d}, the manifest says {manifest.dimension}")
            factory.apply_search_params(index, manifest.search_params)
            return index

        with ThreadPoolExecutor(max(1, min(threads, len(entries)))) as pool:
            indices = [index for index in pool.map(load_shard, range(len(entries)), entries) if index is not None]
        resources = {device: faiss.StandardGpuResources() for device in placement.gpus_used}
        for position, device in enumerate(placement.devices if indices else ()):
            if device is not None:  # one shard at a time: its mapped pages are copied to the GPU, then unmapped
                indices[position] = faiss.index_cpu_to_gpu(resources[device], device, indices[position])
        references = builder.finish() if builder is not None else None
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # Arrow keeps freed buffers of the metadata reads otherwise
        return cls(root, manifest, indices, references, placement, resources)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Raw pooled vectors (columns concatenated as in the manifest) -> z-scored, L2-normalised."""
        if vectors.shape[1] != self.manifest.dimension:
            raise UsageError(f"query vectors have {vectors.shape[1]} dims, the index has {self.manifest.dimension}")
        return self.scaler.transform(vectors)

    def search(self, prepared: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard: (scores float32 (n, k), ids int64 (n, k))."""
        if k > GPU_MAX_K and self.placement is not None and self.placement.gpus_used:
            raise UsageError(f"k={k} is above FAISS-GPU's limit of {GPU_MAX_K} and this index was loaded onto "
                             f"GPUs: load it with k={k} (its shards then stay on the CPU)")
        results = [index.search(prepared, min(k, max(index.ntotal, 1))) for index in self.indices]
        return merge(results, k)
