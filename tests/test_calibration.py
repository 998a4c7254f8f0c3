"""The index's calibration of its own votes (pure functions): the open-set threshold and the vote's
confidence, by hand and against a loop over the one-query vote."""

from __future__ import annotations

import numpy as np
import pytest

from latentsweep.decision.calibration import (BINS, confidence, confidence_tables, fit_table, open_set_threshold,
                                              unit_bin, table_key)
from latentsweep.decision.vote import vote

MISSING = -1


def test_open_set_threshold_leaves_each_reference_out_and_takes_the_target_quantile():
    own = np.arange(20)
    best_other = np.linspace(0.1, 0.9, 20)[::-1]          # the references' nearest other, known by design
    ids = np.stack([own, (own + 1) % 20, np.full(20, MISSING)], axis=1)    # each finds itself first
    scores = np.stack([np.ones(20), best_other, np.full(20, -np.inf)], axis=1)
    assert open_set_threshold(scores, ids, own, 0.05) == pytest.approx(np.sort(best_other)[1])
    assert open_set_threshold(scores, ids, own, 0.0) == pytest.approx(0.1)  # nothing falls below
    alone = np.stack([own, np.full(20, MISSING), np.full(20, MISSING)], axis=1)
    assert open_set_threshold(scores, alone, own, 0.05) is None             # no other reference to score


def test_vote_shares_of_ten_neighbours_fall_one_per_bin():
    counts = np.arange(1, 11)
    summed = np.array([sum([0.1] * c) for c in counts])  # 0.30000000000000004 and friends
    assert unit_bin(counts / 10).tolist() == list(range(BINS))
    assert unit_bin(summed).tolist() == list(range(BINS))
    assert unit_bin(np.array([0.0, 0.05, 0.101, 1.0])).tolist() == [0, 0, 1, 9]


def test_fit_table_by_hand():
    # bin 2: 1 of 3 right -> (1 + 1) / (3 + 2); bin 5: 1 of 2 -> 2 / 4; bin 9: 1 of 1 -> 2 / 3
    table = fit_table(np.array([0.3, 0.3, 0.3, 0.6, 0.6, 1.0]), np.array([0, 0, 1, 1, 0, 1]))
    p = table["probability"]
    assert table["queries"] == [0, 0, 3, 0, 0, 2, 0, 0, 0, 1]
    assert p[2] == pytest.approx(0.4) and p[5] == pytest.approx(0.5) and p[9] == pytest.approx(2 / 3, abs=1e-6)
    assert p[:2] == [p[2]] * 2 and p[3:5] == [p[2]] * 2 and p[6:9] == [p[5]] * 3  # empty bins: nearest below


def test_fit_table_pools_a_larger_share_that_reads_less_likely():
    # share 0.5: 9 of 10 right (10/12); share 1.0: 5 of 10 (6/12): pooled, equal weights -> 2/3 each
    shares = np.array([0.5] * 10 + [1.0] * 10)
    correct = np.array([1] * 9 + [0] + [1] * 5 + [0] * 5)
    p = fit_table(shares, correct)["probability"]
    assert p[4] == pytest.approx(2 / 3, abs=1e-6) and p[9] == pytest.approx(2 / 3, abs=1e-6)
    assert np.all(np.diff(p) >= 0)


def test_tables_are_the_one_query_votes_fitted_for_every_k_and_vote_kind():
    rng = np.random.default_rng(5)
    n, depth = 300, 6
    codes = rng.integers(-1, 3, size=(n, depth))
    scores = -np.sort(-rng.random((n, depth)), axis=1)
    own = rng.integers(-1, 3, size=n)
    tables = confidence_tables(codes, scores, own)
    assert set(tables) == {table_key(k, w) for k in range(1, depth + 1) for w in (False, True)}
    names = ["a", "b", "c"]
    for k in (1, 4, depth):
        for weighted in (False, True):
            decided = [(row, vote([names[c] if c >= 0 else None for c in codes[row, :k]], scores[row, :k],
                                  weighted=weighted)) for row in range(n) if own[row] >= 0]
            decided = [(row, v) for row, v in decided if not v.unknown]
            expected = fit_table(np.array([v.share for _, v in decided]),
                                 np.array([v.label == names[own[row]] for row, v in decided]))
            assert tables[table_key(k, weighted)] == expected


def test_confidence_reads_the_table_of_the_sweeps_vote_setting():
    tables = {table_key(10, False): {"probability": list(np.linspace(0.1, 1.0, BINS)), "queries": [1] * BINS}}
    np.testing.assert_allclose(confidence(tables, 10, False, np.array([0.1, 0.55, 1.0])), [0.1, 0.6, 1.0])
    assert confidence(tables, 20, False, np.array([0.5])) is None    # k above what the index sampled
    assert confidence(tables, 10, True, np.array([0.5])) is None     # another vote kind
    assert confidence({}, 10, False, np.array([0.5])) is None        # an index built before calibration


def test_reliability_by_hand():
    """Bins (low, high] of the confidence, exact tenths in the lower bin; ECE = the bins' |accuracy -
    mean confidence| weighted by their queries."""
    from latentsweep.query.metrics import reliability

    curve = reliability(np.array([0.3, 0.3, 0.95, 0.95, 0.95, 0.95]), np.array([1, 0, 1, 1, 1, 0]))
    assert [(b["low"], b["queries"]) for b in curve["bins"]] == [(0.2, 2), (0.9, 4)]
    assert curve["bins"][0]["accuracy"] == 0.5 and curve["bins"][1]["mean_confidence"] == pytest.approx(0.95)
    assert curve["ece"] == pytest.approx(2 / 6 * abs(0.5 - 0.3) + 4 / 6 * abs(0.75 - 0.95))
