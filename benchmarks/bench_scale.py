"""Scale of the ingest control plane: what the driver pays per item, measured.

1. ``--dry-run`` of a manifest source of N entries (100k, 1M) against a stored plan of 0.9 N of
   them (a grown corpus): wall time and peak RSS of the driver process above an interpreter that
   imported the same modules (the baseline, measured in the same run). Nothing is read but the
   manifest and the plan.
2. A real ingest (two local Ray nodes) of 1,000 and of 5,000 small images: the driver's peak RSS
   (this process alone: the workers are other processes) above its RSS once Ray is up. The control
   plane holds counts, not vectors, so the two should match.

Writes benchmarks/results/scale.json. ``--entries`` and ``--images`` change the sizes.
"""

from __future__ import annotations

import argparse
import json
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
job = IngestJob(source, out.uri)
settings = _settings(job, _space(job))
with tempfile.TemporaryDirectory() as scratch:
    plan = planning.plan(planning.spill_listing(list_source(source).batches, scratch), job.shard_size, settings, (),
                         scratch)
    manifest.write(out, plan, None)
storage.write_bytes(out.join("plan.json"), json.dumps({"plan_version": PLAN_VERSION, "settings": settings,
                    "shard_size": job.shard_size, "shards": plan.shards.num_rows, "source": source}).encode())
"""


# Runs a module or a snippet and reports the process's own peak RSS on stderr as its last line.
MEASURED = """
import resource, runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(target, run_name="__main__") if not target.startswith("-c") else exec(target[2:])
finally:
    print(f"peak_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def peak_rss_mb(target: str, *args: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one child process running module ``target`` (or code
    ``"-c..."``) with ``args``."""
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", MEASURED, target, *args], capture_output=True, text=True)
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
        seconds, peak_mb, stdout = peak_rss_mb("latentsweep", "ingest", str(grown), "--out", str(out), "--dry-run")
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
from latentsweep.codec.embed import EmbedSettings
from latentsweep.ingest.run import IngestJob, run
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
connect(cluster.address, quiet=True)
ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = run(IngestJob(sys.argv[1], sys.argv[2], EmbedSettings(feature_set="all", device="cpu"), shard_size=64,
                        quiet=True, address=cluster.address, workers=2))
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--images", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = dry_runs(sorted(args.entries), work)
    report("driver cost of planning (dry run)", rows)
    if not args.skip_ingest:
        ingest_rows = ingests(sorted(args.images), work)
        report("driver memory during an ingest", ingest_rows)
        rows += ingest_rows
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/scale.json").write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
