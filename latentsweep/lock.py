"""One writer per output: a second run on the same output is refused while the first is alive.

Locally the lock is ``flock`` on ``OUT/_lock``: the kernel drops it when its process ends, however
it ends, so a rerun after a crash never waits; a run that ends removes the file (and the folders it
created, when still empty). On S3 it is a lease object ``OUT/_lock.json`` created
with a conditional PUT (``If-None-Match: *``), renewed by a heartbeat with ``If-Match`` and deleted at
the end (a delete that fails says so on stderr, naming the lock). A lease left by a killed run is taken
over when its holder is known dead (same host, no such process) or when it has not been renewed for
:data:`LEASE_SECONDS`. The conditional requests need boto3 1.35.69 or later (pyproject.toml).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Iterator

from latentsweep import storage
from latentsweep.errors import JobFailed

LOCK_FILE = "_lock"
LEASE_FILE = "_lock.json"
# How long a lease lives without renewal; LATENTSWEEP_LEASE_SECONDS changes it (all writers of one
# output must agree).
LEASE_SECONDS = float(os.environ.get("LATENTSWEEP_LEASE_SECONDS") or 120)
RENEW_SECONDS = LEASE_SECONDS / 4
PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")  # another writer got there first


class OutputBusy(JobFailed):
    """Another live run holds the output's lock."""


def is_lock_file(uri: str) -> bool:
    """Whether ``uri`` is a lock of this module (which ``--overwrite`` must not delete)."""
    return uri.rsplit("/", 1)[-1] in (LOCK_FILE, LEASE_FILE)


def _holder(stage: str) -> dict:
    return {"stage": stage, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _busy(out: storage.Location, holder: dict, detail: str = "") -> OutputBusy:
    return OutputBusy(f"{out.uri} is in use by another run ({holder.get('stage', '?')}, pid "
                      f"{holder.get('pid', '?')} on {holder.get('host', '?')}){detail}: wait for it to "
                      f"finish, or write to another output")


@contextlib.contextmanager
def hold(out: storage.Location, stage: str) -> Iterator["Held"]:
    """Hold ``out``'s lock for the ``with`` block, or raise :class:`OutputBusy`. The job calls
    :meth:`Held.check` as it goes: an S3 lease taken over by another run stops the writer."""
    held = Held(out)
    with (_hold_lease(out, stage, held) if out.is_s3 else _hold_flock(out, stage)):
        yield held


class LockLost(JobFailed):
    """Another run took over this run's lease (it was not renewed in time): stop writing."""


class Held:
    def __init__(self, out: storage.Location):
        self.out, self.lost = out, threading.Event()

    def check(self) -> None:
        if self.lost.is_set():
            raise LockLost(f"lost the lock on {self.out.uri} to another run (the lease was not renewed within "
                           f"{LEASE_SECONDS:.0f} s and was taken over): stopped; finished work is kept")


@contextlib.contextmanager
def _hold_flock(out: storage.Location, stage: str) -> Iterator[None]:
    """``flock`` on ``OUT/_lock``; the file is removed at the end, and so are the folders this run
    created if they are still empty: a run that failed before writing leaves no claim behind."""
    import fcntl

    created = _first_missing(out.key)
    os.makedirs(out.key, exist_ok=True)
    path = os.path.join(out.key, LOCK_FILE)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _parse(handle.read())
            handle.close()
            raise _busy(out, holder) from None
        if _same_file(handle, path):
            break
        handle.close()  # the previous holder removed the file after we opened it: lock the new one
    try:
        handle.truncate(0)
        handle.write(json.dumps(_holder(stage)))
        handle.flush()
        yield  # the kernel releases the lock when the file closes or the process dies
    finally:
        os.unlink(path)  # still holding it: a run waiting on this inode re-checks and retries
        handle.close()
        if created:
            _remove_empty(out.key, created)


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _same_file(handle, path: str) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _remove_empty(path: str, top: str) -> None:
    """Remove ``path`` and its parents up to ``top`` while they are empty."""
    while True:
        try:
            os.rmdir(path)
        except OSError:  # not empty: the run wrote something, which stays
            return
        if path == top:
            return
        path = os.path.dirname(path)


def _parse(text: str | bytes) -> dict:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


@contextlib.contextmanager
def _hold_lease(out: storage.Location, stage: str, held: Held) -> Iterator[None]:
    lease = _Lease(out.join(LEASE_FILE), _holder(stage))
    lease.acquire(out)
    stop = threading.Event()
    heartbeat = threading.Thread(target=lease.renew_until, args=(stop, held.lost), daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        lease.release()


class _Lease:
    def __init__(self, location: storage.Location, holder: dict):
        self.location, self.holder, self.etag = location, holder, ""

    def _put(self, **condition) -> str:
        # the object's LastModified, on the server's clock, is the renewal time
        return storage.s3_client().put_object(Bucket=self.location.bucket, Key=self.location.key,
                                              Body=json.dumps(self.holder).encode(), **condition)["ETag"]

    def acquire(self, out: storage.Location) -> None:
        try:
            self.etag = self._put(IfNoneMatch="*")
            return
        except Exception as error:
            if storage.error_code(error) not in PRECONDITION_CODES:
                raise storage.explain(error, self.location, "lock") from None
        try:
            current = storage.s3_client().get_object(Bucket=self.location.bucket, Key=self.location.key)
        except Exception as error:
            raise storage.explain(error, self.location, "read the lock") from None
        other = _parse(current["Body"].read())
        # both times from the server's clock: hosts' clocks may disagree
        server_now = parsedate_to_datetime(current["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - current["LastModified"]).total_seconds()
        dead = other.get("host") == self.holder["host"] and not _alive(other.get("pid"))
        if not dead and age < LEASE_SECONDS:
            raise _busy(out, other, f", lease renewed {age:.0f} s ago, expires in {LEASE_SECONDS - age:.0f} s")
        try:  # take over the stale lease, unless someone else just did
            self.etag = self._put(IfMatch=current["ETag"])
        except Exception as error:
            if storage.error_code(error) in PRECONDITION_CODES:
                raise _busy(out, other, " (taken over by another run just now)") from None
            raise storage.explain(error, self.location, "lock") from None

    def renew_until(self, stop: threading.Event, lost: threading.Event) -> None:
        while not stop.wait(RENEW_SECONDS):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except Exception as error:
                if storage.error_code(error) in PRECONDITION_CODES:  # another run holds it now
                    lost.set()
                    return
                continue  # storage down: the next beat retries; the job's own writes will fail

    def release(self) -> None:
        """Delete the lease if it is still ours (``If-Match`` its ETag). A delete that fails is said on
        stderr, naming the lock: another run that took the lease over keeps it; a lease left by a store
        that did not answer refuses other runs until it expires."""
        try:
            storage.s3_client().delete_object(Bucket=self.location.bucket, Key=self.location.key,
                                              IfMatch=self.etag)
        except Exception as error:
            code = storage.error_code(error)
            if code in ("NoSuchKey", "404", "NotFound"):  # already gone: nothing is left behind
                return
            if code in PRECONDITION_CODES:
                why = "another run took the lease over and holds it now; it was left in place"
            else:
                why = (f"it stays until it expires, {LEASE_SECONDS:.0f} s after its last renewal (other runs on "
                       f"this output are refused until then), or until it is deleted by hand once no run uses it")
            print(storage.redact(f"warning: could not release the lock {self.location.uri} ({code}): {why}"),
                  file=sys.stderr, flush=True)


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
