"""The paper's protocol on a labelled set: every labelled image queries the index, the self-match
(the query's own id with its processed copies, nothing else: a reference and its copies count as
one) is discarded, and Top-1, Precision@10, mAP@10 (the paper's: AP over
the top 10, divided by the hits found there) and Top-1 Type are reported overall, by family (Table 2's
shape) and by label (Table 3's shape), with the full-ranking mAP beside them and a confusion matrix
(definitions: :mod:`latentsweep.query.metrics`).

The full-ranking mAP (``map_full``) ranks the whole reference set when it is small enough to score
exhaustively (exact indices up to :data:`EXHAUSTIVE_LIMIT` vectors: a k above FAISS-GPU's 2048, so
that engine searches on the CPU);
otherwise the ranking is truncated at :data:`TRUNCATED_DEPTH` and ``metrics.json`` says so.

Indices larger than one process: ``sample`` evaluates a deterministic sample of the labelled queries
(the ``sample`` ids with the smallest keyed hash: the same queries whatever the file order or layout;
by default :data:`DEFAULT_SAMPLE` of them when there are more than :data:`SAMPLE_ABOVE`), and
``index_parts`` spreads the shards over Ray actors searched in parallel and merged by score, as a sweep
does. Queries are searched in chunks of at most :data:`QUERY_CHUNK_CELLS` ranked cells. The
``protocol`` section of ``metrics.json`` says which queries were evaluated and how the index was searched.
"""

from __future__ import annotations

import json

import numpy as np

from latentsweep import storage
from latentsweep.errors import UsageError
from latentsweep.index import reader
from latentsweep.ingest import augment
from latentsweep.query import metrics
from latentsweep.query.actor import QueryEngine

EXHAUSTIVE_LIMIT = 20_000  # rank every reference for AP up to this many vectors
TRUNCATED_DEPTH = 1000
QUERY_CHUNK_CELLS = 20_000_000  # queries x ranked references held at once
SAMPLE_ABOVE = 100_000     # more labelled queries than this: a sample by default
DEFAULT_SAMPLE = 10_000
SAMPLE_SEED = 0


def sample_keys(ids: np.ndarray, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A keyed 64-bit mix of each id (splitmix64's finaliser): the sample is the smallest keys."""
    with np.errstate(over="ignore"):
        x = np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def choose_queries(files: list[str], sample: int | None, seed: int = SAMPLE_SEED) -> tuple[np.ndarray | None, int]:
    """(sorted ids of the sampled labelled queries, or None for all of them; labelled queries in all).
    Reads only ``id``, ``uri`` and ``label``; holds at most ``sample`` + one file's ids. Processed copies
    of references (ingest/augment.py) are never queries."""
    if sample == 0:
        return None, -1
    best_keys, best_ids, labelled = np.zeros(0, np.uint64), np.zeros(0, np.int64), 0
    limit = sample or DEFAULT_SAMPLE
    for uri in files:
        table = storage.read_table(uri, columns=["id", "uri", "label"])
        ids = table.column("id").to_numpy()
        has_label = table.column("label").is_valid().to_numpy()
        ids = ids[has_label & augment.originals(ids, table.column("uri").to_pylist())]
        labelled += len(ids)
        keys = np.concatenate([best_keys, sample_keys(ids, seed)])
        ids = np.concatenate([best_ids, ids])
        if len(keys) > limit:
            keep = np.argpartition(keys, limit - 1)[:limit]
            keys, ids = keys[keep], ids[keep]
        best_keys, best_ids = keys, ids
    if (sample is None and labelled <= SAMPLE_ABOVE) or len(best_ids) == labelled:
        return None, labelled
    return np.sort(best_ids), labelled


def evaluate(index_uri: str, out: str, queries: list[str] | None = None, engine: QueryEngine | None = None,
             sample: int | None = None, index_parts: int = 1, seed: int = SAMPLE_SEED,
             address: str | None = None) -> dict:
    """``sample``: evaluate this many labelled queries (0: all; None: all up to :data:`SAMPLE_ABOVE`,
    else :data:`DEFAULT_SAMPLE`); ``index_parts``: search through that many Ray actors, each holding
    every n-th shard."""
    from latentsweep.index.manifest import load

    if sample is not None and sample < 0 or index_parts < 1:
        raise UsageError("--sample must be at least 0 (0: every query) and --index-parts at least 1")
    manifest = engine.manifest if engine else load(index_uri)
    exhaustive = manifest.vectors <= EXHAUSTIVE_LIMIT and manifest.index_spec == "Flat"
    depth = manifest.vectors if exhaustive else min(TRUNCATED_DEPTH, manifest.vectors)
    k = min(depth, manifest.vectors - 1) if exhaustive else depth
    files = reader.embedding_files(queries or manifest.sources)
    chosen, labelled = choose_queries(files, sample, seed)
    parts = []
    if engine is None:
        if index_parts > 1:
            from latentsweep.cluster import connect
            from latentsweep.query.actor import start_parts

            connect(address, quiet=True)
            parts = start_parts(index_uri, index_parts, k=k + 1)
        engine = QueryEngine(index_uri, parts=parts or None, k=k + 1)
    try:
        labels, rows, chunk = _search(engine, manifest, files, chosen, depth, k)
    finally:
        if parts:
            import ray

            for part in parts:
                ray.kill(part)
    if not rows:
        raise UsageError("no labelled queries to evaluate")
    result = metrics.summarise(labels, rows, manifest.families)
    searched = (f"{len(parts)} index parts (Ray actors holding every {len(parts)}-th shard), merged by score"
                if parts else "one process")
    placement = engine.index.placement.reason if engine.index.placement and not parts else None
    result["protocol"] = {"self_match": "discarded (the query's own id only)" if not manifest.copies_per_source
                          else "discarded (the query's own id and its processed copies)",
                          "copies_per_source": manifest.copies_per_source,
                          "map_ranking": "whole reference set" if exhaustive else f"truncated at {depth}",
                          "reference_vectors": manifest.vectors, "index_type": manifest.index_spec,
                          "features": manifest.features, "codec": manifest.codec,
                          "weights_digest": manifest.weights_digest,
                          "queries": len(rows), "labelled_queries": labelled if labelled >= 0 else len(rows),
                          "query_selection": "every labelled query" if chosen is None else
                          f"deterministic sample of {len(chosen)} labelled queries (smallest splitmix64 of "
                          f"id, seed {seed})",
                          "search": searched, "query_chunk": chunk, "placement": placement}
    write(out, result)
    return result


def _search(engine: QueryEngine, manifest, files: list[str], chosen: np.ndarray | None, depth: int, k: int):
    """Labels, per-query metric rows and the chunk size: the chosen queries searched chunk by chunk."""
    labels, rows = [], []
    chunk = max(1, QUERY_CHUNK_CELLS // max(depth, 1))
    for uri in files:
        batch = reader.read_columns(uri, list(manifest.columns), with_uri=True)
        query_labels = batch.metadata.column("label").to_pylist()
        keep = np.array([label is not None for label in query_labels], dtype=bool)
        keep &= augment.originals(batch.ids, batch.metadata.column("uri").to_pylist())
        if chosen is not None:
            keep &= np.isin(batch.ids, chosen)
        if not keep.any():
            continue
        vectors, ids = batch.vectors[keep], batch.ids[keep]
        query_labels = [label for label, kept in zip(query_labels, keep) if kept]
        del batch
        for start in range(0, len(ids), chunk):
            part_ids = ids[start:start + chunk]
            _, _, neighbour_labels = engine.search(vectors[start:start + chunk], k, exclude_ids=part_ids)
            part_labels = query_labels[start:start + chunk]
            own = engine.contains(part_ids)
            relevant = [manifest.labels.get(label, 0) - int(is_reference) for label, is_reference in zip(part_labels, own)]
            rows += metrics.per_queries(part_labels, neighbour_labels, relevant, manifest.families)
            labels += part_labels
    return labels, rows, chunk


def metric_columns(overall: dict) -> list[tuple[str, str]]:
    """(key, header) of the metrics present: the paper's four in its order (Top-1, P@k, mAP@k, Top-1
    Type), then the vote accuracy (sweeps) and the full-ranking mAP, each under its own name."""
    precision, average = metrics.precision_name(overall), metrics.map_name(overall)
    voted = "vote_accuracy" in overall  # a sweep's metrics: Top-1 is the nearest neighbour, not the vote
    columns = [("top1", "Top-1 Acc. (nearest neighbour)" if voted else "Top-1 Acc."),
               (precision, f"Prec.@{metrics.at_k(precision)}" if precision else ""),
               (average, f"mAP@{metrics.at_k(average)}" if average else ""),
               ("type_top1", "Top-1 Type Acc."),
               ("vote_accuracy", "Vote Acc. (predicted_label)"),
               ("map_full", "mAP full (/ all relevant)")]
    return [(key, header) for key, header in columns if key and key in overall]


def tables(result: dict) -> str:
    """Markdown tables in the shape of the paper's Tables 2 (by family) and 3 (by label): the paper's
    Top-1, Prec.@k (k of the run), mAP@k (AP over the top k, by the hits found there) and Top-1 Type,
    then the vote accuracy (sweeps) and the full-ranking mAP (AP divided by all relevant references)."""
    columns = metric_columns(result["overall"])
    names, header = [key for key, _ in columns], [title for _, title in columns]

    def table(title: str, key: str, section: dict) -> str:
        lines = [f"### {title}", "", f"| {key} | " + " | ".join(header) + " | queries |",
                 "|---" * (len(header) + 2) + "|"]
        for name, values in section.items():
            lines.append(f"| {name} | " + " | ".join(f"{values[n]:.3f}" for n in names) + f" | {values['queries']} |")
        return "\n".join(lines)

    overall = {"all": result["overall"]}
    protocol = result.get("protocol") or {}
    note = (f"Queries: {protocol['query_selection']} of {protocol['labelled_queries']}; index searched in "
            f"{protocol['search']}.\n\n" if protocol.get("query_selection", "").startswith("deterministic sample")
            or protocol.get("search", "one process") != "one process" else "")
    legend = _legend(columns, protocol.get("map_ranking") or (
        f"the top {result['map_truncated_at']}" if result.get("map_truncated_at") else None))
    sections = [table("Overall", "set", overall)]
    if result["by_family"]:
        sections.append(table("By family (Table 2)", "Type", result["by_family"]))
    sections.append(table("By label (Table 3)", "Model", result["by_label"]))
    return note + "\n\n".join(sections) + "\n\n" + legend + "\n"


def _legend(columns: list[tuple[str, str]], ranking: str | None) -> str:
    """One line per column naming what it measures."""
    meaning = {"top1": "the nearest neighbour's label is the query's",
               "type_top1": "the nearest neighbour's family is the query's",
               "vote_accuracy": "the k-NN vote (predicted_label, what users act on) is the query's label",
               "map_full": "AP over the ranking" + (f" ({ranking})" if ranking else "")
               + " divided by all relevant references (scikit-learn's average precision on a whole ranking)"}
    lines = []
    for key, header in columns:
        if key.startswith("precision_at_"):
            text = f"share of the top {metrics.at_k(key)} neighbours with the query's label"
        elif key.startswith("map_at_"):
            text = (f"AP over the top {metrics.at_k(key)}: precision at each hit's rank, summed, divided by the "
                    f"hits found in the top {metrics.at_k(key)} (0 when none); the paper's mAP")
        else:
            text = meaning[key]
        lines.append(f"- {header}: {text}.")
    return "\n".join(lines)


def write(out: str, result: dict) -> None:
    root = storage.Location.parse(out)
    storage.write_bytes(root.join("metrics.json"), json.dumps(result, indent=2).encode())
    storage.write_bytes(root.join("tables.md"), tables(result).encode())
    names = sorted(set(result["confusion"]) | {p for row in result["confusion"].values() for p in row})
    csv = ["true\\predicted," + ",".join(names)]
    csv += [f"{true}," + ",".join(str(result["confusion"][true].get(p, 0)) for p in names)
            for true in sorted(result["confusion"])]
    storage.write_bytes(root.join("confusion.csv"), ("\n".join(csv) + "\n").encode())
