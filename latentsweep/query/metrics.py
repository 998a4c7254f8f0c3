"""The paper's retrieval metrics, each named by what it is; tables by label and family.

Per query, given its ranked neighbours' labels (best first, self-match already removed), the number
R of relevant references (same label, the query itself excluded) and the cut-off k (the paper's 10):

- ``top1``: 1 if the nearest neighbour has the query's label (the paper's Top-1 Accuracy).
- ``precision_at_<k>``: hits in the top k / k (the paper's Precision@10 when k is 10).
- ``map_at_<k>`` (per query ``ap_at_<k>``): the paper's mAP@10 normalisation, AP over the top k only:
  the sum, over the hits at ranks r <= k, of precision@r, divided by the number of hits found in the
  top k (0 when there is none). It can exceed Precision@k (one hit at rank 1: AP@10 = 1, P@10 = 0.1),
  as the paper's tables do.
- ``map_full`` (per query ``ap_full``): AP over the whole ranking given, divided by R (all relevant
  references): scikit-learn's ``average_precision_score`` when the ranking covers the whole
  reference set; otherwise truncated (a sweep ranks k neighbours: ``map_truncated_at``; at most k/R).
- ``type_top1``: 1 if the nearest neighbour's family is the query's (the paper's Top-1 Type).
- ``vote_accuracy`` (sweeps): the k-NN vote (``predicted_label``, what users act on) is the label.

Open set: :func:`auroc` of an unknown score (e.g. minus the best similarity) between queries of a
generator the index does not hold and queries of the ones it holds.

Confidence: :func:`reliability`, the calibration curve of a probability (a sweep's ``confidence``)
against what happened, and its expected calibration error (ECE: the bins' |accuracy - mean
confidence| weighted by their share of the queries).

"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from latentsweep.decision.calibration import unit_bin


def precision_key(k: int) -> str:
    return f"precision_at_{k}"


def ap_key(k: int) -> str:
    """The per-query key of AP over the top k (``ap_at_10``); summaries average it as ``map_at_<k>``."""
    return f"ap_at_{k}"


def per_query(query_label: str, neighbour_labels: list[str | None], total_relevant: int,
              families: dict[str, str], k: int = 10, predicted: str | None = None) -> dict:
    """Metrics of one query given its ranking (best first) and, for a sweep, its voted label."""
    return per_queries([query_label], [neighbour_labels], [total_relevant], families, k,
                       None if predicted is None else [predicted])[0]


def per_queries(query_labels: list[str], rankings, total_relevant: list[int],
                families: dict[str, str], k: int = 10, predicted: list[str] | None = None) -> list[dict]:
    """Metrics of many queries at once (array operations: a night's sweep has 100k of them); every
    ranking (a row of ``rankings``: lists or a 2-d object array) has the same length. ``ap_at_<k>``:
    the sum, over the hits in the top k, of the precision at the hit's rank, divided by the number of
    those hits (0 without one); ``ap_full``: the same sum over the whole ranking divided by
    ``total_relevant`` (0 when that is 0).

    ``predicted``: the queries' voted labels (a sweep's ``predicted_label``); each row then has
    ``vote_accuracy`` and the confusion is keyed on the vote. Without it (the paper's leave-one-out
    protocol) the confusion is keyed on the nearest neighbour's label. Row keys: ``top1``,
    ``precision_at_<k>``, ``ap_at_<k>``, ``ap_full``, ``type_top1`` (and ``vote_accuracy``);
    ``nearest`` (the nearest neighbour's label) and ``predicted`` (what the confusion counts)."""
    labels = np.asarray(query_labels, dtype=object)
    ranked = np.empty((len(rankings), len(rankings[0]) if len(rankings) else 0), dtype=object)
    ranked[:] = rankings
    matches = ranked == labels[:, None]
    hits = np.cumsum(matches, axis=1)
    ranks = np.arange(1, matches.shape[1] + 1)
    relevant = np.asarray(total_relevant, dtype=np.float64)
    precision_at_hits = matches * hits / ranks  # precision@r at every hit rank r, 0 elsewhere
    ap_full = np.divide(precision_at_hits.sum(axis=1), relevant, out=np.zeros(len(labels)), where=relevant > 0)
    hits_in_top = matches[:, :k].sum(axis=1).astype(np.float64)
    ap_top = np.divide(precision_at_hits[:, :k].sum(axis=1), hits_in_top, out=np.zeros(len(labels)),
                       where=hits_in_top > 0)
    precision = hits_in_top / k
    tops = ranked[:, 0] if ranked.shape[1] else np.full(len(labels), None, dtype=object)
    votes = list(predicted) if predicted is not None else None
    rows = []
    for index, (label, top) in enumerate(zip(labels, tops)):
        family = families.get(top) if top is not None else None
        row = {"top1": float(matches[index, 0]) if matches.shape[1] else 0.0}
        if votes is not None:
            row["vote_accuracy"] = float(votes[index] == label)
        row.update({precision_key(k): float(precision[index]), ap_key(k): float(ap_top[index]),
                    "ap_full": float(ap_full[index]),
                    "type_top1": float(family is not None and family == families.get(label)),
                    "nearest": top, "predicted": votes[index] if votes is not None else top})
        rows.append(row)
    return rows


LABELS_OF_ROWS = ("nearest", "predicted")


def summarise(labels: list[str], rows: list[dict], families: dict[str, str]) -> dict:
    """Overall, per-family and per-label means; confusion of true label against ``predicted``
    (the vote in a sweep, the top-1 neighbour's label in the paper's protocol). When no query's label
    has a family (labels from folders), Top-1 Type and the by-family means are left out: they would
    read 0 and "unassigned", which says nothing."""
    return summarise_tally(tally(labels, rows), families)


def tally(labels: list[str], rows: list[dict]) -> dict:
    """What :func:`summarise` needs of ``rows``, in a form that adds up (:func:`merge_tallies`): per
    label, the number of queries and the sum of each metric; the confusion counts. A sweep tallies
    each part where it is written, and the driver adds the tallies: it never holds the queries."""
    by_label: dict = {}
    for label, row in zip(labels, rows):
        entry = by_label.setdefault(label, {"queries": 0, "sums": {}, "confusion": {}})
        entry["queries"] += 1
        for name, value in row.items():
            if name not in LABELS_OF_ROWS:
                entry["sums"][name] = entry["sums"].get(name, 0.0) + value
        predicted = row["predicted"] or "none"
        entry["confusion"][predicted] = entry["confusion"].get(predicted, 0) + 1
    return {"names": [name for name in (rows[0] if rows else ()) if name not in LABELS_OF_ROWS],
            "by_label": by_label}


def merge_tallies(first: dict, second: dict) -> dict:
    """The tally of two sets of queries."""
    merged = {"names": first["names"] or second["names"], "by_label": {}}
    for part in (first, second):
        for label, entry in part["by_label"].items():
            target = merged["by_label"].setdefault(label, {"queries": 0, "sums": {}, "confusion": {}})
            target["queries"] += entry["queries"]
            for name, value in entry["sums"].items():
                target["sums"][name] = target["sums"].get(name, 0.0) + value
            for name, count in entry["confusion"].items():
                target["confusion"][name] = target["confusion"].get(name, 0) + count
    return merged


def summarise_tally(counts: dict, families: dict[str, str]) -> dict:
    """:func:`summarise` of a :func:`tally`."""
    by_label = counts["by_label"]
    typed = any(label in families for label in by_label)
    names = [name for name in (counts["names"] or ("top1", precision_key(10), ap_key(10), "ap_full", "type_top1"))
             if typed or name != "type_top1"]

    def mean(entries: list[dict]) -> dict:
        queries = sum(entry["queries"] for entry in entries)
        result = {("m" + name if name.startswith("ap_") else name):  # ap_at_<k> -> map_at_<k>, ap_full -> map_full
                  sum(entry["sums"].get(name, 0.0) for entry in entries) / queries if queries else 0.0
                  for name in names}
        result["queries"] = queries
        return result

    by_family: dict[str, list[dict]] = defaultdict(list)
    for label, entry in by_label.items():
        by_family[families.get(label, "unassigned")].append(entry)
    voted = "vote_accuracy" in names
    return {"overall": mean(list(by_label.values())),
            "confusion_of": "predicted_label (k-NN vote)" if voted else "top-1 neighbour's label",
            "by_family": {family: mean(entries) for family, entries in sorted(by_family.items())} if typed else {},
            "by_label": {label: mean([entry]) for label, entry in sorted(by_label.items())},
            "confusion": {label: dict(sorted(entry["confusion"].items())) for label, entry in sorted(by_label.items())}}


def precision_name(values: dict) -> str | None:
    """The ``precision_at_<k>`` key of a metrics dict (None without one)."""
    return next((name for name in values if name.startswith("precision_at_")), None)


def map_name(values: dict) -> str | None:
    """The ``map_at_<k>`` key of a metrics dict (None without one)."""
    return next((name for name in values if name.startswith("map_at_")), None)


def at_k(name: str) -> str:
    """The k of a ``precision_at_<k>`` or ``map_at_<k>`` key, as text."""
    return name.rsplit("_at_", 1)[1]


def headline(overall: dict) -> str:
    """One line of the overall metrics, each name carrying what it measures: ``vote_acc`` (the
    k-NN vote), ``top1`` (the nearest neighbour), ``p@<k>``, ``map@<k>`` (AP over the top k, by the
    hits found there), ``type_top1``, ``map_full`` (AP divided by all relevant references)."""
    parts = []
    if "vote_accuracy" in overall:
        parts.append(f"vote_acc={overall['vote_accuracy']:.3f}")
    parts.append(f"top1={overall['top1']:.3f}")
    precision, average = precision_name(overall), map_name(overall)
    if precision:
        parts.append(f"p@{at_k(precision)}={overall[precision]:.3f}")
    if average:
        parts.append(f"map@{at_k(average)}={overall[average]:.3f}")
    parts += [f"{name}={overall[name]:.3f}" for name in ("type_top1", "map_full") if name in overall]
    return " ".join(parts)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive's score exceeds a negative's, ties
    counting half (the Mann-Whitney statistic, scikit-learn's ``roc_auc_score``)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(positive) or not len(negative):
        raise ValueError("AUROC needs at least one positive and one negative score")
    order = np.sort(negative)
    below = np.searchsorted(order, positive, side="left")
    ties = np.searchsorted(order, positive, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(positive) * len(negative)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
    """Calibration curve in ``bins`` equal-width bins of the confidence, ``(low, high]`` (the first
    includes 0): each filled bin's queries, mean confidence and accuracy; and the ECE."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    which = unit_bin(confidence, bins)
    rows, error = [], 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            mean, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
            rows.append({"low": b / bins, "high": (b + 1) / bins, "queries": int(inside.sum()),
                         "mean_confidence": mean, "accuracy": accuracy})
            error += inside.sum() / len(confidence) * abs(accuracy - mean)
    return {"bins": rows, "ece": float(error)}
