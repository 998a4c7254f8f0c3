"""The node-local cache of an index's files: verified downloads, memory-mapping flags, page release.

Every file the manifest lists is verified against its SHA-256 before use, streamed from disk (a local
index is read in place; an S3 index is downloaded to a local cache file named by its checksum first).
FAISS files are memory-mapped (``IO_FLAG_MMAP_IFC``: Flat and PQ codes, the HNSW graph and its
vectors, IVF lists stay in the file's pages) so no process holds a file's bytes and the deserialised
index at once. Files unused for :data:`CACHE_DAYS` are removed at the next load.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

from latentsweep import storage
from latentsweep.errors import JobFailed

CACHE_VARIABLE = "LATENTSWEEP_CACHE"   # where verified downloads and id-sorted metadata copies live
CACHE_DAYS = 7                          # cache files unused for this long are removed at the next load
HASH_CHUNK = 8 * 2**20


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


def unique_temporary(path: str) -> str:
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
    temporary = unique_temporary(cached)
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

