"""The sweep driver's peak memory against the night's size: a real ``latentsweep sweep`` (its own local
Ray, query actors writing parts and their aggregates) over labelled nights of 100k and 1M queries in
query files of 10k, against a small Flat index. The driver's peak is the CLI process's own maximum
resident set (``ru_maxrss``), read as it exits; the actors and Ray's processes are not counted. The
driver adds up per-part aggregates (counts, metric tallies, bounded report candidates), so the two
peaks should be equal within noise; before, it concatenated every result row.

    python benchmarks/bench_sweep_driver.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

LABELS = ["a", "b", "c", "d"]
DIMS = {"y_hat_luma": 8}
PER_FILE = 10_000
DRIVER = """
import json, resource, sys
from latentsweep.cli import main
try:
    main()
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
      file=sys.stderr)
"""


def night(root: Path, queries: int) -> Path:
    from latentsweep_lab.zoo.embeddings import clustered, write_ingest_output

    for start in range(0, queries, PER_FILE):
        vectors, assignment = clustered(PER_FILE, len(LABELS), sum(DIMS.values()), seed=start, spread=0.4)
        write_ingest_output(str(root / f"file-{start // PER_FILE:04d}"), vectors, [LABELS[a] for a in assignment],
                            {}, files=1, id_offset=1_000_000 + start, dims=DIMS)
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    from latentsweep.index.build import IndexJob, build
    from latentsweep_lab.zoo.embeddings import clustered, write_ingest_output

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        vectors, assignment = clustered(400, len(LABELS), sum(DIMS.values()), seed=99, spread=0.4)
        write_ingest_output(str(root / "ref"), vectors, [LABELS[a] for a in assignment], {}, files=1, dims=DIMS)
        build(IndexJob([str(root / "ref")], str(root / "index"), features="y_hat_luma", shards=1, quiet=True))
        for size in args.sizes:
            queries = night(root / f"night-{size}", size)
            files = sorted(str(path) for path in queries.iterdir())
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-c", DRIVER, "sweep", *files, "--index", str(root / "index"),
                                     "--out", str(root / f"results-{size}"), "--date", "2026-11-23", "-q"],
                                    capture_output=True, text=True, env={"RAY_ADDRESS": "", **_env()})
            measured = json.loads(result.stderr.strip().splitlines()[-1])
            assert measured["code"] in (0, None), result.stderr[-3000:]
            rows.append({"queries": size, "query_files": len(files), "driver_peak_mb": round(measured["peak_mb"]),
                         "seconds": round(time.monotonic() - started, 1)})
    report("sweep driver peak resident memory", rows, Path(__file__).parent / "results" / "sweep_driver.json")
    print(f"ratio of the peaks, {rows[-1]['queries']:,} vs {rows[0]['queries']:,} queries: "
          f"{rows[-1]['driver_peak_mb'] / rows[0]['driver_peak_mb']:.3f}")


def _env() -> dict:
    import os

    return {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
