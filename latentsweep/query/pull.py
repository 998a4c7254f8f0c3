"""Bring a sweep's results to an analyst's disk: parallel boto3 transfers (multipart for large
files), sizes and SHA-256 verified against the partition's ``_SUCCESS.json``, resumable (files
already present and verified are skipped; partial downloads never replace a good file)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError
from latentsweep.query.sweep import SUCCESS


@dataclass
class PullSummary:
    source: str
    out: str
    files: int = 0
    downloaded: int = 0
    already_present: int = 0
    bytes: int = 0
    sweep: dict = field(default_factory=dict)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: str, entry: dict) -> bool:
    return os.path.exists(path) and os.path.getsize(path) == entry["bytes"] and _sha256(path) == entry["sha256"]


def pull(source: str, out: str, workers: int = 8, quiet: bool = False) -> PullSummary:
    from tqdm import tqdm

    root = storage.Location.parse(source)
    success = root.join(SUCCESS)
    if not storage.exists(success):
        # a missing bucket raises here (a HEAD request cannot tell it from a missing object)
        if not next(storage.list_files(root, missing_ok=True), None):
            raise UsageError(f"nothing at {root.uri}: expected a sweep partition like "
                             f"s3://bucket/results/date=YYYY-MM-DD")
        raise UsageError(f"{success.uri} is missing: the sweep of {root.uri} has not finished (rerun it)")
    record = json.loads(storage.read_bytes(success))
    summary = PullSummary(root.uri, os.path.abspath(out), files=len(record["parts"]), sweep=record["summary"])
    os.makedirs(out, exist_ok=True)
    todo = []
    for entry in record["parts"]:
        target = os.path.join(out, entry["file"])
        if _verified(target, entry):
            summary.already_present += 1
        else:
            todo.append(entry)
    bar = tqdm(total=sum(e["bytes"] for e in todo), unit="B", unit_scale=True, desc="pull", disable=quiet,
               file=sys.stderr)

    def fetch(entry: dict) -> int:
        target = os.path.join(out, entry["file"])
        storage.download(root.join(entry["file"]), target)
        if not _verified(target, entry):
            os.unlink(target)
            raise JobFailed(f"{root.join(entry['file']).uri} arrived with another size or checksum than "
                            f"{SUCCESS} lists: not kept, rerun pull")
        return entry["bytes"]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in as_completed([pool.submit(fetch, entry) for entry in todo]):
            size = future.result()
            summary.downloaded += 1
            summary.bytes += size
            bar.update(size)
    bar.close()
    with open(os.path.join(out, SUCCESS), "w") as handle:
        json.dump(record, handle, indent=2)
    return summary
