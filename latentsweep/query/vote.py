"""Attribution by k-NN vote over the neighbours' labels. Pure functions.

The predicted label is the majority among the top-k neighbours; ties go to the label with the larger
summed similarity. With ``weighted`` each neighbour votes with its similarity instead of 1. A query
whose best similarity is under ``open_set_threshold`` is ``unknown`` (none of the known generators).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Vote:
    label: str
    family: str | None
    share: float      # the winning label's share of the (weighted) votes
    top_score: float  # similarity of the nearest neighbour
    unknown: bool


def vote(labels: list[str | None], scores: np.ndarray, families: dict[str, str] | None = None,
         weighted: bool = False, open_set_threshold: float | None = None) -> Vote:
    """One query: ``labels[i]``/``scores[i]`` of its neighbours, best first (None = no neighbour)."""
    families = families or {}
    tally: dict[str, float] = defaultdict(float)
    similarity: dict[str, float] = defaultdict(float)
    for label, score in zip(labels, scores):
        if label is None or not np.isfinite(score):
            continue
        tally[label] += float(score) if weighted else 1.0
        similarity[label] += float(score)
    top = float(scores[0]) if len(scores) and np.isfinite(scores[0]) else float("-inf")
    if not tally:
        return Vote(UNKNOWN, None, 0.0, top, True)
    winner = max(tally, key=lambda label: (tally[label], similarity[label]))
    total = sum(tally.values())
    share = tally[winner] / total if total > 0 else 0.0
    if open_set_threshold is not None and top < open_set_threshold:
        return Vote(UNKNOWN, None, share, top, True)
    return Vote(winner, families.get(winner), share, top, False)
