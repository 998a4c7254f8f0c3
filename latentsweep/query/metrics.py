"""The paper's retrieval metrics: Top-1, Precision@10, mAP, Top-1 Type; tables by label and family.

Each query comes with its ranked neighbours' labels (self-match already removed) and the number of
relevant references (same label, the query itself excluded), so AP is exact when the ranking covers
the whole reference set and is marked truncated otherwise.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def average_precision(relevant_ranks: np.ndarray, total_relevant: int) -> float:
    """AP of one ranking: mean over relevant items of precision at their rank (ranks from 1)."""
    if total_relevant == 0:
        return 0.0
    ranks = np.sort(np.asarray(relevant_ranks, dtype=np.float64))
    hits = np.arange(1, len(ranks) + 1)
    return float(np.sum(hits / ranks) / total_relevant)


def per_query(query_label: str, neighbour_labels: list[str | None], total_relevant: int,
              families: dict[str, str], k: int = 10) -> dict:
    """Metrics of one query given its ranking (best first)."""
    matches = np.array([label == query_label for label in neighbour_labels], dtype=bool)
    top = neighbour_labels[0] if neighbour_labels else None
    return {
        "top1": float(matches[0]) if len(matches) else 0.0,
        "precision_at_10": float(matches[:k].sum() / k),
        "ap": average_precision(np.flatnonzero(matches) + 1, total_relevant),
        "type_top1": float(top is not None and families.get(top) is not None
                           and families.get(top) == families.get(query_label)),
        "predicted": top,
    }


def summarise(labels: list[str], rows: list[dict], families: dict[str, str]) -> dict:
    """Overall, per-family and per-label means; confusion of the top-1 neighbour's label."""
    names = ("top1", "precision_at_10", "ap", "type_top1")

    def mean(selected: list[dict]) -> dict:
        result = {name: float(np.mean([r[name] for r in selected])) if selected else 0.0 for name in names}
        result["map"] = result.pop("ap")
        result["queries"] = len(selected)
        return result

    by_label, by_family = defaultdict(list), defaultdict(list)
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for label, row in zip(labels, rows):
        by_label[label].append(row)
        by_family[families.get(label, "unassigned")].append(row)
        confusion[label][row["predicted"] or "none"] += 1
    return {"overall": mean(rows),
            "by_family": {family: mean(selected) for family, selected in sorted(by_family.items())},
            "by_label": {label: mean(selected) for label, selected in sorted(by_label.items())},
            "confusion": {label: dict(sorted(row.items())) for label, row in sorted(confusion.items())}}
