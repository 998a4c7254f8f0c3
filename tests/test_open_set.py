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


def test_leave_one_generator_out_on_separable_classes(tmp_path, ray_session):
    """Four well-separated classes: each left out in turn scores far below the known ones (AUROC near
    1), is mostly called unknown at the index's calibrated threshold, and the known stay attributed."""
    from latentsweep_lab.experiment.open_set import CORPUS, open_set_table
    from latentsweep_lab.zoo.embeddings import clustered, write_ingest_output

    labels = ("a", "b", "c", "d")
    vectors, assignment = clustered(400, len(labels), 32, seed=5, spread=0.2)
    embeddings = tmp_path / "controlled" / "embeddings" / CORPUS
    write_ingest_output(str(embeddings / "reference"), vectors[:320], [labels[a] for a in assignment[:320]], {}, files=2)
    write_ingest_output(str(embeddings / "queries"), vectors[320:], [labels[a] for a in assignment[320:]], {},
                        files=1, id_offset=320)
    [row] = open_set_table(tmp_path / "open-set", tmp_path / "controlled", log=lambda message: None,
                           feature_sets=("2lat",))
    assert row["classes"] == 4 and row["auroc"] > 0.95
    assert row["unknown_detected"] > 0.8 and row["known_accuracy"] > 0.85 and row["known_called_unknown"] < 0.15


def test_real_vs_generated_and_where_the_codec_sends_real_photos(tmp_path, ray_session):
    """Three separable classes, one of them ``real``: the clean held-out queries are told real from
    generated; 'round-tripped' real queries built to sit half on the real centre and half on ``a``'s are
    called real half the time, and ``a`` takes the rest."""
    from latentsweep_lab.experiment.real import CORPUS, real_table
    from latentsweep.index.build import IndexJob, build
    from latentsweep_lab.zoo.embeddings import write_ingest_output

    rng = np.random.default_rng(2)
    labels = ("a", "b", "real")
    centres = rng.normal(size=(3, 32)) * 2

    def around(assignment, spread=0.3):
        return (centres[assignment] + rng.normal(size=(len(assignment), 32)) * spread).astype(np.float32)

    references = rng.integers(3, size=240)
    queries = np.repeat(np.arange(3), 10)
    controlled, robustness = tmp_path / "controlled", tmp_path / "robustness"
    write_ingest_output(str(controlled / "embeddings" / CORPUS / "reference"), around(references),
                        [labels[a] for a in references], {}, files=2)
    write_ingest_output(str(controlled / "embeddings" / CORPUS / "queries"), around(queries),
                        [labels[a] for a in queries], {}, files=1, id_offset=1000)
    coded = np.array([2] * 10 + [0] * 10)  # 20 real photos after the codec: 10 stay, 10 look like "a"
    write_ingest_output(str(robustness / "embeddings" / "queries" / "codec"), around(coded), ["real"] * 20, {},
                        files=1, id_offset=2000)
    build(IndexJob([str(controlled / "embeddings" / CORPUS / "reference")], str(controlled / "index" / CORPUS / "2lat"),
                   features="2lat", shards=1, quiet=True))
    [row] = real_table(robustness, controlled, log=lambda message: None, feature_sets=("2lat",))
    assert row["queries"] == 30 and row["real_queries"] == 10
    assert row["real_vs_generated"] == 1.0 and row["real_called_real"] == 1.0 and row["generated_called_generated"] == 1.0
    assert row["codec_real_called_real"] == 0.5 and row["codec_real_top_other"] == "a (0.50)"
