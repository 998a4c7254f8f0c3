"""Verdicts an analyst can act on: the rule on hand-made votes; through a real sweep, what files declare
carried to their rows, a declaration that contradicts a confident call flagged and sent to review,
other descriptor families that disagree making a call uncertain; ``latentsweep attribute`` giving the
sweep's row for the same file; the report's verdict cards, review list and filters in Chromium."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from latentsweep.codec.settings import EmbedSettings
from latentsweep.index.build import IndexJob, build
from latentsweep.ingest.run import IngestJob, run as ingest
from latentsweep.query.sweep import SweepJob, sweep
from latentsweep.query.verdict import ATTRIBUTED, UNCERTAIN, UNKNOWN, decide, is_generator
from latentsweep_lab.zoo.corpus import CorpusSettings, make_corpus
from processes import LATENTSWEEP, run_command
from test_report import dumped_dom, table_rows

DATE = "2026-12-05"


def test_the_rule_on_hand_made_votes():
    unknown = np.array([False, False, False, True, False])
    confidence = np.array([0.95, 0.5, 0.97, 0.99, 0.9])
    disagreement = np.array([None, None, "self_description votes a, fingerprint votes b", None, None], dtype=object)
    verdicts, reasons = decide(unknown, confidence, 0.9, disagreement)
    assert verdicts.tolist() == [ATTRIBUTED, UNCERTAIN, UNCERTAIN, UNKNOWN, ATTRIBUTED]  # 0.9 itself is enough
    assert reasons[0] is None and reasons[4] is None
    assert "0.50 is below 0.9" in reasons[1] and "fingerprint votes b" in reasons[2] and "open set" in reasons[3]
    uncalibrated, why = decide(unknown, None)
    assert set(uncalibrated[~unknown]) == {UNCERTAIN} and all("no confidence calibration" in text for text in why[:3])
    assert is_generator("sdxl", "dm") and not is_generator("Real", None) and not is_generator("x", "camera")
    assert is_generator(None, None) is None


@pytest.fixture(scope="module")
def night(tmp_path_factory, ray_session):
    """Zoo references indexed twice (the default learned descriptor, and the fingerprint as a second
    family); a night of three copies of references: one whose EXIF declares a camera, one whose PNG
    text declares a generator front-end, one plain; swept with k=1 (the copy's nearest reference is
    itself: both families agree) and every calibrated vote attributed."""
    root = tmp_path_factory.mktemp("verdicts")
    make_corpus(root / "corpus", CorpusSettings(per_generator=4, size=64))
    ingest(IngestJob(str(root / "corpus" / "manifest.csv"), str(root / "emb"),
                     EmbedSettings(weights="untrained", feature_set="2lat", device="cpu"), quiet=True, augment="none"))
    build(IndexJob([str(root / "emb")], str(root / "index"), quiet=True))
    build(IndexJob([str(root / "emb")], str(root / "index-fp"), features="fingerprint", quiet=True))
    generator = sorted(p for p in (root / "corpus").iterdir() if p.is_dir())[0]
    sources = sorted(generator.glob("*.png"))
    (root / "night").mkdir()
    camera = Image.open(sources[0])
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    camera.save(root / "night" / "camera.png", exif=exif.tobytes())
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", "a landscape\nSteps: 20, Sampler: Euler a, Model: sdxl")
    Image.open(sources[1]).save(root / "night" / "front-end.png", pnginfo=text)
    shutil.copyfile(sources[2], root / "night" / "plain.png")
    job = SweepJob([str(root / "night")], str(root / "index"), str(root / "results"), date=DATE, k=1,
                   attribute_at=0.0, evidence=[str(root / "index-fp")], quiet=True)
    from latentsweep.cli import embeddings_for
    from latentsweep.query.sweep import check

    job.queries = embeddings_for(job, "untrained", None, check(job))
    summary = sweep(job)
    partition = root / "results" / f"date={DATE}"
    rows = {row["uri"].rsplit("/", 1)[-1]: row
            for row in pq.read_table(next(partition.glob("part-*.parquet"))).to_pylist()}
    return {"root": root, "summary": summary, "partition": partition, "rows": rows, "label": generator.name}


def test_declarations_reach_the_rows_and_a_contradicted_call_is_flagged(night):
    rows, label = night["rows"], night["label"]
    assert {row["verdict"] for row in rows.values()} == {ATTRIBUTED}
    assert all(row["predicted_label"] == label and row["evidence_labels"] == [label] for row in rows.values())
    assert all(row["evidence_features"] == ["fingerprint"] for row in rows.values())
    camera, front_end, plain = rows["camera.png"], rows["front-end.png"], rows["plain.png"]
    assert camera["declared_by"] == "exif" and camera["declared_camera"]
    assert "declared camera capture" in camera["declared_conflict"] and label in camera["declared_conflict"]
    assert front_end["declared_by"] == "png-text" and "AUTOMATIC1111" in front_end["declared_generator"]
    assert front_end["declared_conflict"] is None  # a generator front-end, attributed to a generator
    assert plain["declared_by"] is None and plain["declared_conflict"] is None
    summary = night["summary"]
    assert (summary.attributed, summary.uncertain, summary.unknown, summary.conflicts, summary.review) == (3, 0, 0, 1, 1)
    review = pq.read_table(night["partition"] / "review.parquet").to_pylist()
    assert [row["uri"].rsplit("/", 1)[-1] for row in review] == ["camera.png"]
    record = json.loads((night["partition"] / "_SUCCESS.json").read_text())
    assert "review.parquet" in [entry["file"] for entry in record["parts"]]


def test_attribute_answers_with_the_sweeps_row_and_families_that_disagree_make_it_uncertain(night):
    root = night["root"]
    files = [str(root / "night" / name) for name in ("camera.png", "front-end.png", "plain.png")]
    common = ["--index", str(root / "index"), "--evidence", str(root / "index-fp"), "-k", "1", "--weights", "untrained"]
    result = run_command([*LATENTSWEEP, "attribute", *files, *common, "--attribute-at", "0", "--json"])
    assert result.returncode == 0, result.stderr[-3000:]
    answered = {json.loads(line)["uri"].rsplit("/", 1)[-1]: json.loads(line) for line in result.stdout.splitlines()}
    compared = ("verdict", "predicted_label", "vote_share", "top_score", "confidence", "neighbor_ids",
                "evidence_labels", "declared_by", "declared_generator", "declared_conflict")
    for name, row in night["rows"].items():
        assert {key: answered[name][key] for key in compared} == {key: row[key] for key in compared}, name
    # a stranger to the references: with k=10 the families rarely agree, and a bar of 1.0 leaves no call standing
    stranger = root / "stranger.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(stranger)
    result = run_command([*LATENTSWEEP, "attribute", str(stranger), str(root / "missing.png"), *common[:4],
                          "--weights", "untrained", "--attribute-at", "1.0"])
    assert result.returncode == 1 and "missing.png" in result.stderr  # a file that cannot be read: exit 1
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{stranger}: UNCERTAIN") or first.startswith(f"{stranger}: UNKNOWN"), result.stdout
    assert "why:" in result.stdout and "fingerprint:" in result.stdout


def test_the_report_leads_with_verdicts_and_lists_the_rows_to_review(night, tmp_path):
    page = night["partition"] / "report.html"
    text = page.read_text()
    assert text.index('id="verdicts"') < text.index('id="review"') < text.index('id="provenance"')
    assert 'id="verdict-conflicts"><b>1</b>' in text and "declared camera capture" in text
    visible = [row for row in table_rows(dumped_dom(page, "conflict=1", tmp_path / "profile"))
               if "hidden" not in row["attrs"]]
    assert [row["cells"][0] for row in visible] == ["camera.png"]
    none = [row for row in table_rows(dumped_dom(page, "verdict=uncertain", tmp_path / "profile"))
            if "hidden" not in row["attrs"]]
    assert none == []
