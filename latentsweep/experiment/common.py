"""What every table of the experiment shares: ingest a corpus, build-and-evaluate an index (each step
skipped when its output exists, so a rerun resumes), the k-NN vote's accuracy, label subsets and the
headline metrics of a row."""

from __future__ import annotations

import json
from pathlib import Path

VOTE_K = 10  # neighbours of the k-NN vote (a sweep's default)
HELD_OUT_CORPUS = "software-held-out"  # the controlled corpus robustness and the open set are measured on


def ingest_corpus(source: Path, dest: Path, pooling: str = "gap", log=print) -> str:
    from latentsweep.codec.embed import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run as ingest

    summary = ingest(IngestJob(str(source / "manifest.csv"), str(dest),
                               EmbedSettings(feature_set="all", pooling=pooling), shard_size=64, quiet=True))
    log(f"experiment: ingest {source.name} ({pooling}): {summary.embedded}/{summary.inputs} embedded, "
        f"{summary.images_per_second:.1f} images/s")
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


def vote_accuracy(index: Path, sources: list[str], k: int = VOTE_K) -> dict:
    """Share of labelled queries whose k-NN vote (a sweep's ``predicted_label``: majority, ties to the
    larger summed similarity) is their label; a query that is a reference leaves itself out."""
    from latentsweep.index import features
    from latentsweep.query.actor import QueryEngine
    from latentsweep.query.vote import vote

    engine = QueryEngine(str(index), k=k + 1)
    correct = total = 0
    for uri in features.embedding_files(sources):
        batch = features.read_columns(uri, list(engine.manifest.columns))
        labels = batch.metadata.column("label").to_pylist()
        scores, _, neighbours = engine.search(batch.vectors, k, exclude_ids=batch.ids)
        for label, row_scores, row_labels in zip(labels, scores, neighbours):
            if label is not None:
                total += 1
                correct += vote(list(row_labels), row_scores, engine.families).label == label
    return {"vote_accuracy": correct / max(total, 1), "vote_k": k}


def subset(source: str, dest: Path, labels: tuple[str, ...]) -> str:
    """The rows of ``labels`` from an ingest output, as one embeddings file (2 and 4 class rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from latentsweep import storage
    from latentsweep.index.features import embedding_files

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
