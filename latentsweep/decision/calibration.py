"""What an index learns about its own votes at build time, leave-one-out on sampled references.
Pure functions.

- :func:`open_set_threshold`: the similarity under which a sweep calls a query ``unknown``.
- :func:`confidence_tables`: for each vote setting a sweep can use (k = 1 .. the neighbours sampled,
  weighted or not), the probability that the vote's label is right given its vote share, in
  :data:`BINS` equal bins of the share: each bin's leave-one-out accuracy, Laplace-smoothed (a bin of
  three right votes is not certainty) and made non-decreasing in the share by pooling adjacent
  violators (a larger majority never reads as less likely). :func:`confidence` reads a table.

Leave-one-out on references approximates new queries when references are independent images; the
experiment measures how well it transfers to held-out queries (a reliability curve).
"""

from __future__ import annotations

import numpy as np

from latentsweep.decision.vote import votes

BINS = 10  # equal-width bins of the vote share (0, 1]; with k = 10 unweighted, one share per bin


def open_set_threshold(scores: np.ndarray, ids: np.ndarray, own: np.ndarray, target: float,
                       missing: int = -1) -> float | None:
    """``scores``/``ids``: sampled references' exact neighbours (best first, each reference among
    them), ``own`` their ids. Each reference's best similarity to another one is what a known
    generator's image scores; the threshold is the largest value under which at most ``target`` of
    them fall. None without a sample (nothing to calibrate on)."""
    others = np.where((ids != own[:, None]) & (ids != missing), scores, -np.inf).max(axis=1, initial=-np.inf)
    best = np.sort(others[np.isfinite(others)])
    if not len(best):
        return None
    return float(best[int(np.floor(target * len(best)))])


def unit_bin(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The bin of each value among ``bins`` equal bins (low, high] of (0, 1] (0 joins the first): a vote
    share or a probability of exactly i/bins falls in bin i - 1 (floating-point products like
    0.3 * 10 = 3.0000000000000004 are pulled back before rounding up)."""
    return np.clip(np.ceil(np.round(np.asarray(values, np.float64) * bins, 9)) - 1, 0, bins - 1).astype(np.int64)


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks: list[list[float]] = []  # [weighted mean, weight, length]
    for value, weight in zip(values, weights):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            right, left = blocks.pop(), blocks.pop()
            total = left[1] + right[1]
            blocks.append([(left[0] * left[1] + right[0] * right[1]) / total, total, left[2] + right[2]])
    return np.repeat([b[0] for b in blocks], [b[2] for b in blocks])


def fit_table(share: np.ndarray, correct: np.ndarray) -> dict:
    """P(right | share bin) from one vote setting's leave-one-out votes: ``{"probability": [BINS],
    "queries": [BINS]}``. Empty bins take their nearest filled neighbour's value (lower first)."""
    bins = unit_bin(share)
    counts = np.bincount(bins, minlength=BINS)
    right = np.bincount(bins, weights=np.asarray(correct, np.float64), minlength=BINS)
    filled = counts > 0
    probability = np.full(BINS, np.nan)
    if filled.any():
        smoothed = (right[filled] + 1) / (counts[filled] + 2)
        probability[filled] = _pool_adjacent_violators(smoothed, counts[filled] + 2)
        positions = np.flatnonzero(filled)
        nearest = positions[np.clip(np.searchsorted(positions, np.arange(BINS), side="right") - 1, 0, None)]
        probability = probability[nearest]
    return {"probability": [round(float(p), 6) for p in probability], "queries": counts.tolist()}


def table_key(k: int, weighted: bool) -> str:
    return f"k={k}" + (",weighted" if weighted else "")


def confidence_tables(neighbour_codes: np.ndarray, neighbour_scores: np.ndarray, own_codes: np.ndarray,
                      missing: int = -1) -> dict[str, dict]:
    """Tables for every k up to the neighbours given and both vote kinds. ``neighbour_codes[i]``: the
    label codes of reference i's neighbours with itself already left out (``missing``: none or no
    label), best first; ``own_codes[i]``: its own label's code (``missing`` rows are skipped)."""
    keep = own_codes != missing
    codes, scores, own = neighbour_codes[keep], neighbour_scores[keep], own_codes[keep]
    tables = {}
    for weighted in (False, True):
        for k in range(1, codes.shape[1] + 1):
            decided = votes(codes[:, :k], scores[:, :k], weighted)
            voted = ~decided.unknown
            if voted.any():
                tables[table_key(k, weighted)] = fit_table(decided.share[voted], decided.codes[voted] == own[voted])
    return tables


def confidence(tables: dict[str, dict], k: int, weighted: bool, share: np.ndarray) -> np.ndarray | None:
    """The calibrated probability that each vote is right, or None when the index has no table for
    this vote setting (built before calibration, or k above the neighbours it sampled)."""
    table = tables.get(table_key(k, weighted))
    if table is None:
        return None
    return np.asarray(table["probability"], np.float64)[unit_bin(share)]
