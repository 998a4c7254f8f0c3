"""The paper's retrieval metrics: Top-1, Precision@10, mAP, Top-1 Type; tables by label and family.

Each query comes with its ranked neighbours' labels (self-match already removed) and the number of
relevant references (same label, the query itself excluded), so AP is exact when the ranking covers
the whole reference set and is marked truncated otherwise.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def per_query(query_label: str, neighbour_labels: list[str | None], total_relevant: int,
              families: dict[str, str], k: int = 10) -> dict:
    """Metrics of one query given its ranking (best first)."""
    return per_queries([query_label], [neighbour_labels], [total_relevant], families, k)[0]


def per_queries(query_labels: list[str], rankings, total_relevant: list[int],
                families: dict[str, str], k: int = 10) -> list[dict]:
    """Metrics of many queries at once (array operations: a night's sweep has 100k of them); every
    ranking (a row of ``rankings``: lists or a 2-d object array) has the same length. AP = the sum, over the hits, of the precision at the hit's rank,
    divided by the number of relevant references."""
    labels = np.asarray(query_labels, dtype=object)
    ranked = np.empty((len(rankings), len(rankings[0]) if len(rankings) else 0), dtype=object)
    ranked[:] = rankings
    matches = ranked == labels[:, None]
    hits = np.cumsum(matches, axis=1)
    ranks = np.arange(1, matches.shape[1] + 1)
    relevant = np.asarray(total_relevant, dtype=np.float64)
    ap = np.divide((matches * hits / ranks).sum(axis=1), relevant, out=np.zeros(len(labels)), where=relevant > 0)
    precision = matches[:, :k].sum(axis=1) / k
    tops = ranked[:, 0] if ranked.shape[1] else np.full(len(labels), None, dtype=object)
    rows = []
    for index, (label, top) in enumerate(zip(labels, tops)):
        family = families.get(top) if top is not None else None
        rows.append({"top1": float(matches[index, 0]) if matches.shape[1] else 0.0,
                     "precision_at_10": float(precision[index]), "ap": float(ap[index]),
                     "type_top1": float(family is not None and family == families.get(label)),
                     "predicted": top})
    return rows


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
