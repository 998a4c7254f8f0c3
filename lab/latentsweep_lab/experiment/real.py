"""Real versus generated, and the SFMA paper's question: does a round trip through a learned codec
push a real photo toward "generated"? On the real-software held-out split, whose ``real`` class is
the untouched photo crops: the sweep's vote (10-NN, no open-set threshold) of the clean held-out
queries, read as real / generated, and the votes of the ``real`` queries after the robustness
table's round trip through this project's codec (``codec`` condition), against the clean index."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from latentsweep_lab.experiment.common import HELD_OUT_CORPUS as CORPUS, query_votes

REAL = "real"
REAL_FEATURES = ("2lat", "fingerprint", "residual_spectrum")


def real_table(robustness: Path, controlled: Path, log, feature_sets: tuple[str, ...] = REAL_FEATURES) -> list[dict]:
    """Per feature set: real-vs-generated accuracy of the clean held-out queries (each side's recall
    too), and where the codec's round trip sends the real ones. ``robustness``/``controlled``: those
    tables' folders (their embeddings and indices are reused, nothing is ingested here)."""
    rows = []
    for features in feature_sets:
        index = controlled / "index" / CORPUS / features
        clean = query_votes(index, [str(controlled / "embeddings" / CORPUS / "queries")])
        coded = query_votes(index, [str(robustness / "embeddings" / "queries" / "codec")])
        truth, said = clean.label == REAL, clean.predicted == REAL
        round_trip = coded.predicted[coded.label == REAL]
        if not truth.any() or not len(round_trip):
            raise ValueError(f"the {CORPUS} queries hold no '{REAL}' class: remake the corpus with this version")
        elsewhere = Counter(label for label in round_trip if label != REAL).most_common(1)
        rows.append({"features": features, "queries": len(truth), "real_queries": int(truth.sum()),
                     "real_vs_generated": round(float((truth == said).mean()), 4),
                     "real_called_real": round(float(said[truth].mean()), 4),
                     "generated_called_generated": round(float((~said[~truth]).mean()), 4),
                     "codec_real_called_real": round(float(np.mean(round_trip == REAL)), 4),
                     "codec_real_top_other": f"{elsewhere[0][0]} ({elsewhere[0][1] / len(round_trip):.2f})"
                     if elsewhere else "-"})
        log(f"experiment: real vs generated {features}: {rows[-1]['real_vs_generated']:.3f}; real after the codec "
            f"called real {rows[-1]['codec_real_called_real']:.3f}")
    return rows


def real_markdown(rows: list[dict]) -> list[str]:
    lines = ["## Real versus generated (real software, held-out split)", "",
             f"The split's `{REAL}` class is the untouched photo crops; the other classes are resized by "
             "scikit-image and scipy. Held-out queries (new content) against the clean references, 10-NN vote "
             "without an open-set threshold, read as real (voted `real`) or generated (voted any other class): "
             "accuracy, and each side's share recognised. Then the `real` queries after a round trip through "
             "this project's codec (the robustness table's `codec` condition): the share still voted `real`, "
             "and the class most of the others go to (its share of the round-tripped real queries).", "",
             "| features | real vs generated | real called real | generated called generated | "
             "after the codec: called real | after the codec: most voted other |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['features']} | {r['real_vs_generated']:.3f} | {r['real_called_real']:.3f} | "
              f"{r['generated_called_generated']:.3f} | {r['codec_real_called_real']:.3f} | "
              f"{r['codec_real_top_other']} |" for r in rows]
    return lines + [""]
