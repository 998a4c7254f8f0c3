"""Sweep throughput: queries/s through the query actors (read, search every shard, merge, vote, write
the result parts, markers, report and _SUCCESS.json) against a bare FAISS IndexFlatIP search of the
same prepared queries over the same references with the same k, same run. Ray is started before
either is timed; the sweep's actors, index loading and imports are timed, as users pay them nightly.

The sweep's row says when its first and last parts were written: start-up before the first, the
partition's metrics, report and ``_SUCCESS.json`` after the last. ``--repeat N`` measures the pair
N times (bare, then a sweep into a fresh partition) and prints every run: other work on a shared
machine moves single runs by tens of percent."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--files", type=int, default=10, help="query files (one result part each)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import faiss

    from latentsweep.cluster import connect
    from latentsweep.index.build import IndexJob, build
    from latentsweep.index.shards import ShardedIndex
    from latentsweep.query.sweep import SweepJob, sweep
    from latentsweep_lab.zoo.embeddings import clustered, write_ingest_output

    dims = {"y_hat_luma": 160, "y_hat_chroma": 96}
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    labels = [f"gen{i}" for i in range(7)]
    vectors, assignment = clustered(args.references + args.queries, len(labels), 256, seed=0)
    names = [labels[a] for a in assignment]
    write_ingest_output(str(work / "ref"), vectors[:args.references], names[:args.references], {},
                        files=8, dims=dims)
    write_ingest_output(str(work / "night"), vectors[args.references:], names[args.references:], {},
                        files=args.files, id_offset=args.references, dims=dims)
    connect(quiet=True)
    build(IndexJob([str(work / "ref")], str(work / "index"), shards=args.shards, quiet=True))

    index = ShardedIndex.load(str(work / "index"))
    reference = index.prepare(vectors[:args.references])
    queries = index.prepare(vectors[args.references:])
    flat = faiss.IndexFlatIP(256)
    flat.add(reference)
    flat.search(queries[:100], args.k)

    rows = []
    for run in range(args.repeat):
        started = time.perf_counter()
        flat.search(queries, args.k)
        bare = time.perf_counter() - started
        written: list[float] = []  # when each part was written (the sweep's progress lines)
        job = SweepJob([str(work / "night")], str(work / "index"), str(work / f"results-{run}"), date="2026-01-01",
                       k=args.k, quiet=True)
        started = time.perf_counter()
        summary = sweep(job, log=lambda line: line.startswith("sweep: attributed") and written.append(
            time.perf_counter() - started))
        seconds = time.perf_counter() - started
        rows += [{"run": run, "setup": "bare faiss IndexFlatIP", "queries": args.queries, "seconds": round(bare, 2),
                  "queries_s": round(args.queries / bare), "first_part_s": "", "last_part_s": "", "ratio_vs_bare": 1.0},
                 {"run": run, "setup": f"sweep, {args.shards} shards, {args.files} files (end to end)",
                  "queries": summary.queries, "seconds": round(seconds, 2),
                  "queries_s": round(summary.queries / seconds), "first_part_s": round(written[0], 2), "last_part_s": round(written[-1], 2),
                  "ratio_vs_bare": round(bare / seconds, 3)}]
    ratios = [row["ratio_vs_bare"] for row in rows[1::2]]
    report(f"sweep: query actors vs bare FAISS, {args.references} references, k={args.k}; ratio median "
           f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}", rows,
           Path("benchmarks/results/sweep.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
