"""The paper's protocol on a labelled set: every labelled image queries the index, the self-match
(the query's own id, nothing else) is discarded, and Top-1, Precision@10, mAP and Top-1 Type are
reported overall, by family (Table 2's shape) and by label (Table 3's shape), with a confusion matrix.

AP ranks the whole reference set when it is small enough to score exhaustively (exact indices);
otherwise the ranking is truncated and ``metrics.json`` says at which depth.
"""

from __future__ import annotations

import json

import numpy as np

from latentsweep import storage
from latentsweep.errors import UsageError
from latentsweep.index import features
from latentsweep.query import metrics
from latentsweep.query.actor import QueryEngine

EXHAUSTIVE_LIMIT = 20_000  # rank every reference for AP up to this many vectors
TRUNCATED_DEPTH = 1000
QUERY_CHUNK_CELLS = 20_000_000  # queries x ranked references held at once


def evaluate(index_uri: str, out: str, queries: list[str] | None = None, engine: QueryEngine | None = None) -> dict:
    engine = engine or QueryEngine(index_uri)
    manifest = engine.manifest
    exhaustive = manifest.vectors <= EXHAUSTIVE_LIMIT and manifest.index_spec == "Flat"
    depth = manifest.vectors if exhaustive else min(TRUNCATED_DEPTH, manifest.vectors)
    reference_ids = set(engine.index.metadata.column("id").to_pylist())
    labels, rows = [], []
    for uri in features.embedding_files(queries or manifest.sources):
        batch, _ = features.read(uri, ",".join(manifest.columns))
        query_labels = batch.metadata.column("label").to_pylist()
        keep = np.array([label is not None for label in query_labels], dtype=bool)
        if not keep.any():
            continue
        vectors, ids = batch.vectors[keep], batch.ids[keep]
        query_labels = [label for label in query_labels if label is not None]
        chunk = max(1, QUERY_CHUNK_CELLS // max(depth, 1))
        for start in range(0, len(ids), chunk):
            part_ids = ids[start:start + chunk]
            _, _, neighbour_labels = engine.search(vectors[start:start + chunk], min(depth, manifest.vectors - 1)
                                                   if exhaustive else depth, exclude_ids=part_ids)
            part_labels = query_labels[start:start + chunk]
            relevant = [manifest.labels.get(label, 0) - (1 if int(query_id) in reference_ids else 0)
                        for query_id, label in zip(part_ids, part_labels)]
            rows += metrics.per_queries(part_labels, neighbour_labels, relevant, manifest.families)
            labels += part_labels
    if not rows:
        raise UsageError("no labelled queries to evaluate")
    result = metrics.summarise(labels, rows, manifest.families)
    result["protocol"] = {"self_match": "discarded (the query's own id only)",
                          "map_ranking": "whole reference set" if exhaustive else f"truncated at {depth}",
                          "reference_vectors": manifest.vectors, "index_type": manifest.index_spec,
                          "features": manifest.features, "codec": manifest.codec,
                          "weights_digest": manifest.weights_digest}
    write(out, result)
    return result


def tables(result: dict) -> str:
    """Markdown tables in the shape of the paper's Tables 2 (by family) and 3 (by label)."""
    precision = metrics.precision_name(result["overall"])  # precision_at_<k>: the k of the run
    voted = "vote_accuracy" in result["overall"]  # a sweep's metrics: the k-NN vote's accuracy first
    names = (["vote_accuracy"] if voted else []) + ["top1", precision, "map", "type_top1"]
    header = ((["Vote Acc.", "Top-1 Acc. (nearest neighbour)"] if voted else ["Top-1 Acc."])
              + [f"Prec.@{precision.removeprefix('precision_at_')}", "mAP", "Top-1 Type Acc."])

    def table(title: str, key: str, section: dict) -> str:
        lines = [f"### {title}", "", f"| {key} | " + " | ".join(header) + " | queries |",
                 "|---" * (len(header) + 2) + "|"]
        for name, values in section.items():
            lines.append(f"| {name} | " + " | ".join(f"{values[n]:.3f}" for n in names) + f" | {values['queries']} |")
        return "\n".join(lines)

    overall = {"all": result["overall"]}
    return "\n\n".join([table("Overall", "set", overall), table("By family (Table 2)", "Type", result["by_family"]),
                        table("By label (Table 3)", "Model", result["by_label"])]) + "\n"


def write(out: str, result: dict) -> None:
    root = storage.Location.parse(out)
    storage.write_bytes(root.join("metrics.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(root.join("tables.md"), tables(result).encode())
    names = sorted(set(result["confusion"]) | {p for row in result["confusion"].values() for p in row})
    csv = ["true\\predicted," + ",".join(names)]
    csv += [f"{true}," + ",".join(str(result["confusion"][true].get(p, 0)) for p in names)
            for true in sorted(result["confusion"])]
    storage.write_bytes(root.join("confusion.csv"), ("\n".join(csv) + "\n").encode())
