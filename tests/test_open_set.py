"""Open-set scoring: AUROC by its definition and against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from latentsweep.query.metrics import auroc


def test_auroc_by_hand():
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0], [2.0]) == 0.0
    assert auroc([2.0], [2.0, 1.0]) == 0.75  # one tie (half), one win
    with pytest.raises(ValueError):
        auroc([], [1.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=30), st.lists(st.integers(-5, 5), min_size=1, max_size=30))
def test_auroc_equals_sklearn(positive, negative):
    truth = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    scores = np.r_[positive, negative].astype(float)
    assert auroc(positive, negative) == pytest.approx(roc_auc_score(truth, scores))
