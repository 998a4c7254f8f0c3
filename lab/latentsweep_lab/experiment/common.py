"""What every table of the experiment shares: a corpus folder's manifest, ingest a corpus,
build-and-evaluate an index (each step skipped when its output exists, so a rerun resumes), the k-NN
vote's accuracy, label subsets and the headline metrics of a row."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOTE_K = 10  # neighbours of the k-NN vote (a sweep's default)
HELD_OUT_CORPUS = "software-held-out"  # the controlled corpus robustness and the open set are measured on


def manifest_rows(folder: Path) -> list[dict]:
    """The rows of ``folder/manifest.csv`` (``uri`` relative to ``folder``, ``label``, ``family``)."""
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def write_manifest(folder: Path, rows: list[dict]) -> None:
    """``folder/manifest.csv`` of ``rows`` (a corpus derived from another: its rows, ``uri`` changed)."""
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def ingest_corpus(source: Path, dest: Path, pooling: str = "gap", log=print, augment: str = "none") -> str:
    """``augment``: the references' processed copies (``ingest --augment``)."""
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run as ingest

    summary = ingest(IngestJob(str(source / "manifest.csv"), str(dest),
                               EmbedSettings(feature_set="all", pooling=pooling), shard_size=64,
                               quiet=True, augment=augment))
    log(f"experiment: ingest {source.name} ({pooling}): "
        f"{summary.embedded}/{summary.inputs} embedded, {summary.images_per_second:.1f} images/s")
    return str(dest)


def evaluate_index(embeddings: list[str], index: Path, features: str, out: Path, queries: list[str] | None = None,
              vote: bool = False) -> dict:
    """Build the index if missing, evaluate if not done; ``vote``: add the k-NN vote's accuracy."""
    from latentsweep.index.build import IndexJob, build
    from latentsweep.query.evaluate import evaluate

    if not (index / "manifest.json").exists():
        build(IndexJob(embeddings, str(index), features=features, shards=1, quiet=True))
    if not (out / "metrics.json").exists():
        evaluate(str(index), str(out), queries=queries)
    metrics = json.loads((out / "metrics.json").read_text())
    if vote:
        if not (out / "vote.json").exists():
            (out / "vote.json").write_text(json.dumps(vote_accuracy(index, queries or embeddings)))
        metrics["overall"].update(json.loads((out / "vote.json").read_text()))
    return metrics


@dataclass
class QueryVotes:
    """Every query of a set voted as a sweep votes, one array entry each."""
    label: np.ndarray               # true label (None when unlabelled)
    predicted: np.ndarray           # the vote's label (``unknown`` under the open-set threshold)
    share: np.ndarray               # the winner's share of the votes
    top: np.ndarray                 # similarity of the nearest reference
    confidence: np.ndarray | None   # the index's calibrated P(right); None without a calibration


def query_votes(index: Path, sources: list[str], k: int = VOTE_K, open_set: bool = False) -> QueryVotes:
    """The queries of ``sources`` against ``index``: their k nearest (a query that is a reference
    leaves itself out) and the k-NN vote; ``open_set``: at the index's calibrated threshold."""
    from latentsweep.decision.calibration import confidence
    from latentsweep.decision.vote import vote
    from latentsweep.index import reader
    from latentsweep.query.actor import QueryEngine

    engine = QueryEngine(str(index), k=k + 1)
    threshold = engine.manifest.open_set_threshold if open_set else None
    found: list[tuple] = []
    for uri in reader.embedding_files(sources):
        batch = reader.read_columns(uri, list(engine.manifest.columns))
        scores, _, neighbours = engine.search(batch.vectors, k, exclude_ids=batch.ids)
        for label, row_scores, row_labels in zip(batch.metadata.column("label").to_pylist(), scores, neighbours):
            decided = vote(list(row_labels), row_scores, engine.families, open_set_threshold=threshold)
            found.append((label, decided.label, decided.share, decided.top_score))
    columns = list(zip(*found)) or [()] * 4
    label, predicted = np.array(columns[0], dtype=object), np.array(columns[1], dtype=object)
    share, top = np.array(columns[2], np.float64), np.array(columns[3], np.float64)
    return QueryVotes(label, predicted, share, top, confidence(engine.manifest.confidence, k, False, share))


def vote_accuracy(index: Path, sources: list[str], k: int = VOTE_K) -> dict:
    """Share of labelled queries whose k-NN vote (a sweep's ``predicted_label``: majority, ties to the
    larger summed similarity) is their label, and the calibration curve of the confidence a sweep
    gives each vote (the index's own leave-one-out calibration)."""
    from latentsweep.query.metrics import reliability

    voted = query_votes(index, sources, k)
    labelled = np.array([label is not None for label in voted.label], bool)
    correct = voted.predicted[labelled] == voted.label[labelled]
    return {"vote_accuracy": float(correct.mean()) if len(correct) else 0.0, "vote_k": k,
            **({"reliability": reliability(voted.confidence[labelled], correct)}
               if voted.confidence is not None and len(correct) else {})}


def subset(source: str, dest: Path, labels: tuple[str, ...]) -> str:
    """The rows of ``labels`` from an ingest output, as one embeddings file (2 and 4 class rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from latentsweep import storage
    from latentsweep.index.reader import embedding_files

    target = dest / "embeddings" / "subset.parquet"
    if not target.exists():
        tables = [storage.read_table(uri) for uri in embedding_files([source])]
        table = pa.concat_tables(tables)
        storage.write_table(storage.Location.parse(str(target)),
                            table.filter(pc.is_in(table.column("label"), pa.array(list(labels)))))
    return str(dest)


def headline(metrics: dict) -> dict:
    overall = metrics["overall"]
    return {key: round(overall[key], 4) for key in ("top1", "precision_at_10", "map_at_10", "map_full", "type_top1",
                                                    "vote_accuracy", "queries") if key in overall}
