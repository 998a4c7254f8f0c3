"""Query: vote, metrics (against scikit-learn), leave-one-out, the actor, sweeps, S3 and pull."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output
from latentsweep import schema, storage
from latentsweep.index.build import IndexJob, build
from latentsweep.index.shards import ShardedIndex, collapse
from latentsweep.query import metrics
from latentsweep.query.actor import QueryEngine, query_actor, start_parts
from latentsweep.query.evaluate import evaluate
from latentsweep.query.pull import pull
from latentsweep.query.sweep import SweepJob, sweep
from latentsweep.decision.calibration import confidence
from latentsweep.decision.vote import vote, votes

DIM = sum(DIMS.values())
LABELS = ["sg2", "sg3", "sana", "sd"]
FAMILIES = {"sg2": "gan", "sg3": "gan", "sana": "dm", "sd": "dm"}


# ---- vote -------------------------------------------------------------------------------------

def test_majority_wins_and_ties_go_to_summed_similarity():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert vote(["a", "b", "a", "c"], scores, {"a": "gan"}).label == "a"
    tie = vote(["a", "b", "b", "a"], np.array([0.9, 0.85, 0.8, 0.5]), {"b": "dm"})
    assert tie.label == "b" and tie.family == "dm" and tie.share == 0.5  # 1.65 > 1.4
    assert not tie.unknown and tie.top_score == pytest.approx(0.9)


def test_weighted_vote_and_open_set():
    labels, scores = ["a", "b", "b"], np.array([0.95, 0.2, 0.2])
    assert vote(labels, scores).label == "b"
    weighted = vote(labels, scores, weighted=True)
    assert weighted.label == "a" and weighted.share == pytest.approx(0.95 / 1.35)
    unknown = vote(labels, scores, open_set_threshold=0.99)
    assert unknown.unknown and unknown.label == "unknown" and unknown.family is None
    assert vote([None, None], np.array([-np.inf, -np.inf])).unknown


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12),
       st.lists(st.floats(-1, 1), min_size=12, max_size=12))
@settings(max_examples=200, deadline=None)
def test_vote_properties(labels, raw_scores):
    scores = np.sort(np.array(raw_scores[:len(labels)]))[::-1]
    result = vote(labels, scores)
    counts = {label: labels.count(label) for label in labels}
    assert counts[result.label] == max(counts.values())
    assert 0 < result.share <= 1 and result.top_score == scores[0]


@given(st.integers(0, 9), st.sampled_from([False, True]), st.sampled_from([None, 0.3]), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_batch_votes_equal_one_query_at_a_time(k, weighted, threshold, seed):
    """The sweep's vote over a whole part (arrays) decides every query as the one-query vote does: label,
    ties (summed similarity, then first met), share to the bit, missing neighbours, NaN and -inf scores."""
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c"]
    codes = rng.integers(-1, 3, size=(40, k))
    scores = -np.sort(-rng.choice([0.9, 0.5, 0.5, 0.25, 0.1, -0.3], size=(40, k)), axis=1).astype(np.float32)
    scores[rng.random((40, k)) < 0.05] = np.nan
    scores[rng.random((40, k)) < 0.05] = -np.inf
    batch = votes(codes, scores, weighted, threshold)
    for row in range(40):
        one = vote([names[c] if c >= 0 else None for c in codes[row]], scores[row], {}, weighted, threshold)
        assert (names[batch.codes[row]] if batch.codes[row] >= 0 else "unknown") == one.label
        assert (batch.share[row], batch.top_score[row], batch.unknown[row]) == (one.share, one.top_score, one.unknown)


# ---- metrics ----------------------------------------------------------------------------------

def ranking_ap(relevance: np.ndarray) -> float:
    """Full-ranking AP (``ap_full``) by :func:`metrics.per_query` of a ranking whose hits are ``relevance``."""
    ranking = ["a" if hit else "b" for hit in relevance]
    return metrics.per_query("a", ranking, int(relevance.sum()), {}, k=10)["ap_full"]


def ranked(hit_ranks: list[int], length: int) -> list[str]:
    """A ranking of ``length`` labels, "a" (the query's) at the 1-based ``hit_ranks``, "b" elsewhere."""
    return ["a" if rank in hit_ranks else "b" for rank in range(1, length + 1)]


def test_full_ranking_average_precision_matches_sklearn():
    rng = np.random.default_rng(0)
    rankings, totals, expected = [], [], []
    for _ in range(50):
        relevance = rng.random(40) < 0.3
        if not relevance.any():
            continue
        scores = np.sort(rng.random(40))[::-1]
        expected.append(average_precision_score(relevance, scores))
        assert ranking_ap(relevance) == pytest.approx(expected[-1])
        rankings.append(["a" if hit else "b" for hit in relevance])
        totals.append(int(relevance.sum()))
    batch = metrics.per_queries(["a"] * len(rankings), rankings, totals, {}, k=10)  # the sweep's path
    np.testing.assert_allclose([row["ap_full"] for row in batch], expected, atol=1e-12)
    summary = metrics.summarise(["a"] * len(batch), batch, {})
    assert summary["overall"]["map_full"] == pytest.approx(np.mean(expected))
    assert "map" not in summary["overall"]  # every mAP is named by what it averages


def test_hand_computed_query():
    # ranking: hit, miss, hit; 3 relevant in total -> full AP = (1/1 + 2/3) / 3; AP@10 = (1/1 + 2/3) / 2
    row = metrics.per_query("a", ["a", "b", "a"], 3, {"a": "gan", "b": "gan"}, k=10)
    assert row["ap_full"] == pytest.approx((1 + 2 / 3) / 3)
    assert row["ap_at_10"] == pytest.approx((1 + 2 / 3) / 2)
    assert row["top1"] == 1 and row["precision_at_10"] == pytest.approx(0.2) and row["type_top1"] == 1
    miss = metrics.per_query("a", ["b", "a"], 1, {"a": "gan", "b": "dm"}, k=10)
    assert miss["top1"] == 0 and miss["type_top1"] == 0 and miss["ap_full"] == pytest.approx(0.5)
    assert miss["ap_at_10"] == pytest.approx(0.5)
    summary = metrics.summarise(["a", "a"], [row, miss], {"a": "gan", "b": "dm"})
    assert summary["overall"]["top1"] == 0.5 and summary["by_family"]["gan"]["queries"] == 2
    assert summary["overall"]["map_at_10"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert summary["overall"]["map_full"] == pytest.approx(((1 + 2 / 3) / 3 + 0.5) / 2)
    assert summary["confusion"] == {"a": {"a": 1, "b": 1}}


def test_labels_without_families_get_no_type_accuracy():
    """Labels from folders carry no family: Top-1 Type would read 0 for every query and the by-family
    table hold one "unassigned" row, so both are left out of the metrics and the tables."""
    from latentsweep.query.evaluate import tables

    rows = [metrics.per_query("a", ["a", "b"], 1, {}, k=10), metrics.per_query("b", ["a", "b"], 1, {}, k=10)]
    summary = metrics.summarise(["a", "b"], rows, {})
    assert "type_top1" not in summary["overall"] and summary["by_family"] == {}
    assert summary["overall"]["top1"] == 0.5 and summary["by_label"]["b"]["top1"] == 0
    text = tables(summary)
    assert "Type" not in text and "By family" not in text and "By label (Table 3)" in text
    typed = metrics.summarise(["a", "b"], rows, {"a": "gan"})  # one family known: the column stays
    assert "type_top1" in typed["overall"] and set(typed["by_family"]) == {"gan", "unassigned"}


def test_hand_computed_map_at_10_with_hits_at_ranks_1_3_and_10():
    # 5 relevant references, 20 ranked; hits at ranks 1, 3, 10 and (beyond the cut) 15
    row = metrics.per_query("a", ranked([1, 3, 10, 15], 20), 5, {}, k=10)
    precisions = [1 / 1, 2 / 3, 3 / 10]  # precision at each hit rank in the top 10
    assert row["precision_at_10"] == pytest.approx(3 / 10)
    assert row["ap_at_10"] == pytest.approx(sum(precisions) / 3)  # by the 3 hits found in the top 10
    assert row["ap_full"] == pytest.approx((sum(precisions) + 4 / 15) / 5)  # by all 5 relevant


def test_map_at_10_is_zero_without_a_hit_in_the_top_10():
    row = metrics.per_query("a", ranked([], 10), 4, {}, k=10)
    assert row["ap_at_10"] == 0 and row["precision_at_10"] == 0 and row["top1"] == 0 and row["ap_full"] == 0


def test_map_at_10_truncates_a_hit_at_rank_11():
    row = metrics.per_query("a", ranked([11], 30), 1, {}, k=10)
    assert row["ap_at_10"] == 0 and row["precision_at_10"] == 0
    assert row["ap_full"] == pytest.approx(1 / 11)  # the full ranking still finds it


def test_map_at_10_can_exceed_precision_at_10():
    # one hit, at rank 1, of 5 relevant: P@10 = 0.1, AP@10 = 1 (the paper's tables: mAP > P@10 > ...)
    rows = metrics.per_queries(["a", "a"], [ranked([1], 12), ranked([1, 2], 12)], [5, 5], {}, k=10)
    assert [row["precision_at_10"] for row in rows] == pytest.approx([0.1, 0.2])
    assert [row["ap_at_10"] for row in rows] == pytest.approx([1.0, 1.0])
    overall = metrics.summarise(["a", "a"], rows, {})["overall"]
    assert overall["map_at_10"] == pytest.approx(1.0) and overall["precision_at_10"] == pytest.approx(0.15)
    assert overall["map_full"] == pytest.approx((1 / 5 + 2 / 5) / 2)  # never above k/R by construction


def test_metric_keys_are_named_by_their_k():
    row = metrics.per_query("a", ranked([2, 5], 8), 3, {}, k=5)
    assert row["precision_at_5"] == pytest.approx(2 / 5) and row["ap_at_5"] == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert "precision_at_10" not in row and "ap_at_10" not in row
    overall = metrics.summarise(["a"], [row], {})["overall"]
    assert metrics.map_name(overall) == "map_at_5" and metrics.precision_name(overall) == "precision_at_5"
    assert metrics.headline(overall) == "top1=0.000 p@5=0.400 map@5=0.450 map_full=0.300"  # no families: no type_top1


def test_tables_show_the_papers_metrics_then_vote_and_full_map_each_named():
    from latentsweep.query.evaluate import tables

    families = {"a": "gan", "b": "dm", "c": "dm"}  # "c" is never ranked: no hit, its nearest "b" of its family
    rows = metrics.per_queries(["a", "c"], [ranked([1], 12), ranked([], 12)], [2, 1], families,
                               k=10, predicted=["a", "a"])
    text = tables(metrics.summarise(["a", "c"], rows, families))
    header = next(line for line in text.splitlines() if line.startswith("| set |"))
    assert header == ("| set | Top-1 Acc. (nearest neighbour) | Prec.@10 | mAP@10 | Top-1 Type Acc. | "
                      "Vote Acc. (predicted_label) | mAP full (/ all relevant) | queries |")
    assert "| all | 0.500 | 0.050 | 0.500 | 1.000 | 0.500 | 0.250 | 2 |" in text
    assert "- mAP@10: AP over the top 10" in text and "- mAP full (/ all relevant): AP over" in text


def test_leaving_one_out_removes_only_the_own_id():
    ids = np.array([[5, 7, 9], [3, 5, 8]])
    scores = np.array([[1.0, 0.9, 0.8], [0.99, 0.97, 0.5]])
    kept_scores, kept = collapse(scores, ids, ids, np.array([5, 4]), 2)  # no copies: each id its own source
    assert kept.tolist() == [[7, 9], [3, 5]]
    assert kept_scores.tolist() == [[0.9, 0.8], [0.99, 0.97]]


# ---- with an index ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory, ray_session):
    vectors, assignment = clustered(1200, len(LABELS), DIM, seed=4, spread=0.25)
    root = tmp_path_factory.mktemp("reference")
    labels = [LABELS[a] for a in assignment]
    vectors[1] = vectors[0]  # an exact duplicate image under another id
    labels[1] = labels[0]
    ids = write_ingest_output(str(root), vectors, labels, FAMILIES, files=3)
    index = tmp_path_factory.mktemp("index")
    build(IndexJob([str(root)], str(index), shards=3, quiet=True))
    return {"root": root, "index": index, "vectors": vectors, "labels": labels, "ids": np.array(ids)}


def test_leave_one_out_discards_exactly_the_self_match(reference):
    engine = QueryEngine(str(reference["index"]))
    scores, ids, _ = engine.search(reference["vectors"][:2], 3, exclude_ids=reference["ids"][:2])
    assert ids[0, 0] == reference["ids"][1] and ids[1, 0] == reference["ids"][0]  # the duplicate stays
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert reference["ids"][0] not in ids[0] and reference["ids"][1] not in ids[1]


def test_evaluate_on_the_reference_set(reference, tmp_path):
    result = evaluate(str(reference["index"]), str(tmp_path / "eval"))
    assert result["overall"]["queries"] == 1200
    assert result["overall"]["top1"] > 0.9 and result["overall"]["map_full"] > 0.8
    assert result["overall"]["map_at_10"] >= result["overall"]["precision_at_10"] > 0.8
    assert set(result["by_family"]) == {"gan", "dm"} and set(result["by_label"]) == set(LABELS)
    assert result["protocol"]["map_ranking"] == "whole reference set"
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["overall"] == result["overall"]
    assert "| sana |" in (tmp_path / "eval" / "tables.md").read_text()
    assert (tmp_path / "eval" / "confusion.csv").read_text().startswith("true\\predicted,")
    # the full-ranking mAP (map_full) equals scikit-learn's AP averaged over queries
    engine = QueryEngine(str(reference["index"]))
    labels = np.array(reference["labels"])
    aps = []
    for query in range(0, 1200, 97):
        scores, ids, neighbour_labels = engine.search(reference["vectors"][query:query + 1], 1199,
                                                      exclude_ids=reference["ids"][query:query + 1])
        relevant = np.array([label == labels[query] for label in neighbour_labels[0]])
        aps.append((average_precision_score(relevant, scores[0]), ranking_ap(relevant)))
    np.testing.assert_allclose([a for a, _ in aps], [b for _, b in aps], atol=1e-6)


def test_actor_path_equals_direct_search(reference):
    import ray

    queries = reference["vectors"][::50] + 0.05
    actor = query_actor(num_cpus=0.5).remote(str(reference["index"]))
    actor_scores, actor_ids, actor_labels = ray.get(actor.search.remote(queries, 10))
    index = ShardedIndex.load(str(reference["index"]))
    scores, ids = index.search(index.prepare(queries), 10)
    assert np.array_equal(actor_ids, ids)
    np.testing.assert_allclose(actor_scores, scores)
    label_of = dict(zip(reference["ids"].tolist(), reference["labels"]))
    assert actor_labels.tolist() == [[label_of[i] for i in row] for row in ids.tolist()]
    ray.kill(actor)
    parts = start_parts(str(reference["index"]), 2)
    front = QueryEngine(str(reference["index"]), parts=parts)
    assert front.index.indices == []  # the front holds no vectors
    part_scores, part_ids, _ = front.search(queries, 10)
    assert np.array_equal(part_ids, ids)
    np.testing.assert_allclose(part_scores, scores)
    for part in parts:
        ray.kill(part)


@pytest.fixture
def nightly_queries(tmp_path):
    vectors, assignment = clustered(240, len(LABELS), DIM, seed=4, spread=0.25)  # same centres
    labels = [LABELS[a] for a in assignment]
    write_ingest_output(str(tmp_path / "night"), vectors, labels, FAMILIES, files=3, id_offset=50_000)
    return tmp_path / "night", labels


def test_sweep_is_idempotent_and_reports_metrics(reference, nightly_queries, tmp_path):
    queries, labels = nightly_queries
    job = SweepJob([str(queries)], str(reference["index"]), str(tmp_path / "results"), date="2026-11-23",
                   quiet=True, workers=2)
    first = sweep(job)
    assert first.queries == 240 and first.parts == 3 and first.parts_already_done == 0
    assert first.metrics["overall"]["top1"] > 0.9
    partition = tmp_path / "results" / "date=2026-11-23"
    parts = sorted(partition.glob("part-*.parquet"))
    assert len(parts) == 3 and (partition / "review.parquet").exists()
    table = storage.read_table(str(parts[0]))
    schema.check(table.schema, "results", str(parts[0]))
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["neighbor_ids"]) == 10 and row["predicted_label"] in LABELS + ["unknown"]
    assert row["neighbor_uris"][0].startswith("img://")
    # no --open-set-threshold: the index's calibrated one decides which queries are unknown
    calibrated = json.loads((reference["index"] / "manifest.json").read_text())["open_set_threshold"]
    assert job.open_set_threshold == calibrated is not None
    assert table.column("unknown").to_pylist() == [s < calibrated for s in table.column("top_score").to_pylist()]
    # each attributed query carries the index's calibrated confidence for its vote share; unknown ones none
    tables = json.loads((reference["index"] / "manifest.json").read_text())["confidence"]
    expected = confidence(tables, 10, False, table.column("vote_share").to_numpy())
    got, unknown = table.column("confidence").to_pylist(), table.column("unknown").to_pylist()
    assert [g is None for g in got] == unknown
    np.testing.assert_allclose([g for g in got if g is not None], expected[~np.array(unknown)], rtol=1e-6)
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    again = sweep(job)
    assert again.parts_already_done == 3 and again.queries == 240
    assert {p.name: p.stat().st_mtime_ns for p in parts} == before
    spread = sweep(SweepJob([str(queries)], str(reference["index"]), str(tmp_path / "spread"), date="2026-11-23",
                            quiet=True, index_parts=3))
    for part in parts:
        same = storage.read_table(str(tmp_path / "spread" / "date=2026-11-23" / part.name))
        assert same.equals(storage.read_table(str(part))), "index parts must not change results"
    assert spread.metrics["overall"] == first.metrics["overall"]
    unknown = sweep(SweepJob([str(queries)], str(reference["index"]), str(tmp_path / "results"),
                             date="2026-11-24", open_set_threshold=1.0, quiet=True))
    assert unknown.unknown == 240  # another night, another partition, every query below the threshold


def test_sweep_to_s3_and_pull_with_resume(reference, nightly_queries, s3_env, tmp_path):
    queries, _ = nightly_queries
    bucket = s3_env["bucket"]
    summary = sweep(SweepJob([str(queries)], str(reference["index"]), f"s3://{bucket}/results",
                             date="2026-11-23", quiet=True))
    assert summary.queries == 240
    local = tmp_path / "pulled"
    first = pull(f"s3://{bucket}/results/date=2026-11-23", str(local), quiet=True)
    assert first.files == 5 and first.downloaded == 5 and first.sweep["queries"] == 240  # 3 parts, review, report
    parts = sorted(local.glob("part-*.parquet"))
    remote = storage.read_table(f"s3://{bucket}/results/date=2026-11-23/{parts[0].name}")
    assert storage.read_table(str(parts[0])).equals(remote)
    parts[0].unlink()
    parts[1].write_bytes(parts[1].read_bytes()[:100])  # a partial download from an earlier attempt
    second = pull(f"s3://{bucket}/results/date=2026-11-23", str(local), quiet=True)
    assert second.downloaded == 2 and second.already_present == 3
    assert not list(local.glob("*.part"))
    with pytest.raises(Exception, match="nothing at s3://.*/date=2026-11-25: expected a sweep partition"):
        pull(f"s3://{bucket}/results/date=2026-11-25", str(tmp_path / "none"), quiet=True)
    storage.delete(f"s3://{bucket}/results/date=2026-11-23/_SUCCESS.json")  # parts, no _SUCCESS.json
    with pytest.raises(Exception, match="_SUCCESS.json is missing: the sweep of .* has not finished"):
        pull(f"s3://{bucket}/results/date=2026-11-23", str(tmp_path / "unfinished"), quiet=True)


# ---- report: tests/test_report.py -------------------------------------------------------------


def test_sweep_over_images_ingests_them_first_with_the_index_settings(tmp_path, ray_session, random_adapters):
    """`latentsweep sweep IMAGES` embeds the night's images with the index's codec and the adapters it is
    given, then attributes; adapters other than the index's (or none for an index built with some) are
    refused."""
    import sys

    from images import photo_corpus
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run as ingest
    from processes import run_command

    photo_corpus(tmp_path / "ref", per_label=3)
    photo_corpus(tmp_path / "night", labels=("alpha", "beta"), per_label=2, size=(64, 80))
    ingest(IngestJob(str(tmp_path / "ref"), str(tmp_path / "emb"), EmbedSettings(feature_set="2lat", device="cpu"),
                     labels_from_folders=True, augment="none", quiet=True))
    build(IndexJob([str(tmp_path / "emb")], str(tmp_path / "index"), shards=1, quiet=True))
    command = [sys.executable, "-m", "latentsweep", "sweep", str(tmp_path / "night"), "--index",
               str(tmp_path / "index"), "--out", str(tmp_path / "results"), "--date", "2026-11-23", "--quiet"]
    result = run_command(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep summary: queries=4" in result.stdout
    assert "metrics=" not in result.stdout  # counts on the summary line; metrics have their own line and file
    embedded = storage.read_table(str(tmp_path / "results" / "_embeddings" / "date=2026-11-23" / "source-0" / "embeddings"))
    assert embedded.num_rows == 4 and set(embedded.column("feature_set").to_pylist()) == {"2lat"}
    untrained = run_command(command[:-1] + ["--weights", "untrained", "--date", "2026-11-24"])
    assert untrained.returncode == 2 and "built with codec weights" in untrained.stderr
    # an index built through SFMA adapters: the night is embedded through the adapters it is given
    ingest(IngestJob(str(tmp_path / "ref"), str(tmp_path / "emb-sfma"), EmbedSettings(
        feature_set="2lat", device="cpu", adapters=random_adapters), labels_from_folders=True, augment="none", quiet=True))
    build(IndexJob([str(tmp_path / "emb-sfma")], str(tmp_path / "index-sfma"), shards=1, quiet=True))
    from latentsweep.cli import embeddings_for
    from latentsweep.errors import UsageError
    from latentsweep.query.sweep import check

    job = SweepJob([str(tmp_path / "night")], str(tmp_path / "index-sfma"), str(tmp_path / "sfma"),
                   date="2026-11-23", quiet=True)  # `sweep NIGHT --index INDEX-SFMA --adapters PATH`, in this process
    with pytest.raises(UsageError, match="with adapters sfma-.*without adapters: pass"):
        embeddings_for(job, None, None, check(job))
    job.queries = embeddings_for(job, None, random_adapters, check(job))
    assert sweep(job).queries == 4
    embedded = storage.read_table(str(tmp_path / "sfma" / "_embeddings" / "date=2026-11-23" / "source-0" / "embeddings"))
    assert {d.partition("+")[2][:5] for d in embedded.column("weights_digest").to_pylist()} == {"sfma-"}
    mixed = run_command(command[:-1] + ["--adapters", random_adapters, "--date", "2026-11-25"])  # base index
    assert mixed.returncode == 2 and "without adapters, these are" in mixed.stderr and "with adapters sfma-" in mixed.stderr


def test_interrupted_sweeps_resume_to_identical_results(reference, tmp_path):
    """Ctrl-C (SIGINT to the process group) once the first part lands, then SIGKILL of the resumed
    sweep after its first part (both before `_SUCCESS.json`): the third run skips exactly the
    finished parts and ends with the same parts, rows and values as a clean run. Query actors of a
    killed driver may finish the calls in their hands (each part written whole, then its marker)
    before they notice and exit, so the finished parts are counted once the count settles."""
    import signal
    import sys

    from processes import files_in, interrupt_when, run_command, settled

    vectors, assignment = clustered(600, len(LABELS), DIM, seed=9, spread=0.25)
    write_ingest_output(str(tmp_path / "night"), vectors, [LABELS[a] for a in assignment], FAMILIES,
                        files=12, id_offset=90_000)

    def command(out):
        return [sys.executable, "-m", "latentsweep", "sweep", str(tmp_path / "night"), "--index",
                str(reference["index"]), "--out", str(out), "--date", "2026-11-23", "--quiet"]

    partition = tmp_path / "interrupted" / "date=2026-11-23"
    markers = lambda: files_in(partition / "_done")
    code, stderr = interrupt_when(command(tmp_path / "interrupted"), lambda: markers() >= 1, signal.SIGINT)
    assert code == 130 and "rerun the same command to resume" in stderr, stderr[-2000:]
    after_sigint = settled(markers)
    interrupt_when(command(tmp_path / "interrupted"), lambda: markers() > after_sigint, signal.SIGKILL)
    after_sigkill = settled(markers)
    assert not (partition / "_SUCCESS.json").exists(), "the kills must land before the sweep finishes"
    assert 1 <= after_sigint < after_sigkill < 12
    resumed = run_command(command(tmp_path / "interrupted"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"parts_already_done={after_sigkill}" in resumed.stdout
    clean = sweep(SweepJob([str(tmp_path / "night")], str(reference["index"]), str(tmp_path / "clean"),
                           date="2026-11-23", quiet=True))  # the same command's job, in this process
    assert clean.queries == 600
    resumed_parts = sorted(p.name for p in partition.glob("part-*.parquet"))
    clean_parts = sorted(p.name for p in (tmp_path / "clean" / "date=2026-11-23").glob("part-*.parquet"))
    assert resumed_parts == clean_parts and len(clean_parts) == 12
    for name in clean_parts:
        a = pq.read_table(partition / name)
        b = pq.read_table(tmp_path / "clean" / "date=2026-11-23" / name)
        assert a.equals(b), name
    success = json.loads((partition / "_SUCCESS.json").read_text())
    assert success["summary"]["queries"] == 600


def test_a_rebuild_mid_sweep_leaves_the_sweep_on_its_version(tmp_path, ray_session):
    """The index is rebuilt (other references) after the sweep's first part, and the sweep's query
    actor is killed: the restarted actor loads the version the sweep began with (its pinned address),
    so every part equals a sweep against a copy of the old index. The rebuild is made beforehand in a
    copy of the index and lands as a build's last step does (its version folder, then manifest.json
    replaced in one rename), so it lands mid-sweep however fast the sweep runs."""
    import shutil
    import threading

    import psutil

    vectors, assignment = clustered(300, len(LABELS), DIM, seed=7, spread=0.25)
    write_ingest_output(str(tmp_path / "ref-a"), vectors, [LABELS[a] for a in assignment], FAMILIES, files=2)
    other, other_assignment = clustered(300, len(LABELS), DIM, seed=8, spread=0.25)
    write_ingest_output(str(tmp_path / "ref-b"), other, [LABELS[a] for a in other_assignment], FAMILIES, files=2,
                        id_offset=90_000)
    queries, query_assignment = clustered(180, len(LABELS), DIM, seed=9, spread=0.25)
    write_ingest_output(str(tmp_path / "night"), queries, [LABELS[a] for a in query_assignment], FAMILIES,
                        files=6, id_offset=70_000)
    index = tmp_path / "index"
    build(IndexJob([str(tmp_path / "ref-a")], str(index), shards=1, quiet=True))
    shutil.copytree(index, tmp_path / "old-index")
    run = lambda index_path, out: sweep(SweepJob([str(tmp_path / "night")], str(index_path), str(out),
                                                 date="2026-11-23", quiet=True, workers=1))
    run(tmp_path / "old-index", tmp_path / "clean")
    rebuilt = tmp_path / "rebuilt"  # the next version of the index, built now, switched in mid-sweep
    shutil.copytree(index, rebuilt)
    version = build(IndexJob([str(tmp_path / "ref-b")], str(rebuilt), shards=1, quiet=True)).build_version
    done = tmp_path / "disturbed" / "date=2026-11-23" / "_done"
    events: list[str] = []

    def rebuild_then_kill_the_actor():
        try:
            rebuild_and_kill()
        except Exception as error:  # reported by the assertion below
            events.append(repr(error))

    def rebuild_and_kill():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (done.exists() and any(done.iterdir())):
            time.sleep(0.002)
        shutil.copytree(rebuilt / version, index / version)
        shutil.copy(rebuilt / "manifest.json", index / "manifest.json.new")
        os.replace(index / "manifest.json.new", index / "manifest.json")
        events.append(f"rebuilt after {len(list(done.iterdir()))} parts")
        for process in psutil.Process().children(recursive=True):
            try:
                if "SweepWorker" in " ".join(process.cmdline()):
                    process.kill()
                    events.append("killed")
            except psutil.NoSuchProcess:
                pass

    thread = threading.Thread(target=rebuild_then_kill_the_actor)
    thread.start()
    disturbed = run(index, tmp_path / "disturbed")
    thread.join()
    assert "killed" in events and int(events[0].split()[2]) < 6, events
    assert disturbed.queries == 180 and disturbed.parts == 6
    columns = ["id", "predicted_label", "neighbor_ids", "neighbor_scores"]
    for part in sorted((tmp_path / "clean" / "date=2026-11-23").glob("part-*.parquet")):
        same = pq.read_table(tmp_path / "disturbed" / "date=2026-11-23" / part.name, columns=columns)
        assert same.equals(pq.read_table(part, columns=columns)), part.name
    fresh = run(index, tmp_path / "fresh")  # a new sweep follows the rebuild: other neighbours
    assert fresh.queries == 180
    first = sorted((tmp_path / "fresh" / "date=2026-11-23").glob("part-*.parquet"))[0]
    assert not pq.read_table(first, columns=["neighbor_ids"]).equals(
        pq.read_table(tmp_path / "clean" / "date=2026-11-23" / first.name, columns=["neighbor_ids"]))


# ---- query memory model: memory requests, references, shards, evaluate (GPU placement: test_placement.py)

def test_query_actor_memory_arithmetic():
    """memory= of a query actor: fixed + the index by type + per reference its id, label and shard codes
    and, while loading, the unsorted ids and their order; the steady Flat cost is within 4d + 24."""
    from latentsweep.index import factory, placement

    d, n, mib = 256, 1_000_000, 2**20
    assert [placement.code_bytes(v) for v in (127, 128, 32767, 32768)] == [1, 2, 2, 4]
    assert [placement.code_bytes(v, signed=False) for v in (256, 257, 65536, 65537)] == [1, 2, 2, 4]
    assert placement.QUERY_FIXED_BYTES == 256 * mib + 128 * mib + 128 * mib
    assert placement.reference_bytes(7, 1) == 8 + 1 and placement.reference_bytes(7, 4) == 8 + 1 + 1
    assert placement.reference_bytes(200, 300) == 8 + 2 + 2
    assert (4 * d + factory.ID_BYTES) + placement.reference_bytes(7, 4) == 4 * d + 18 <= 4 * d + 24
    fixed = placement.QUERY_FIXED_BYTES
    flat = placement.engine_memory("Flat", d, n, labels=7, shards=4)
    assert flat == fixed + n * (4 * d + 8) + n * (8 + 1 + 1 + 16) == 1_594_870_912  # 1.49 GiB
    assert placement.engine_memory("HNSW32", d, n, 7, 4) == fixed + factory.hnsw_bytes(n, d) + n * 26
    assert placement.engine_memory("IVF4096,PQ32", d, n, 7, 4) == fixed + factory.index_bytes("IVF4096,PQ32", n, d) + n * 26
    assert placement.engine_memory("Flat", d, n, 7, 4, holds_metadata=False) == fixed + n * (4 * d + 8)  # a part
    assert placement.engine_memory("Flat", d, n, 7, 4, holds_vectors=False) == fixed + n * 26           # a front
    assert placement.engine_memory("Flat", d, n, 7, 4, on_gpu=True) == fixed + n * 8 + n * 26          # host side


def test_index_parts_and_sweep_actors_request_their_memory(reference, monkeypatch):
    import ray

    from latentsweep.index.manifest import load
    from latentsweep.query.actor import front_memory, part_memory, pool_plan

    manifest = load(str(reference["index"]))
    shard_ids = [entry.shard_id for entry in manifest.shards]
    parts = start_parts(str(reference["index"]), 2)
    assigned = ray.get([part.__ray_call__.remote(lambda self: ray.get_runtime_context().get_assigned_resources())
                        for part in parts])
    assert [a["memory"] for a in assigned] == [part_memory(manifest, shard_ids[0::2]),
                                               part_memory(manifest, shard_ids[1::2])]
    for part in parts:
        ray.kill(part)
    memory, size = pool_plan(manifest, 2, True, 0, 10)
    assert memory == front_memory(manifest) and size == 2
    lines = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"memory": 1.5 * memory})
    assert pool_plan(manifest, 2, True, 0, 10, log=lines.append) == (memory, 1)  # what the cluster holds
    assert "do not fit" in lines[0]


def test_engine_holds_codes_not_uris_and_reads_uris_per_neighbour(reference, monkeypatch):
    import os

    from latentsweep.index import lookup
    from latentsweep.index.lookup import MISSING

    monkeypatch.setattr(lookup, "LOOKUP_ROWS", 16)  # blocks of 16 ids: a lookup must read few of them
    engine = QueryEngine(str(reference["index"]))
    refs = engine.references
    assert refs.ids.dtype == np.int64 and refs.label_codes.dtype == np.int8 and refs.shard_codes.dtype == np.uint8
    assert np.all(np.diff(refs.ids) > 0) and refs.label_names == sorted(LABELS) and len(refs.ids) == 1200
    assert refs.nbytes / len(refs.ids) <= 8 + 1 + 1 + 1  # + the block index: 8 bytes per 16 references here
    for holder in (engine, engine.index, refs):  # no per-reference Python objects anywhere
        for name, value in vars(holder).items():
            assert not (isinstance(value, np.ndarray) and value.dtype == object and len(value) > 8), name
            assert not (isinstance(value, (list, tuple, dict)) and len(value) > 64), name
    label_of = dict(zip(reference["ids"].tolist(), reference["labels"]))
    uri_of = {i: f"img://{n}" for n, i in enumerate(reference["ids"].tolist())}
    _, ids, labels = engine.search(reference["vectors"][::100] + 0.05, 10)
    assert labels.tolist() == [[label_of[i] for i in row] for row in ids.tolist()]
    assert engine.uris(ids).tolist() == [[uri_of[i] for i in row] for row in ids.tolist()]
    reads, pread = [], os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: reads.append(size) or pread(fd, size, offset))
    _, few, _ = engine.search(reference["vectors"][7:8] + 0.05, 5)
    assert engine.uris(few).tolist() == [[uri_of[i] for i in few[0].tolist()]]
    # per neighbour at most its block of ids, the block's URI offsets and its URI's bytes
    assert len(reads) <= 3 * 5 and sum(reads) <= 5 * (16 * 8 + 17 * 8 + 16)
    assert engine.uris(np.array([[MISSING, 12345]])).tolist() == [[None, None]]
    assert engine.contains(np.array([reference["ids"][3], 12345])).tolist() == [True, False]


def test_lookup_files_are_written_in_buckets_and_verified_on_reuse(reference, tmp_path, monkeypatch):
    """The metadata of each shard becomes an id-sorted lookup file written in buckets (bounded memory);
    a lookup file that no longer matches its recorded checksum is written again from the verified source."""
    import pyarrow as pa

    from latentsweep.index import lookup
    from latentsweep.index.manifest import load

    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENTSWEEP_CACHE", str(cache))
    monkeypatch.setattr(lookup, "REWRITE_ROWS", 100)  # 400 rows a shard: 4 buckets each
    table = QueryEngine(str(reference["index"]), use_gpu=False).references.table()
    manifest = load(str(reference["index"]))
    source = pa.concat_tables([pq.read_table(reference["index"] / entry.metadata_file, columns=["id", "label", "uri"])
                               for entry in manifest.shards])
    assert sorted(source.column("id").to_pylist()) == sorted(table.column("id").to_pylist())
    assert dict(zip(source.column("id").to_pylist(), zip(source.column("label").to_pylist(), source.column("uri").to_pylist()))) \
        == dict(zip(table.column("id").to_pylist(), zip(table.column("label").to_pylist(), table.column("uri").to_pylist())))
    files = sorted(cache.glob("*.lookup"))
    assert len(files) == 3 and not list(cache.glob(".rewrite-*"))
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 1
    files[0].write_bytes(bytes(data))
    assert QueryEngine(str(reference["index"]), use_gpu=False).references.table().equals(table)


def test_shards_are_verified_downloaded_in_threads_and_memory_mapped(reference, s3_env, tmp_path, monkeypatch):
    import threading

    import faiss

    from latentsweep.errors import JobFailed
    from latentsweep.index.manifest import load

    bucket, cache = s3_env["bucket"], tmp_path / "cache"
    for path in reference["index"].rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{bucket}/index/{path.relative_to(reference['index'])}", path.read_bytes())
    monkeypatch.setenv("LATENTSWEEP_CACHE", str(cache))
    calls, read_index = [], faiss.read_index
    monkeypatch.setattr(faiss, "read_index", lambda path, flags=0: calls.append(
        (path, flags, threading.current_thread().name)) or read_index(path, flags))
    engine = QueryEngine(f"s3://{bucket}/index", use_gpu=False)
    manifest = load(str(reference["index"]))
    assert sorted(path for path, _, _ in calls) == sorted(str(cache / f"{e.index_sha256}.faiss") for e in manifest.shards)
    assert all(flags == faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY for _, flags, _ in calls)
    assert all(name != "MainThread" for _, _, name in calls)  # loaded by the pool's threads
    local = QueryEngine(str(reference["index"]), use_gpu=False)
    queries = reference["vectors"][::60] + 0.05
    _, ids, labels = engine.search(queries, 10)
    assert np.array_equal(ids, local.search(queries, 10)[1])
    assert engine.uris(ids).tolist() == local.uris(ids).tolist()
    victim = manifest.shards[1]
    (cache / f"{victim.index_sha256}.faiss").write_bytes(b"not the shard")  # a cached copy that fails: fetched again
    QueryEngine(f"s3://{bucket}/index", use_gpu=False)
    assert shards_sha(cache / f"{victim.index_sha256}.faiss") == victim.index_sha256
    (cache / f"{victim.index_sha256}.faiss").unlink()
    corrupt = bytearray((reference["index"] / victim.index_file).read_bytes())
    corrupt[-5] ^= 0xFF
    storage.write_bytes(f"s3://{bucket}/index/{victim.index_file}", bytes(corrupt))
    with pytest.raises(JobFailed, match="checksum mismatch for s3://.*shard-00001.faiss"):
        QueryEngine(f"s3://{bucket}/index", use_gpu=False)
    assert not list(cache.glob("*.tmp"))


def test_a_sweep_over_a_corrupt_index_fails_with_the_loaders_error(reference, nightly_queries, tmp_path):
    """Query actors load the index in their first call, so a shard that fails its checksum stops the
    sweep with that error itself (Ray keeps only the text of errors raised in an actor's constructor)."""
    import shutil

    from latentsweep.errors import JobFailed
    from latentsweep.index.manifest import load

    queries, _ = nightly_queries
    shutil.copytree(reference["index"], tmp_path / "index")
    victim = tmp_path / "index" / load(str(reference["index"])).shards[0].index_file
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    with pytest.raises(JobFailed, match="checksum mismatch for .*shard-00000.faiss"):
        sweep(SweepJob([str(queries)], str(tmp_path / "index"), str(tmp_path / "results"), date="2026-11-23",
                       quiet=True))
    assert not list((tmp_path / "results" / "date=2026-11-23").glob("part-*.parquet"))


def test_query_actors_search_with_the_threads_they_are_given():
    """Ray sets OMP_NUM_THREADS=1 in fractional-CPU actors and OpenBLAS reads it once; set_threads
    changes FAISS's OpenMP and every mapped OpenBLAS that FAISS searches with, without a runtime env."""
    import ctypes

    import faiss

    from latentsweep.query.actor import _mapped_libraries, set_threads

    before = faiss.omp_get_max_threads()
    blas = [ctypes.CDLL(path) for path in _mapped_libraries("openblas")]
    blas = [library for library in blas if hasattr(library, "openblas_get_num_threads")]
    try:
        set_threads(1)
        assert faiss.omp_get_max_threads() == 1 and all(lib.openblas_get_num_threads() == 1 for lib in blas)
        set_threads(2)
        assert faiss.omp_get_max_threads() == 2 and all(lib.openblas_get_num_threads() == 2 for lib in blas)
    finally:
        set_threads(before)


def shards_sha(path) -> str:
    from latentsweep.index.cache import file_sha256

    return file_sha256(str(path))


def test_evaluate_samples_deterministically_and_searches_through_index_parts(reference, tmp_path):
    from latentsweep.index.reader import embedding_files
    from latentsweep.query.evaluate import choose_queries, tables

    one = evaluate(str(reference["index"]), str(tmp_path / "one"), sample=300)
    protocol = one["protocol"]
    assert one["overall"]["queries"] == protocol["queries"] == 300 and protocol["labelled_queries"] == 1200
    assert protocol["query_selection"].startswith("deterministic sample of 300") and protocol["search"] == "one process"
    assert protocol["map_ranking"] == "whole reference set" and "no GPU" in protocol["placement"]
    assert evaluate(str(reference["index"]), str(tmp_path / "again"), sample=300)["overall"] == one["overall"]
    write_ingest_output(str(tmp_path / "five"), reference["vectors"], reference["labels"], FAMILIES, files=5)
    chosen, labelled = choose_queries(embedding_files([str(reference["root"])]), 300)
    assert labelled == 1200 and len(chosen) == 300
    assert np.array_equal(chosen, choose_queries(embedding_files([str(tmp_path / "five")]), 300)[0])  # any layout
    spread = evaluate(str(reference["index"]), str(tmp_path / "parts"), sample=300, index_parts=2)
    assert spread["overall"] == one["overall"] and spread["by_label"] == one["by_label"]
    assert spread["protocol"]["search"].startswith("2 index parts")
    assert tables(spread).startswith("Queries: deterministic sample of 300 labelled queries")
    every = json.loads(json.dumps(evaluate(str(reference["index"]), str(tmp_path / "all"), sample=0)["protocol"]))
    assert every["query_selection"] == "every labelled query" and every["queries"] == 1200
