"""One filesystem abstraction for every stage: local paths, ``file://`` and ``s3://bucket/prefix``.

Stages never touch ``os``/``boto3``/``pyarrow.fs`` directly for their data; they ask this module for
listings, bytes, atomic writes and a pyarrow filesystem. S3 settings come from the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``)
and are never printed: error messages pass through :func:`redact`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import posixpath
import queue
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from urllib.parse import urlparse

from latentsweep.errors import JobFailed, UsageError

if TYPE_CHECKING:
    import pyarrow.fs

# boto3 switches to a multipart upload above this size; S3 makes the object visible only when the
# upload completes, so both paths are atomic.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_UMASK = os.umask(0o022)  # read once (setting it is the only way to read it), then put back
os.umask(_UMASK)
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
S3_CONNECTIONS = 64  # kept-alive connections of the shared S3 client: the most threads that use it at once
DELETE_BATCH = 1000  # keys per DeleteObjects request (S3's limit)


# Failures that a later attempt may not meet: the endpoint is down, overloaded or timed out.
TRANSIENT_CODES = frozenset({"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
                             "ReadTimeoutError", "ConnectionError", "500", "502", "503", "504",
                             "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"})


# Failures of the set-up rather than of one object: missing or refused credentials, a bucket that
# does not exist or refuses us. Every other item would meet them too.
SETUP_CODES = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                         "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                         "InvalidToken", "TokenRefreshRequired", "AccessDenied", "AllAccessDisabled", "403",
                         "NoSuchBucket", "InvalidBucketName", "NoRegionError"})
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"})
MISSING_CREDENTIAL_CODES = frozenset({"NoCredentialsError", "PartialCredentialsError",
                                      "CredentialRetrievalError", "ExpiredToken", "ExpiredTokenException",
                                      "InvalidToken", "TokenRefreshRequired"})


class StorageError(JobFailed):
    """A storage operation failed; the message names the URI and never a credential. ``code``: the
    S3 error code or exception type. ``systemic``: the store did not answer (``transient``) or refused
    the set-up (credentials, bucket): the job stops instead of recording the item as failed, nothing
    is marked done, and a rerun resumes."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    @property
    def systemic(self) -> bool:
        return self.transient or self.code in SETUP_CODES

    def __reduce__(self):  # keep ``code`` when Ray ships the error between processes
        return type(self), (str(self), self.code)


class MissingInput(UsageError, StorageError):
    """An input the user named does not exist (a folder, a bucket): a usage error (exit code 2)."""


def refuse_relative_in_ray_job(path: str) -> None:
    """A relative local path given to a Ray job's driver (``ray job submit --working-dir``) would
    resolve inside Ray's temporary copy of the working directory, which goes away with the job."""
    from latentsweep.cluster import in_ray_job  # cluster imports nothing of ours: no cycle

    if not os.path.isabs(path) and in_ray_job():
        raise UsageError(f"{path!r} is a relative path inside a Ray job (it would resolve in Ray's temporary "
                         "copy of the working directory): pass an absolute path or an s3:// URI")


@dataclass(frozen=True)
class Location:
    """A parsed URI. ``key`` is an absolute local path, or the object key (prefix) inside ``bucket``."""

    scheme: str  # "file" or "s3"
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str | os.PathLike) -> "Location":
        text = os.fspath(uri)
        if text.startswith("s3://"):
            parsed = urlparse(text)
            if not parsed.netloc:
                raise StorageError(f"S3 URI without a bucket: {text!r}")
            return cls("s3", parsed.netloc, parsed.path.lstrip("/"))
        if text.startswith("file://"):
            text = urlparse(text).path
        elif "://" in text:
            raise StorageError(f"unsupported URI scheme in {text!r}: use a local path, file:// or s3://")
        refuse_relative_in_ray_job(text)
        return cls("file", "", os.path.abspath(text))

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key

    @property
    def fs_path(self) -> str:
        """The path as a pyarrow filesystem expects it ("bucket/key" on S3)."""
        return f"{self.bucket}/{self.key}".rstrip("/") if self.is_s3 else self.key

    def join(self, *parts: str) -> "Location":
        for part in parts:
            if part.startswith("/") or ".." in part.split("/"):
                raise StorageError(f"refusing to leave {self.uri}: {part!r}")
        joined = posixpath.join(self.key, *parts) if self.is_s3 else os.path.join(self.key, *parts)
        return Location(self.scheme, self.bucket, joined)

    def relative(self, child_uri: str) -> str:
        """The part of ``child_uri`` below this location (for labels from folder layouts)."""
        child = Location.parse(child_uri)
        base = self.key.rstrip("/")
        return child.key[len(base):].lstrip("/") if child.key.startswith(base) else child.key


@dataclass(frozen=True)
class FileInfo:
    uri: str
    size: int
    version: str  # S3 ETag or local mtime in ns: changes when the content may have changed


def redact(text: str) -> str:
    """Remove the values of credential variables from ``text`` (for logs, errors and summaries)."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


@lru_cache(maxsize=None)
def _s3_client(endpoint: str | None, region: str | None, attempts: int):
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if endpoint else "auto"},
        retries={"max_attempts": attempts, "mode": "standard"},
        # one client serves the thread pools of this module and of the listing (version checks): without
        # this, urllib3 keeps 10 connections and opens and drops one per request beyond them
        max_pool_connections=S3_CONNECTIONS,
    )
    # A fresh session, not boto3's default one: that caches the credentials it first resolved.
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def s3_client():
    """A boto3 S3 client configured from the standard AWS variables (cached per endpoint);
    ``AWS_MAX_ATTEMPTS`` (default 5) bounds boto3's retries with backoff."""
    return _s3_client(os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"),
                      os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                      int(os.environ.get("AWS_MAX_ATTEMPTS") or 5))


def filesystem(location: Location) -> "pyarrow.fs.FileSystem":
    """A pyarrow filesystem for Parquet and Ray Data, rooted like :attr:`Location.fs_path`."""
    import pyarrow.fs as pafs

    if not location.is_s3:
        return pafs.LocalFileSystem()
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    options = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options)


def error_code(error: Exception) -> str:
    """The S3 error code of a botocore error ("NoSuchKey", "PreconditionFailed", ...), else its type name."""
    return getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)


def explain(error: Exception, location: Location, action: str) -> StorageError:
    """A botocore error as a :class:`StorageError` that names the URI, never a credential."""
    return storage_error(error_code(error), location, action)


def storage_error(code: str, location: Location, action: str) -> StorageError:
    hint, kind = "", StorageError
    if code in CREDENTIAL_CODES:
        hint = (f" on {_node_name()} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment of "
                f"every Ray node or the job's runtime env, and the bucket policy)")
    elif code in MISSING_CREDENTIAL_CODES:
        hint = (f" on {_node_name()} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the "
                f"environment of every node's `ray start`, or in the job's runtime env with `ray job submit "
                f"--runtime-env-json`, or give the nodes an instance profile)")
    elif code == "NoSuchBucket":
        hint, kind = " (the bucket does not exist)", MissingInput
    elif code in TRANSIENT_CODES:
        hint = " (the store did not answer after retries: rerun when it is back; finished work is kept)"
    return kind(redact(f"cannot {action} {location.uri}: {code}{hint}"), code)


# pyarrow's S3 filesystem (Parquet reads) reports AWS errors by kind: "AWS Error ACCESS_DENIED during ..."
ARROW_S3_CODES = {"ACCESS_DENIED": "AccessDenied", "INVALID_ACCESS_KEY_ID": "InvalidAccessKeyId",
                  "SIGNATURE_DOES_NOT_MATCH": "SignatureDoesNotMatch", "NO_SUCH_BUCKET": "NoSuchBucket",
                  "NETWORK_CONNECTION": "EndpointConnectionError", "SERVICE_UNAVAILABLE": "ServiceUnavailable",
                  "SLOW_DOWN": "SlowDown", "INTERNAL_FAILURE": "InternalError", "REQUEST_TIMEOUT": "RequestTimeout"}


def _arrow_code(message: str) -> str:
    import re

    found = re.search(r"AWS Error ([A-Z_]+)", message)
    return ARROW_S3_CODES.get(found.group(1), "") if found else ""


def _node_name() -> str:
    """This process's host (and Ray node, inside Ray), to say which node of a cluster lacks a setting."""
    import socket

    try:
        import ray

        if ray.is_initialized():
            return f"Ray node {ray.get_runtime_context().get_node_id()[:12]} on {socket.gethostname()}"
    except Exception:  # outside Ray, or Ray not importable here
        pass
    return socket.gethostname()


def list_files(root: str | Location, page_size: int = 1000, missing_ok: bool = False) -> Iterator[FileInfo]:
    """Every file below ``root`` (recursive), in sorted key order. S3 listings follow pagination, a
    page at a time; a local folder is walked a folder at a time (never the whole tree in memory).
    ``missing_ok``: a local folder that does not exist lists as empty (an S3 prefix always does)."""
    location = root if isinstance(root, Location) else Location.parse(root)
    if location.is_s3:
        prefix = location.key.rstrip("/") + "/" if location.key else ""
        try:
            for files in _pages(location.bucket, prefix, page_size):
                yield from files
        except Exception as error:  # botocore raises several unrelated types
            raise explain(error, location, "list") from None
        return
    if os.path.isfile(location.key):
        stat = os.stat(location.key)
        yield FileInfo(location.key, stat.st_size, str(stat.st_mtime_ns))
        return
    if not os.path.isdir(location.key):
        if missing_ok:
            return
        raise MissingInput(f"no such file or folder: {location.key}")
    for path in _walk(location.key):
        stat = os.stat(path)
        yield FileInfo(path, stat.st_size, str(stat.st_mtime_ns))


def _walk(top: str) -> Iterator[str]:
    """The files below ``top`` in the order of their sorted paths (what ``sorted(os.walk(...))`` gives,
    with the same rules: symbolic links to folders are not followed, unreadable folders are passed
    over), holding one folder's entries at a time. A folder sorts as its name and "/", which is where
    its files fall among its siblings in a sort of whole paths."""
    folders = [iter(_entries(top))]
    while folders:
        entry = next(folders[-1], None)
        if entry is None:
            folders.pop()
        elif _is_folder(entry):
            if not entry.is_symlink():
                folders.append(iter(_entries(entry.path)))
        else:
            yield entry.path


def _entries(folder: str) -> list:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name + "/" if _is_folder(entry) else entry.name)
    except OSError:
        return []


def _is_folder(entry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _pages(bucket: str, prefix: str, page_size: int = 1000, delimiter: str = "") -> Iterator[list]:
    """The pages of a ``list_objects_v2`` listing: its files (:func:`_page_files`), and with a
    ``delimiter``, files and folders (common prefixes, as strings) together in key order."""
    options = {"Delimiter": delimiter} if delimiter else {}
    for page in s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}, **options):
        files = _page_files(bucket, page)
        if not delimiter:
            yield files
            continue
        folders = [entry["Prefix"] for entry in page.get("CommonPrefixes", [])]
        keyed = [(info.uri[len(bucket) + 6:], info) for info in files] + [(folder, folder) for folder in folders]
        yield [entry for _, entry in sorted(keyed, key=lambda pair: pair[0])]


def _page_files(bucket: str, page: dict) -> list[FileInfo]:
    """The files of one ``list_objects_v2`` page (folder placeholder keys ending in "/" left out)."""
    return [FileInfo(f"s3://{bucket}/{item['Key']}", item["Size"], item["ETag"].strip('"'))
            for item in page.get("Contents", []) if not item["Key"].endswith("/")]


LISTING_THREADS = 16
PAGES_AHEAD = 2  # pages a listing stream fetches before they are read


def list_tree(root: str | Location, threads: int = LISTING_THREADS, pages_ahead: int = PAGES_AHEAD,
              page_size: int = 1000) -> Iterator[FileInfo]:
    """Every file below ``root`` like :func:`list_files`, but an S3 prefix is listed by parallel
    streams, page by page: the top level (``Delimiter="/"``) and one paginated stream per top-level
    folder, a window of ``threads`` folders at a time, each stream fetching at most ``pages_ahead``
    pages before they are read. So a corpus laid out as ``root/<label or date>/...`` is listed
    ``threads`` requests at a time, and the listing holds at most ``(threads + 1) * (pages_ahead + 1) + 1``
    pages of ``page_size`` keys whatever the prefix holds: a flat prefix is one stream, a
    date-partitioned one a window of folders, neither ever a list in memory.

    Order: the pages of the window's streams in turn (the top level's among them), the same for the
    same objects, not sorted: the planner needs none (an item's id comes from its URI, a listing
    names each object once, and new items fill shards in id order). A local folder: :func:`list_files`."""
    location = root if isinstance(root, Location) else Location.parse(root)
    if not location.is_s3:
        yield from list_files(location)
        return
    from concurrent.futures import ThreadPoolExecutor

    prefix = location.key.rstrip("/") + "/" if location.key else ""
    threads = max(1, threads)
    stop = threading.Event()
    # a thread for each stream that may run at once: no stream waits behind another that waits for its reader
    pool = ThreadPoolExecutor(max_workers=threads + 1, thread_name_prefix="listing")
    try:
        top = iter(_Stream(pool, stop, location, lambda: _pages(location.bucket, prefix, page_size, "/"),
                           pages_ahead))
        window: deque = deque()  # the folders' streams being read, in turn
        waiting: deque = deque()  # folders found at the top level whose stream has not started
        top_done = False
        while True:
            if not top_done and len(waiting) < threads:  # the top level: a page a turn, paused while folders wait
                page = next(top, None)
                top_done = page is None
                for entry in page or ():
                    if isinstance(entry, str):
                        waiting.append(Location("s3", location.bucket, entry.rstrip("/")))
                    else:
                        yield entry
            while waiting and len(window) < threads:
                window.append(iter(_Stream(pool, stop, waiting[0], functools.partial(
                    _pages, location.bucket, waiting[0].key + "/", page_size), pages_ahead)))
                waiting.popleft()
            if window:
                stream = window.popleft()
                page = next(stream, None)
                if page is not None:
                    window.append(stream)
                    yield from page
            elif top_done:
                return
    finally:
        stop.set()  # streams still running stop before their next page
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


class _Stream:
    """The pages of one listing, fetched by a thread of ``pool`` at most ``ahead`` pages before they
    are read (a bounded queue); its errors are raised to the reader. ``stop`` ends it early."""

    def __init__(self, pool, stop: threading.Event, location: Location, pages: Callable[[], Iterable[list]],
                 ahead: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop, self._location = stop, location
        pool.submit(self._fetch, pages)

    def _fetch(self, pages: Callable[[], Iterable[list]]) -> None:
        try:
            for page in pages():
                if not self._put(page):
                    return
            self._put(_END)
        except Exception as error:  # botocore raises several unrelated types
            self._put(explain(error, self._location, "list"))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, StorageError):
                raise item
            yield item


def read_json_folder(folder: str | Location, threads: int = LISTING_THREADS) -> list[dict]:
    """Every JSON record in a folder (done markers), in key order; none if the folder is missing.
    Objects are fetched ``threads`` at a time (one marker a shard: thousands of small GETs)."""
    from concurrent.futures import ThreadPoolExecutor

    uris = [item.uri for item in list_files(folder, missing_ok=True)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [json.loads(data) for data in pool.map(read_bytes, uris)]


def info(uri: str | Location) -> FileInfo:
    """Size and version (ETag or mtime) of one file."""
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    if not location.is_s3:
        stat = os.stat(location.key)
        return FileInfo(location.key, stat.st_size, str(stat.st_mtime_ns))
    try:
        head = s3_client().head_object(Bucket=location.bucket, Key=location.key)
    except Exception as error:
        raise explain(error, location, "stat") from None
    return FileInfo(location.uri, head["ContentLength"], head["ETag"].strip('"'))


def exists(uri: str | Location) -> bool:
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    if not location.is_s3:
        return os.path.exists(location.key)
    try:
        s3_client().head_object(Bucket=location.bucket, Key=location.key)
        return True
    except Exception as error:
        if error_code(error) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise explain(error, location, "check") from None


def read_bytes(uri: str | Location) -> bytes:
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    if not location.is_s3:
        with open(location.key, "rb") as handle:
            return handle.read()
    try:
        return s3_client().get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    except Exception as error:
        raise explain(error, location, "read") from None


def write_bytes(uri: str | Location, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole object, never a part.

    Locally: a temporary file in the same folder, fsync, then ``os.replace``. On S3: one PUT, or a
    multipart upload above :data:`MULTIPART_THRESHOLD` (boto3 aborts it on failure).
    """
    _write_stream(uri, io.BytesIO(data))


def upload(path: str, uri: str | Location) -> None:
    """Copy the local file ``path`` to ``uri`` as :func:`write_bytes` writes, streamed: never held in
    memory (a large file goes up in multipart parts)."""
    with open(path, "rb") as source:
        _write_stream(uri, source)


def _write_stream(uri: str | Location, source) -> None:
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    if location.is_s3:
        from boto3.s3.transfer import TransferConfig

        try:
            s3_client().upload_fileobj(source, location.bucket, location.key,
                                       Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD))
        except Exception as error:
            raise explain(error, location, "write") from None
        return
    import shutil

    folder = os.path.dirname(location.key)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(location.key))
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the team what the umask allows
        with os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, location.key)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def delete(uri: str | Location) -> None:
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    if not location.is_s3:
        if os.path.exists(location.key):
            os.unlink(location.key)
        return
    try:
        s3_client().delete_object(Bucket=location.bucket, Key=location.key)
    except Exception as error:
        raise explain(error, location, "delete") from None


def delete_many(uris: Iterable[str | Location]) -> int:
    """Delete every file of ``uris`` (missing ones are no error); returns how many were asked for. On S3
    the keys of one bucket go :data:`DELETE_BATCH` to a ``DeleteObjects`` request, not one request each:
    1,000 times fewer requests for a large prefix. ``uris`` may be a stream (a listing): a batch at a time
    is held. A key S3 refuses to delete raises :class:`StorageError` naming it."""
    count, batch, bucket = 0, [], None
    for uri in uris:
        location = uri if isinstance(uri, Location) else Location.parse(uri)
        count += 1
        if not location.is_s3:
            delete(location)
            continue
        if batch and (location.bucket != bucket or len(batch) == DELETE_BATCH):
            _delete_batch(bucket, batch)
            batch = []
        bucket = location.bucket
        batch.append(location.key)
    if batch:
        _delete_batch(bucket, batch)
    return count


def _delete_batch(bucket: str, keys: list[str]) -> None:
    try:
        response = s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys],
                                                                      "Quiet": True})
    except Exception as error:
        raise explain(error, Location("s3", bucket, keys[0]), f"delete {len(keys)} objects from") from None
    errors = [error for error in response.get("Errors", []) if error.get("Code") not in ("NoSuchKey", "404")]
    if errors:
        first = errors[0]
        raise storage_error(first.get("Code", "DeleteError"), Location("s3", bucket, first.get("Key", "")),
                            f"delete ({len(errors)} of {len(keys)} keys refused)")


def delete_prefix(root: str | Location, keep: Callable[[FileInfo], bool] | None = None) -> int:
    """Delete every file below ``root`` (recursive) but those ``keep`` holds, streamed from the listing
    and on S3 by :func:`delete_many`'s batches (a prefix of 1M objects: 1,000 LIST and 1,000
    ``DeleteObjects`` requests). Returns how many were deleted; a missing folder deletes nothing."""
    return delete_many(info.uri for info in list_files(root, missing_ok=True) if keep is None or not keep(info))


def download(uri: str | Location, destination: str) -> None:
    """Copy one object to a local file atomically (boto3 transfers are parallel and multipart)."""
    location = uri if isinstance(uri, Location) else Location.parse(uri)
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    temporary = destination + ".part"
    try:
        if location.is_s3:
            s3_client().download_file(location.bucket, location.key, temporary)
        else:
            with open(location.key, "rb") as source, open(temporary, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        os.replace(temporary, destination)
    except Exception as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise explain(error, location, "download") from None


def write_table(uri: str | Location, table, metadata: dict[str, str] | None = None) -> None:
    """Write a pyarrow table as one Parquet file, atomically (see :func:`write_bytes`)."""
    write_bytes(uri, table_bytes(table, metadata))


def table_bytes(table, metadata: dict[str, str] | None = None) -> bytes:
    """A pyarrow table as the bytes of one zstd-compressed Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()


def read_table(uri: str | Location, columns: list[str] | None = None):
    """Read one Parquet file or a folder of them; errors name the file."""
    import pyarrow.parquet as pq

    location = uri if isinstance(uri, Location) else Location.parse(uri)
    with parquet_errors(location):
        return pq.read_table(location.fs_path, filesystem=filesystem(location), columns=columns)


def read_schema(uri: str | Location):
    """The schema of one Parquet file, from its footer only (cheap checks before a job starts)."""
    import pyarrow.parquet as pq

    location = uri if isinstance(uri, Location) else Location.parse(uri)
    with parquet_errors(location):
        return pq.read_schema(location.fs_path, filesystem=filesystem(location))


def parse_table(data: bytes, uri: str | Location):
    """A Parquet file already read (e.g. to checksum the same bytes); errors name ``uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with parquet_errors(uri if isinstance(uri, Location) else Location.parse(uri)):
        return pq.read_table(pa.BufferReader(data))


@contextlib.contextmanager
def parquet_errors(location: Location):
    try:
        yield
    except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
        if location.is_s3 and (code := _arrow_code(str(error))):  # the store or the set-up, not the file
            raise storage_error(code, location, "read Parquet") from None
        raise StorageError(redact(f"cannot read Parquet {location.uri}: {error}")) from None
