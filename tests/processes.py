"""Run the command line as a user does, interrupt it as users and machines do, compare outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa


LATENTSWEEP = [sys.executable, "-m", "latentsweep"]


def local_env(extra: dict | None = None) -> dict:
    """This environment for a child that starts its own local Ray, not the tests' shared one."""
    return {**os.environ, "RAY_ADDRESS": "", **(extra or {})}


def run_command(command: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``command`` to its end with its own local Ray; stdout and stderr captured as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=local_env(env))


def refused_before_writing(command: list[str], out: Path) -> str:
    """Run ``command`` (which would write ``out``) expecting a refusal: exit 2, one line on stderr,
    ``out`` never created. Returns that line."""
    result = run_command(command)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert not out.exists()
    return result.stderr


def interrupt_when(command: list[str], ready: Callable[[], bool], sig: int, timeout: float = 240) -> tuple[int, str]:
    """Start ``command`` in its own process group; once ``ready()`` holds, send ``sig`` to the group
    (as Ctrl-C does to a terminal's foreground group). Returns (exit code, stderr). The child starts
    with SIGINT at its default, as a terminal's foreground job has it: a test run started in the
    background of a non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, env=local_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=stderr, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None and not ready():
            time.sleep(0.02)
        assert process.poll() is None, "the command ended before it could be interrupted"
        os.killpg(process.pid, sig)
        try:
            code = process.wait(timeout=90)
        finally:
            try:  # whatever of the group outlived the signal (Ray's own processes)
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stderr.seek(0)
        return code, stderr.read().decode(errors="replace")


def settled(count: Callable[[], int], quiet: float = 3.0, timeout: float = 60) -> int:
    """``count()`` once it has not changed for ``quiet`` seconds: workers of a killed driver may
    finish the shard in their hands (and write it, whole) before they notice and exit."""
    value, since, deadline = count(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := count()) != value:
            value, since = now, time.monotonic()
    return value


def files_in(folder: Path, pattern: str = "*.json") -> int:
    return len(list(folder.glob(pattern))) if folder.exists() else 0


def assert_same_rows(a: pa.Table, b: pa.Table, what: str) -> None:
    """Same columns, rows and values (vectors to float tolerance)."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows, what
    for name in a.column_names:
        if pa.types.is_fixed_size_list(a.schema.field(name).type):
            np.testing.assert_allclose(np.stack(a.column(name).to_numpy(zero_copy_only=False)),
                                       np.stack(b.column(name).to_numpy(zero_copy_only=False)), atol=1e-6)
        else:
            assert a.column(name).equals(b.column(name)), f"{what}: column {name}"


def assert_same_ingest(out: str | Path, clean: str | Path) -> None:
    """Two ingest outputs hold the same embedding and error rows."""
    from latentsweep import storage

    for kind in ("embeddings", "errors"):
        a = storage.read_table(storage.Location.parse(str(out)).join(kind)).sort_by("id")
        b = storage.read_table(storage.Location.parse(str(clean)).join(kind)).sort_by("id")
        assert_same_rows(a, b, kind)


def ingest_photos(root: Path, per_label: int) -> Path:
    """A small labelled photo corpus under ``root/corpus``, ingested (in this process, on the tests'
    Ray) into ``root/emb`` as a default ingest stores it (the pixel descriptors included), with the
    untrained codec and ``2lat``; returns ``root``."""
    from images import photo_corpus
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run

    photo_corpus(root / "corpus", per_label=per_label)
    run(IngestJob(str(root / "corpus"), str(root / "emb"), EmbedSettings(weights="untrained", feature_set="2lat",
                                                                         max_batch=4), labels_from_folders=True, augment="none",
                  quiet=True))
    return root

