"""Index build: this project (Ray tasks, streaming scaler, shards) against autofaiss's build_index on
the same embeddings, same machine, same run: build time, peak memory above idle, and recall@10
against exact search.

autofaiss pins numpy<2, so it runs from its own environment (``make bench-index`` creates it):
``--autofaiss-python PATH``. Both sides index the same vectors; autofaiss gets them already
z-scored and L2-normalised (the paper's normalisation, which it does not do itself)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import PeakMemory, report  # noqa: E402


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--autofaiss-python", default=None)
    parser.add_argument("--budget", default="4G")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentsweep.cluster import connect
    from latentsweep.index.build import IndexJob, build
    from latentsweep.index.shards import ShardedIndex
    from latentsweep_lab.zoo.embeddings import clustered, write_ingest_output

    dims = {"y_hat_luma": 160, "y_hat_chroma": 96}
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    vectors, assignment = clustered(args.vectors + args.queries, 7, 256, seed=0, spread=0.5)
    reference, queries = vectors[:args.vectors], vectors[args.vectors:]
    ids = np.array(write_ingest_output(str(work / "ref"), reference, [str(a) for a in assignment[:args.vectors]],
                                       {}, files=8, dims=dims))
    connect(quiet=True)
    rows = []
    truth = None
    for spec in ("Flat", "HNSW32", "IVF256,PQ32"):
        started = time.perf_counter()
        with PeakMemory() as memory:
            build(IndexJob([str(work / "ref")], str(work / spec.replace(",", "_")), index_spec=spec, shards=4,
                           quiet=True, train_sample=50_000))
        seconds = time.perf_counter() - started
        index = ShardedIndex.load(str(work / spec.replace(",", "_")))
        prepared = index.prepare(queries)
        _, found = index.search(prepared, 10)
        if truth is None:
            truth = found  # Flat is exact (tested against numpy)
            reference_prepared, queries_prepared = index.prepare(reference), prepared
            ref_seconds = seconds
        rows.append({"builder": f"latentsweep {spec}", "vectors": args.vectors, "build_s": round(seconds, 2),
                     "build_ratio_vs_latentsweep_flat": round(seconds / ref_seconds, 2),
                     "recall_at_10": round(recall(found, truth), 3), "peak_mem_mb": memory.above_idle_mb})
    if args.autofaiss_python:
        side = work / "autofaiss"
        (side / "emb").mkdir(parents=True)
        table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(reference_prepared.reshape(-1)), 256)})
        pq.write_table(table, side / "emb" / "part-0.parquet")
        np.save(side / "queries.npy", queries_prepared)
        with PeakMemory() as memory:
            result = subprocess.run([args.autofaiss_python, str(Path(__file__).parent / "autofaiss_side.py"),
                                     str(side / "emb"), str(side / "queries.npy"), str(side), "10", args.budget],
                                    capture_output=True, text=True)
        if result.returncode:
            sys.exit("autofaiss failed:\n" + result.stderr[-3000:])
        info = json.loads((side / "result.json").read_text())
        found_rows = np.load(side / "ids.npy")
        found = np.where(found_rows >= 0, ids[np.clip(found_rows, 0, len(ids) - 1)], -1)  # row -> our ids
        rows.append({"builder": f"autofaiss {info['index_key']}", "vectors": args.vectors,
                     "build_s": round(info["seconds"], 2),
                     "build_ratio_vs_latentsweep_flat": round(info["seconds"] / ref_seconds, 2),
                     "recall_at_10": round(recall(found, truth), 3),
                     "peak_mem_mb": memory.above_idle_mb})  # includes its search of the queries
    report("index build: latentsweep vs autofaiss", rows, Path("benchmarks/results/index.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
