"""Verdicts on held-out software: the share of queries per verdict and the accuracy within each, with
the learned descriptor alone and with the pixel fingerprint as a second family that must agree.

The real-software corpus's HELD-OUT split (scikit-image and scipy resizers on held-out photos; the
learned descriptor was trained on photos alone, the fingerprint's parts were tuned on the tuning
split's software), references and queries of new content, clean and saved as JPEG 80-95. Everything
goes through the product: ingest, index build (default features, and ``--features fingerprint``),
sweep (k=10, --attribute-at 0.9), read back from the result parts. Writes
benchmarks/results/verdicts.json."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results" / "verdicts.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--references", type=int, default=20, help="per class")
    parser.add_argument("--queries", type=int, default=10, help="per class")
    parser.add_argument("--size", type=int, default=192)
    args = parser.parse_args()

    from latentsweep.cluster import connect
    from latentsweep.index.build import IndexJob, build
    from latentsweep.ingest.run import IngestJob, run as ingest
    from latentsweep.query.sweep import SweepJob, sweep
    from latentsweep_lab.zoo.software import SoftwareSettings, make_software_corpus

    connect(quiet=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verdicts-") as folder:
        root = Path(folder)
        corpora = {"references": SoftwareSettings("held-out", args.references, args.size, seed=0),
                   "queries": SoftwareSettings("held-out", args.queries, args.size, seed=1),
                   "queries-jpeg": SoftwareSettings("held-out", args.queries, args.size, seed=1, jpeg=(80, 95))}
        for name, settings in corpora.items():
            make_software_corpus(root / "corpus" / name, settings)
            ingest(IngestJob(str(root / "corpus" / name / "manifest.csv"), str(root / "emb" / name), quiet=True,
                                 augment="none"))
        build(IndexJob([str(root / "emb" / "references")], str(root / "index"), quiet=True))
        build(IndexJob([str(root / "emb" / "references")], str(root / "index-fp"), features="fingerprint", quiet=True))
        for queries in ("queries", "queries-jpeg"):
            tables = []
            for evidence in ([], [str(root / "index-fp")]):
                out = root / "results" / f"{queries}-{len(evidence)}"
                sweep(SweepJob([str(root / "emb" / queries)], str(root / "index"), str(out), date="2026-01-01",
                               evidence=evidence, quiet=True))
                tables.append({row["uri"]: row for row in pq.read_table(
                    next((out / "date=2026-01-01").glob("part-*.parquet")),
                    columns=["uri", "verdict", "predicted_label", "label"]).to_pylist()})
                rows.append(_row(queries, "self_description" + (" + fingerprint" if evidence else ""),
                                 list(tables[-1].values())))
            rows[-1]["moved"] = _moved(*tables)
    RESULTS.write_text(json.dumps({
        "corpus": "real-software held-out split (scikit-image, scipy resizers; held-out photos)", "size": args.size,
        "references_per_class": args.references, "queries_per_class": args.queries, "k": 10, "attribute_at": 0.9,
        "rows": rows}, indent=2))
    print("| queries | families | attributed | uncertain | unknown | accuracy within attributed | "
          "accuracy within uncertain | vote accuracy, all |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['queries']} | {row['families']} | {row['share']['attributed']:.3f} | "
              f"{row['share']['uncertain']:.3f} | {row['share']['unknown']:.3f} | {row['accuracy']['attributed']} | "
              f"{row['accuracy']['uncertain']} | {row['vote_accuracy']:.3f} |")
    for row in rows:
        if "moved" in row:
            print(f"{row['queries']}: the fingerprint moved {row['moved'] or 'nothing'}")


def _moved(alone: dict, agreed: dict) -> dict:
    """Queries whose verdict the second family changed: right and wrong calls that left ``attributed``
    (or entered it: never, the rule only adds a condition)."""
    moves = Counter()
    for uri, row in alone.items():
        before, after = row["verdict"], agreed[uri]["verdict"]
        if before != after:
            moves[f"{'right' if row['predicted_label'] == row['label'] else 'wrong'} {before} -> {after}"] += 1
    return dict(sorted(moves.items()))


def _row(queries: str, families: str, table: list[dict]) -> dict:
    counts = Counter(row["verdict"] for row in table)
    right = Counter(row["verdict"] for row in table if row["predicted_label"] == row["label"])
    return {"queries": queries, "families": families, "total": len(table),
            "share": {name: round(counts[name] / len(table), 3) for name in ("attributed", "uncertain", "unknown")},
            "accuracy": {name: (round(right[name] / counts[name], 3) if counts[name] else None)
                         for name in ("attributed", "uncertain")},
            "vote_accuracy": sum(right.values()) / len(table)}


if __name__ == "__main__":
    main()
