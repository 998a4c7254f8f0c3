"""Open set, leave one generator out: each class of the real-software held-out split in turn is left
out of the references; its held-out queries should be called unknown, the others attributed. The
index's own calibrated threshold (``index build --open-set-target``) decides, as in a sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentsweep_lab.experiment.common import HELD_OUT_CORPUS as CORPUS, VOTE_K, query_votes, subset

OPEN_SET_FEATURES = ("2lat", "fingerprint", "residual_spectrum")


def leave_one_out(references: str, queries: str, left_out: str, labels: list[str], features: str, root: Path) -> dict:
    """AUROC of minus the best similarity (unknown score) between the left-out class's queries and the
    others', and the sweep's decisions at the calibrated threshold."""
    from latentsweep.decision.vote import UNKNOWN
    from latentsweep.index.build import IndexJob, build
    from latentsweep.query.metrics import auroc

    kept = subset(references, root / "references" / left_out, tuple(label for label in labels if label != left_out))
    index = root / "index" / features / left_out
    if not (index / "manifest.json").exists():
        build(IndexJob([kept], str(index), features=features, shards=1, quiet=True))
    voted = query_votes(index, [queries], VOTE_K, open_set=True)
    unknown = voted.label == left_out
    return {"auroc": auroc(-voted.top[unknown], -voted.top[~unknown]),
            "unknown_detected": float((voted.predicted[unknown] == UNKNOWN).mean()),
            "known_accuracy": float((voted.predicted[~unknown] == voted.label[~unknown]).mean()),
            "known_called_unknown": float((voted.predicted[~unknown] == UNKNOWN).mean())}


def open_set_table(root: Path, controlled: Path, log, feature_sets: tuple[str, ...] = OPEN_SET_FEATURES) -> list[dict]:
    """Per feature set: the leave-one-out results averaged over the classes (each class once unknown)."""
    from latentsweep import storage
    from latentsweep.index.reader import embedding_files

    references = str(controlled / "embeddings" / CORPUS / "reference")
    queries = str(controlled / "embeddings" / CORPUS / "queries")
    labels = sorted({label for uri in embedding_files([references])
                     for label in storage.read_table(uri, columns=["label"]).column("label").to_pylist()})
    rows = []
    for features in feature_sets:
        runs = [leave_one_out(references, queries, left_out, labels, features, root) for left_out in labels]
        row = {"features": features, "classes": len(labels),
               **{key: round(float(np.mean([r[key] for r in runs])), 4)
                  for key in ("auroc", "unknown_detected", "known_accuracy", "known_called_unknown")}}
        rows.append(row)
        log(f"experiment: open set {features}: AUROC {row['auroc']:.3f}, known accuracy {row['known_accuracy']:.3f}")
    return rows


def open_set_markdown(rows: list[dict]) -> list[str]:
    lines = ["## Open set: leave one generator out (real software, held-out split)", "",
             "Each class in turn is left out of the references; its held-out queries should be called unknown. "
             "AUROC of the unknown score (minus the best cosine similarity) between them and the known classes' "
             "queries; then the sweep's decisions at the threshold each index calibrated on its own references "
             "(`--open-set-target 0.05`): the share of the left-out class called unknown, the 10-NN vote accuracy "
             "on the known classes (unknown counts as wrong) and the share of known queries called unknown. "
             "Means over the classes.", "",
             "| features | AUROC | unknown detected | known accuracy | known called unknown |", "|---|---|---|---|---|"]
    lines += [f"| {r['features']} | {r['auroc']:.3f} | {r['unknown_detected']:.3f} | {r['known_accuracy']:.3f} | "
              f"{r['known_called_unknown']:.3f} |" for r in rows]
    return lines + [""]
