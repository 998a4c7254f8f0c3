"""Sweep throughput: queries/s through the query-actor pool (read, search every shard, merge, vote,
write Parquet) against a bare FAISS IndexFlatIP search of the same prepared vectors, same run."""

from __future__ import annotations

import argparse
import shutil
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
    args = parser.parse_args()

    import faiss

    from latentsweep.cluster import connect
    from latentsweep.index.build import IndexJob, build
    from latentsweep.index.shards import ShardedIndex
    from latentsweep.query.sweep import SweepJob, sweep
    from latentsweep.zoo.embeddings import clustered, write_ingest_output

    dims = {"y_hat_luma": 160, "y_hat_chroma": 96}
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    labels = [f"gen{i}" for i in range(7)]
    vectors, assignment = clustered(args.references + args.queries, len(labels), 256, seed=0)
    names = [labels[a] for a in assignment]
    write_ingest_output(str(work / "ref"), vectors[:args.references], names[:args.references], {},
                        files=8, dims=dims)
    write_ingest_output(str(work / "night"), vectors[args.references:], names[args.references:], {},
                        files=10, id_offset=args.references, dims=dims)
    connect(quiet=True)
    build(IndexJob([str(work / "ref")], str(work / "index"), shards=args.shards, quiet=True))

    index = ShardedIndex.load(str(work / "index"))
    reference = index.prepare(vectors[:args.references])
    queries = index.prepare(vectors[args.references:])
    flat = faiss.IndexFlatIP(256)
    flat.add(reference)
    flat.search(queries[:100], args.k)
    started = time.perf_counter()
    flat.search(queries, args.k)
    bare = time.perf_counter() - started

    job = SweepJob([str(work / "night")], str(work / "index"), str(work / "results"), date="2026-01-01",
                   k=args.k, quiet=True)
    started = time.perf_counter()
    summary = sweep(job)
    seconds = time.perf_counter() - started
    rows = [{"setup": "bare faiss IndexFlatIP", "references": args.references, "queries": args.queries,
             "seconds": round(bare, 2), "queries_s": round(args.queries / bare), "ratio_vs_bare": 1.0},
            {"setup": f"sweep, actor pool, {args.shards} shards (end to end)", "references": args.references,
             "queries": summary.queries, "seconds": round(seconds, 2), "queries_s": round(summary.queries / seconds),
             "ratio_vs_bare": round(bare / seconds, 3)}]
    report("sweep: query actors vs bare FAISS", rows, Path("benchmarks/results/sweep.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
