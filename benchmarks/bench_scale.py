"""Scale of the ingest control plane: what the driver pays per item, measured.

1. ``--dry-run`` of a manifest source of N entries (100k, 1M) against a stored plan of 0.9 N of
   them (a grown corpus): wall time and peak RSS of the driver process above an interpreter that
   imported the same modules (the baseline, measured in the same run). Nothing is read but the
   manifest and the plan.
2. A real ingest (two local Ray nodes) of 1,000 and of 5,000 small images: the driver's peak RSS
   (this process alone: the workers are other processes) above its RSS once Ray is up. The control
   plane holds counts, not vectors, so the two should match.
3. Listing an S3 prefix: the driver's peak RSS listing a flat prefix (every object at one level) into
   the planner's spill, and the whole ``ingest --dry-run`` of it, above an interpreter with the same
   imports, for 1,000 objects and for as many as SeaweedFS (``weed mini`` on loopback, the tests'
   server) takes in a few minutes (``--listing-objects``, default 100,000: one PUT each, ~400/s on
   2 cores); then 1M objects flat and date-partitioned (``--listing-synthetic``) from a synthetic
   endpoint on loopback that answers ``ListObjectsV2`` only, with keys it generates page by page
   (1,000 a page, as S3): the driver cannot tell, and no 1M objects have to be written first.

Writes benchmarks/results/scale.json. ``--entries``, ``--images``, ``--listing-objects`` and
``--listing-synthetic`` change the sizes; ``--skip-dry-runs``, ``--skip-ingest``, ``--skip-listing``
leave parts out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_images, report  # noqa: E402

# what every dry run pays before its first item: imports (torch comes with the codec settings) and the
# weights' checksum
BASELINE = ("import latentsweep.ingest.run, latentsweep.ingest.manifest, pyarrow.parquet, numpy; "
            "from latentsweep.codec import weights; weights.digest()")

STORE_PLAN = """
import json, sys, tempfile
from latentsweep import storage
from latentsweep.ingest import manifest, plan as planning
from latentsweep.ingest.run import PLAN_VERSION, IngestJob, _settings, _space
from latentsweep.ingest.sources import list_source
source, out = sys.argv[1], storage.Location.parse(sys.argv[2])
job = IngestJob(source, out.uri, augment="none")
settings = _settings(job, _space(job))
with tempfile.TemporaryDirectory() as scratch:
    plan = planning.plan(planning.spill_listing(list_source(source).batches, scratch), job.shard_size, settings, (),
                         scratch)
    manifest.write(out, plan, None)
storage.write_bytes(out.join("plan.json"), json.dumps({"plan_version": PLAN_VERSION, "settings": settings,
                    "shard_size": job.shard_size, "shards": plan.shards.num_rows, "source": source}).encode())
"""


# Runs a module or a snippet and reports the process's own peak RSS on stderr as its last line: VmHWM,
# the peak of its own memory map. (ru_maxrss would also count the peak of this benchmark's process: the
# child starts as a vfork of it, and Linux keeps the larger of the two across exec.)
MEASURED = """
import resource, runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
def peak_kb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    runpy.run_module(target, run_name="__main__") if not target.startswith("-c") else exec(target[2:])
finally:
    print(f"peak_kb={peak_kb()}", file=sys.stderr)
"""


def peak_rss_mb(target: str, *args: str, env: dict | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one child process running module ``target`` (or code
    ``"-c..."``) with ``args`` (and the variables ``env`` added to this environment)."""
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", MEASURED, target, *args], capture_output=True, text=True,
                           env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if child.returncode:
        sys.exit(child.stderr[-3000:])
    peak_kb = int(child.stderr.strip().splitlines()[-1].removeprefix("peak_kb="))
    return seconds, peak_kb / 1024, child.stdout


def manifest_of(path: Path, count: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    uris = pa.array([f"s3://corpus/incoming/2026-11-{i % 28 + 1:02d}/upload-{i:09d}.png" for i in range(count)])
    labels = pa.array([f"gen{i % 16}" for i in range(count)])
    pq.write_table(pa.table({"uri": uris, "label": labels}), path)


def dry_runs(entries: list[int], work: Path) -> list[dict]:
    rows = []
    base_seconds, base_mb, _ = peak_rss_mb("-c" + BASELINE)
    for count in entries:
        old, grown, out = work / f"old-{count}.parquet", work / f"grown-{count}.parquet", work / f"out-{count}"
        manifest_of(old, int(count * 0.9))
        manifest_of(grown, count)
        peak_rss_mb("-c" + STORE_PLAN, str(old), str(out))
        seconds, peak_mb, stdout = peak_rss_mb("latentsweep", "ingest", str(grown), "--out", str(out), "--dry-run",
                                               "--augment", "none")
        plan = json.loads(stdout.strip().splitlines()[-1])
        assert plan["new"] == count - int(count * 0.9), plan
        rows.append({"step": f"ingest --dry-run, {count:,} entries (10% new)", "seconds": round(seconds, 2),
                     "peak_mb_above_interpreter": round(peak_mb - base_mb), "bytes_per_item":
                     round((peak_mb - base_mb) * 2**20 / count), "s_per_million": round(seconds / count * 1e6, 2)})
    rows.insert(0, {"step": "interpreter + imports (baseline)", "seconds": round(base_seconds, 2),
                    "peak_mb_above_interpreter": 0, "bytes_per_item": 0, "s_per_million": 0})
    return rows


DRIVER = """
import json, resource, sys
from ray.cluster_utils import Cluster
import os
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from latentsweep.cluster import connect
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest.run import IngestJob, run
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
connect(cluster.address, quiet=True)
ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = run(IngestJob(sys.argv[1], sys.argv[2], EmbedSettings(feature_set="all", device="cpu"), shard_size=64,
                        quiet=True, address=cluster.address, workers=2, augment="none"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"embedded": summary.embedded, "seconds": summary.seconds, "nodes": len(summary.images_per_node),
                  "driver_peak_mb": round(peak / 1024), "driver_growth_mb": round((peak - ready) / 1024)}), flush=True)
import ray
ray.shutdown()
cluster.shutdown()
"""


def ingests(sizes: list[int], work: Path) -> list[dict]:
    rows = []
    images = make_images(work / "images", max(sizes), 64)
    for count in sizes:
        folder = work / f"images-{count}"
        folder.mkdir(exist_ok=True)
        for path in images[:count]:
            target = folder / path.name
            if not target.exists():
                target.symlink_to(path)
        child = subprocess.run([sys.executable, "-c", DRIVER, str(folder), str(work / f"emb-{count}")],
                               capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
        if not lines:  # (Ray's teardown may still exit non-zero after a finished run)
            sys.exit(f"ingest of {count} images failed ({child.returncode}):\n" + "\n".join(
                line for line in child.stderr.splitlines() if "Warning" not in line)[-4000:])
        result = json.loads(lines[-1])
        rows.append({"step": f"ingest of {count:,} images, 2 local nodes", "seconds": result["seconds"],
                     "driver_peak_mb": result["driver_peak_mb"], "driver_growth_mb": result["driver_growth_mb"],
                     "nodes": result["nodes"], "embedded": result["embedded"]})
    return rows


# Listing alone: the source listed into the planner's spill (what a dry run and a run do first), as the
# driver does it (the system allocator, ingest/run.py); prints the rows spilled.
LIST_INTO_SPILL = """
import sys, tempfile
import pyarrow as pa
from latentsweep.ingest import plan as planning
from latentsweep.ingest.sources import list_source
pa.set_memory_pool(pa.system_memory_pool())
with tempfile.TemporaryDirectory() as scratch:
    print(planning.spill_listing(list_source(sys.argv[1]).batches, scratch).rows)
"""
LISTING_BASELINE = "import latentsweep.ingest.plan, latentsweep.ingest.sources, pyarrow, numpy, boto3"
LISTING_BUCKET = "bench-listing"


def listing_rows(what: str, uri: str, count: int, env: dict, work: Path, bases: tuple[float, float]) -> list[dict]:
    """The listing alone and the whole dry run of ``uri`` (``count`` objects), peaks above ``bases``."""
    rows = []
    (work / "tmp").mkdir(exist_ok=True)  # the planner's scratch, where no other planner clears folders
    env = {**env, "TMPDIR": str(work / "tmp")}
    seconds, peak, stdout = peak_rss_mb("-c" + LIST_INTO_SPILL, uri, env=env)
    assert int(stdout.strip().splitlines()[-1]) == count, stdout
    rows.append({"step": f"list {what}, {count:,} objects, into the spill", "seconds": round(seconds, 2),
                 "peak_mb_above_interpreter": round(peak - bases[0]), "s_per_million": round(seconds / count * 1e6, 1)})
    out = work / f"listing-out-{what.replace(' ', '-')}-{count}"
    seconds, peak, stdout = peak_rss_mb("latentsweep", "ingest", uri, "--out", str(out), "--weights", "untrained",
                                        "--dry-run", "--augment", "none", env=env)
    plan = json.loads(stdout.strip().splitlines()[-1])
    assert plan["inputs"] == count and not out.exists(), plan
    rows.append({"step": "ingest --dry-run of it", "seconds": round(seconds, 2),
                 "peak_mb_above_interpreter": round(peak - bases[1]), "s_per_million": round(seconds / count * 1e6, 1)})
    return rows


def listings(counts: list[int], synthetic: list[int], work: Path) -> list[dict]:
    """Peak RSS of the driver listing flat prefixes on SeaweedFS and on the synthetic endpoint."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import WeedServer, s3_variables  # the tests' server: weed mini on 127.0.0.1

    bases = (peak_rss_mb("-c" + LISTING_BASELINE)[1], peak_rss_mb("-c" + BASELINE)[1])
    rows = []
    server = WeedServer(work / "seaweedfs")
    server.start()
    try:
        env = s3_variables({"endpoint": server.endpoint})
        server.client.create_bucket(Bucket=LISTING_BUCKET)
        for count in counts:
            started = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                list(pool.map(lambda n: server.client.put_object(Bucket=LISTING_BUCKET, Key=f"flat-{count}/{n:09d}.png",
                                                                 Body=b""), range(count)))
            print(f"put {count:,} objects in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            rows += listing_rows("a flat SeaweedFS prefix", f"s3://{LISTING_BUCKET}/flat-{count}", count, env, work,
                                 bases)
    finally:
        server.stop()
    for count in synthetic:
        with SyntheticListing(count, days=30) as endpoint:
            env = {"AWS_ENDPOINT_URL": endpoint.url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_REGION": "us-east-1"}
            for layout, what in (("flat", "a flat synthetic prefix"), ("dated", "a synthetic prefix of 30 dates")):
                rows += listing_rows(what, f"s3://{SyntheticListing.BUCKET}/{layout}", count, env, work, bases)
    return rows


class SyntheticListing:
    """An HTTP endpoint on loopback that answers S3 ``ListObjectsV2`` (and nothing else) for the keys
    ``flat/NNNNNNNNN.png`` (``count`` of them) and ``dated/2026-11-DD/NNNNNNNNN.png`` (``count`` over
    ``days`` folders), generated page by page: the listing a driver would get from a bucket of
    ``count`` objects, without writing them."""

    BUCKET = "synthetic"
    ETAG = '"d41d8cd98f00b204e9800998ecf8427e"'

    def __init__(self, count: int, days: int):
        self.count, self.days = count, days

    def __enter__(self) -> "SyntheticListing":
        import threading
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys(self, prefix: str) -> tuple[list[str], int, callable]:
        """(common prefixes, number of keys, key of index) of a listing of ``prefix`` with delimiter "/"."""
        if prefix == "dated/":
            return [f"dated/2026-11-{day + 1:02d}/" for day in range(self.days)], 0, None
        if prefix == "flat/":
            return [], self.count, lambda n: f"flat/{n:09d}.png"
        if prefix.startswith("dated/2026-11-"):
            day = int(prefix[len("dated/2026-11-"):].rstrip("/")) - 1
            per_day = self.count // self.days + (day < self.count % self.days)
            return [], per_day, lambda n: f"{prefix}{n:09d}.png"
        return [], 0, None

    def page(self, query: dict) -> bytes:
        prefix = query.get("prefix", "")
        folders, total, key = self.keys(prefix)
        size = min(int(query.get("max-keys", 1000)), 1000)
        start = int(query.get("continuation-token") or 0)
        end = min(start + size, total)
        parts = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 f"<Name>{self.BUCKET}</Name><Prefix>{prefix}</Prefix><KeyCount>{end - start + len(folders)}</KeyCount>",
                 f"<MaxKeys>{size}</MaxKeys><IsTruncated>{'true' if end < total else 'false'}</IsTruncated>"]
        if end < total:
            parts.append(f"<NextContinuationToken>{end}</NextContinuationToken>")
        parts += [f"<Contents><Key>{key(n)}</Key><LastModified>2026-11-23T01:02:03.000Z</LastModified>"
                  f"<ETag>{self.ETAG}</ETag><Size>48213</Size><StorageClass>STANDARD</StorageClass></Contents>"
                  for n in range(start, end)]
        parts += [f"<CommonPrefixes><Prefix>{folder}</Prefix></CommonPrefixes>" for folder in folders]
        parts.append("</ListBucketResult>")
        return "".join(parts).encode()

    def _handler(self):
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import parse_qs, urlparse

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                query = {name: values[0] for name, values in parse_qs(urlparse(self.path).query).items()}
                body = endpoint.page(query) if query.get("list-type") == "2" else b""
                self.send_response(200 if body else 501)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--images", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--listing-objects", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--listing-synthetic", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--skip-dry-runs", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-listing", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    if not args.skip_dry_runs:
        rows += dry_runs(sorted(args.entries), work)
        report("driver cost of planning (dry run)", rows)
    if not args.skip_ingest:
        ingest_rows = ingests(sorted(args.images), work)
        report("driver memory during an ingest", ingest_rows)
        rows += ingest_rows
    if not args.skip_listing:
        listing = listings(sorted(args.listing_objects), sorted(args.listing_synthetic), work)
        report("driver memory listing an S3 prefix (peaks above an interpreter with the same imports)", listing)
        rows += listing
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/scale.json").write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
