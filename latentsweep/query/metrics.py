"""The paper's retrieval metrics: Top-1, Precision@k, mAP, Top-1 Type; tables by label and family.
Sweeps add the vote accuracy: how often the k-NN vote (``predicted_label``, what users act on) is
the query's label; Top-1 is the nearest neighbour's label alone. The precision key carries its k
(``precision_at_10`` with the paper's k=10, ``precision_at_5`` with ``-k 5``).

Each query comes with its ranked neighbours' labels (self-match already removed) and the number of
relevant references (same label, the query itself excluded), so AP is exact when the ranking covers
the whole reference set and is marked truncated otherwise.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def precision_key(k: int) -> str:
    return f"precision_at_{k}"


def per_query(query_label: str, neighbour_labels: list[str | None], total_relevant: int,
              families: dict[str, str], k: int = 10, predicted: str | None = None) -> dict:
    """Metrics of one query given its ranking (best first) and, for a sweep, its voted label."""
    return per_queries([query_label], [neighbour_labels], [total_relevant], families, k,
                       None if predicted is None else [predicted])[0]


def per_queries(query_labels: list[str], rankings, total_relevant: list[int],
                families: dict[str, str], k: int = 10, predicted: list[str] | None = None) -> list[dict]:
    """Metrics of many queries at once (array operations: a night's sweep has 100k of them); every
    ranking (a row of ``rankings``: lists or a 2-d object array) has the same length. AP = the sum, over the hits, of the precision at the hit's rank,
    divided by the number of relevant references.

    ``predicted``: the queries' voted labels (a sweep's ``predicted_label``); each row then has
    ``vote_accuracy`` and the confusion is keyed on the vote. Without it (the paper's leave-one-out
    protocol) the confusion is keyed on the nearest neighbour's label. Row keys: ``top1``,
    ``precision_at_<k>``, ``ap``, ``type_top1`` (and ``vote_accuracy``); ``nearest`` (the nearest
    neighbour's label) and ``predicted`` (what the confusion counts)."""
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
    votes = list(predicted) if predicted is not None else None
    rows = []
    for index, (label, top) in enumerate(zip(labels, tops)):
        family = families.get(top) if top is not None else None
        row = {"top1": float(matches[index, 0]) if matches.shape[1] else 0.0}
        if votes is not None:
            row["vote_accuracy"] = float(votes[index] == label)
        row.update({precision_key(k): float(precision[index]), "ap": float(ap[index]),
                    "type_top1": float(family is not None and family == families.get(label)),
                    "nearest": top, "predicted": votes[index] if votes is not None else top})
        rows.append(row)
    return rows


LABELS_OF_ROWS = ("nearest", "predicted")


def summarise(labels: list[str], rows: list[dict], families: dict[str, str]) -> dict:
    """Overall, per-family and per-label means; confusion of true label against ``predicted``
    (the vote in a sweep, the top-1 neighbour's label in the paper's protocol)."""
    names = [name for name in (rows[0] if rows else ("top1", precision_key(10), "ap", "type_top1"))
             if name not in LABELS_OF_ROWS]

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
    voted = bool(rows) and "vote_accuracy" in rows[0]
    return {"overall": mean(rows),
            "confusion_of": "predicted_label (k-NN vote)" if voted else "top-1 neighbour's label",
            "by_family": {family: mean(selected) for family, selected in sorted(by_family.items())},
            "by_label": {label: mean(selected) for label, selected in sorted(by_label.items())},
            "confusion": {label: dict(sorted(row.items())) for label, row in sorted(confusion.items())}}


def precision_name(values: dict) -> str | None:
    """The ``precision_at_<k>`` key of a metrics dict (None without one)."""
    return next((name for name in values if name.startswith("precision_at_")), None)


def headline(overall: dict) -> str:
    """One line of the overall metrics, each name carrying what it measures: ``vote_acc`` (the
    k-NN vote), ``top1`` (the nearest neighbour), ``p@<k>``, ``map``, ``type_top1``."""
    parts = []
    if "vote_accuracy" in overall:
        parts.append(f"vote_acc={overall['vote_accuracy']:.3f}")
    parts.append(f"top1={overall['top1']:.3f}")
    precision = precision_name(overall)
    if precision:
        parts.append(f"p@{precision.removeprefix('precision_at_')}={overall[precision]:.3f}")
    parts += [f"{name}={overall[name]:.3f}" for name in ("map", "type_top1") if name in overall]
    return " ".join(parts)
