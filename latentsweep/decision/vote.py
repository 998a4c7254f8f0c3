"""Attribution by k-NN vote over the neighbours' labels. Pure functions.

The predicted label is the majority among the top-k neighbours; ties go to the label with the larger
summed similarity, then to the label met first. With ``weighted`` each neighbour votes with its
similarity instead of 1. A query whose best similarity is under ``open_set_threshold`` is ``unknown``
(none of the known generators).

:func:`votes` decides a whole batch with array operations (a sweep votes on every query of a part at
once); :func:`vote` is the same decision for one query. Both sum each label's votes in neighbour
order, one neighbour at a time, so the shares are the same floating-point numbers as a loop over the
neighbours gives.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Votes:
    """The votes of n queries, one entry each."""
    codes: np.ndarray      # int64: the winning label's code, -1 when unknown
    share: np.ndarray      # float64: the winner's share of the (weighted) votes
    top_score: np.ndarray  # float64: similarity of the nearest neighbour (-inf when there is none)
    unknown: np.ndarray    # bool


def _first_of_label(codes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """For each neighbour, the position of the first valid neighbour of its row with the same label
    (its label's entry in the row's tally, in order of first appearance)."""
    n, k = codes.shape
    keyed = np.where(valid, codes, np.iinfo(np.int64).max)  # invalid neighbours sort last, in a group never used
    order = np.argsort(keyed, axis=1, kind="stable")         # stable: a group begins at its first position
    grouped = np.take_along_axis(keyed, order, axis=1)
    starts = np.ones((n, k), bool)
    starts[:, 1:] = grouped[:, 1:] != grouped[:, :-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(k), 0), axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, group_start, axis=1), axis=1)
    return first


def votes(codes: np.ndarray, scores: np.ndarray, weighted: bool = False,
          open_set_threshold: float | None = None) -> Votes:
    """``codes[i, j]`` and ``scores[i, j]``: the label code (-1: no neighbour or no label) and the
    similarity of query i's j-th neighbour, best first."""
    codes = np.asarray(codes, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n, k = codes.shape
    top = scores[:, 0] if k else np.full(n, -np.inf)
    top = np.where(np.isfinite(top), top, -np.inf)
    if not k:
        return Votes(np.full(n, -1, np.int64), np.zeros(n), top, np.ones(n, bool))
    valid = (codes >= 0) & np.isfinite(scores)
    first = _first_of_label(codes, valid)
    weights = scores if weighted else np.ones_like(scores)
    tally, similarity = np.zeros((n, k)), np.zeros((n, k))
    for j in range(k):  # one neighbour at a time, in order: the sums of a loop over the neighbours
        rows = np.flatnonzero(valid[:, j])
        tally[rows, first[rows, j]] += weights[rows, j]
        similarity[rows, first[rows, j]] += scores[rows, j]
    entry = valid & (first == np.arange(k))  # one per label present, in order of first appearance
    best = np.where(entry, tally, -np.inf).max(axis=1, keepdims=True)
    contenders = entry & (tally == best)
    closest = np.where(contenders, similarity, -np.inf).max(axis=1, keepdims=True)
    winner = np.argmax(contenders & (similarity == closest), axis=1)  # the first met on a full tie
    total = np.zeros(n)
    for j in range(k):  # the labels' tallies summed in order of first appearance
        total += np.where(entry[:, j], tally[:, j], 0.0)
    won = tally[np.arange(n), winner]
    share = np.divide(won, total, out=np.zeros(n), where=total > 0)
    voted = entry.any(axis=1)
    unknown = ~voted
    if open_set_threshold is not None:
        unknown |= top < open_set_threshold
    return Votes(np.where(unknown, -1, codes[np.arange(n), winner]), np.where(voted, share, 0.0), top, unknown)


def vote(labels: list[str | None], scores: np.ndarray, families: dict[str, str] | None = None,
         weighted: bool = False, open_set_threshold: float | None = None) -> Vote:
    """One query: ``labels[i]``/``scores[i]`` of its neighbours, best first (None = no neighbour)."""
    names = list(dict.fromkeys(label for label in labels if label is not None))
    codes = np.array([[names.index(label) if label is not None else -1 for label in labels]], np.int64)
    result = votes(codes.reshape(1, len(labels)), np.asarray(scores, np.float64).reshape(1, len(labels)),
                   weighted, open_set_threshold)
    code = int(result.codes[0])
    label = names[code] if code >= 0 else UNKNOWN
    return Vote(label, (families or {}).get(label) if code >= 0 else None, float(result.share[0]),
                float(result.top_score[0]), bool(result.unknown[0]))
