"""The sweep's report, summary and command-line lines as an analyst reads them: provenance, metrics
scored on the vote (only for labelled queries), a per-query table filtered in headless Chromium,
neighbour strips for a stated sample, and the timing fields of ``_SUCCESS.json``."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentsweep import storage
from latentsweep.index.build import IndexJob, build
from latentsweep.index.manifest import load
from latentsweep.query import metrics, report
from latentsweep.query.sweep import SweepJob, sweep
from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output

DIM = sum(DIMS.values())
LABELS = ["sg2", "sg3", "sana", "sd"]
FAMILIES = {"sg2": "gan", "sg3": "gan", "sana": "dm", "sd": "dm"}
DATE = "2026-11-23"
THRESHOLD = 0.4  # the synthetic night's outliers score below it: some queries are unknown


# ---- helpers ----------------------------------------------------------------------------------

def results_of(partition) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in sorted(glob.glob(f"{partition}/part-*.parquet"))])


def without_data_uris(page: str) -> str:
    """The page's text without inlined images (base64 may spell anything, 'nan' included)."""
    return re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)


class Rows(HTMLParser):
    """The per-query table's body rows: attributes and cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self.inside, self.cell = [], False, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == "query-table":
            self.inside = True
        elif self.inside and tag == "tr" and "data-predicted" in attrs:
            self.rows.append({"attrs": attrs, "cells": []})
        elif self.inside and tag == "td" and self.rows:
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_rows(page: str) -> list[dict]:
    parser = Rows()
    parser.feed(page)
    return parser.rows


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    return found


def chromium(args: list[str], url: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args, url], capture_output=True, timeout=120, check=True)


def screenshot(page, out) -> np.ndarray:
    from PIL import Image

    chromium([f"--screenshot={out}", "--window-size=1200,1600"], f"file://{page}", out.parent / "chromium-profile")
    return np.asarray(Image.open(out).convert("L"))


def dumped_dom(page, fragment: str, profile) -> str:
    """The page's DOM after its inline script ran, opened at ``report.html#fragment``."""
    return chromium(["--dump-dom", "--virtual-time-budget=2000"], f"file://{page}#{fragment}", profile).stdout.decode()


# ---- a synthetic labelled night (no images: fast) -----------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, ray_session):
    """A reference index and a labelled night whose vote and nearest neighbour disagree on some
    queries (wide clusters) and whose outliers fall under the open-set threshold."""
    root = tmp_path_factory.mktemp("synthetic")
    vectors, assignment = clustered(400, len(LABELS), DIM, seed=4, spread=0.25)
    write_ingest_output(str(root / "ref"), vectors, [LABELS[a] for a in assignment], FAMILIES, files=2)
    build(IndexJob([str(root / "ref")], str(root / "index"), shards=1, quiet=True))
    queries, assignment = clustered(60, len(LABELS), DIM, seed=4, spread=0.9)  # the same centres, wider
    outliers = np.random.default_rng(1).normal(size=(6, DIM)).astype(np.float32) * 3
    write_ingest_output(str(root / "night"), np.vstack([queries, outliers]),
                        [LABELS[a] for a in assignment] + ["sg2"] * 6, FAMILIES, files=2, id_offset=10_000)
    summary = sweep(SweepJob([str(root / "night")], str(root / "index"), str(root / "results"), date=DATE,
                             open_set_threshold=THRESHOLD, quiet=True))
    return {"root": root, "summary": summary, "partition": root / "results" / f"date={DATE}"}


def test_labelled_night_scores_the_vote_with_the_nearest_neighbour_beside_it(synthetic):
    summary, partition = synthetic["summary"], synthetic["partition"]
    results = results_of(partition).to_pydict()
    labels, voted = results["label"], results["predicted_label"]
    nearest = [neighbours[0] for neighbours in results["neighbor_labels"]]
    vote_hits = sum(v == t for v, t in zip(voted, labels))
    top1_hits = sum(n == t for n, t in zip(nearest, labels))
    assert vote_hits != top1_hits, "the night must tell the vote from the nearest neighbour"
    overall = summary.metrics["overall"]
    assert summary.labelled == 66 and overall["queries"] == 66
    assert overall["vote_accuracy"] == pytest.approx(vote_hits / 66)
    assert overall["top1"] == pytest.approx(top1_hits / 66)
    assert overall["precision_at_10"] == pytest.approx(
        np.mean([sum(n == t for n in row[:10]) / 10 for row, t in zip(results["neighbor_labels"], labels)]))
    assert 0 < summary.unknown < 66  # the outliers are unknown: a vote that counts as wrong
    # the confusion counts (true label, predicted_label): the vote, not the nearest neighbour
    confusion = Counter(zip(labels, voted))
    assert summary.metrics["confusion"] == {
        t: {p: n for (tt, p), n in sorted(confusion.items()) if tt == t} for t in sorted(set(labels))}
    assert summary.metrics["confusion_of"].startswith("predicted_label")
    page = (partition / "report.html").read_text()
    assert "vote accuracy" in page and "Top-1 (nearest neighbour)" in page and "Prec.@10" in page
    assert f"{overall['vote_accuracy']:.3f}" in page and f"{overall['top1']:.3f}" in page
    assert "Attribution of the 66 labelled queries (of 66)" in page
    rows = table_rows(page)
    assert len(rows) == 66 and len(rows[0]["cells"]) == 11  # ... and the true label
    assert all((row["cells"][5] == "—") == (row["attrs"]["data-unknown"] == "1") for row in rows)
    order = [(-math.inf if row["cells"][5] == "—" else float(row["cells"][5]), float(row["cells"][6])) for row in rows]
    assert order == sorted(order) and order[-1][0] > order[0][0]  # least confident first: unknown, then confidence
    assert sum(row["attrs"]["data-unknown"] == "1" for row in rows) == summary.unknown
    assert sum(row["attrs"].get("class") == "miss" for row in rows) == 66 - vote_hits
    # the images (img://) are not reachable: the page says so instead of showing strips
    assert "Neighbour strips for 0 of 66 queries" in page and "12 sampled queries are left out" in page


def test_success_record_holds_timing_and_provenance(synthetic):
    partition, root = synthetic["partition"], synthetic["root"]
    record = json.loads((partition / "_SUCCESS.json").read_text())
    assert record["summary"]["seconds"] > 0 and record["summary"]["queries_per_second"] > 0
    assert record["summary"]["seconds"] == synthetic["summary"].seconds
    provenance = record["provenance"]
    manifest = load(str(root / "index"))
    assert provenance["index"] == str(root / "index")
    assert provenance["index_created"] == manifest.created
    assert provenance["index_manifest_sha256"] == hashlib.sha256((root / "index" / "manifest.json").read_bytes()).hexdigest()
    assert provenance["features"] == manifest.features and provenance["columns"] == manifest.columns
    assert provenance["pooling"] == "gap" and provenance["codec"] == "jpegai-bop" and provenance["weights_digest"] == "w1"
    assert provenance["k"] == 10 and provenance["weighted"] is False and provenance["open_set_threshold"] == THRESHOLD
    assert provenance["date"] == DATE and provenance["partition"] == str(partition)
    page = (partition / "report.html").read_text()
    block = page[page.index('id="provenance"'):page.index("</table>", page.index('id="provenance"'))]
    for value in (str(root / "index"), manifest.created, provenance["index_manifest_sha256"][:16], "gap",
                  "y_hat_luma, y_hat_chroma", "jpegai-bop", "w1", f"{THRESHOLD}", DATE, "66 queries, 66 labelled",
                  f"{synthetic['summary'].unknown} unknown", "2 parts",
                  f"calibrated leave-one-out on {provenance['confidence_calibrated_on']} of the index's references"):
        assert value in block, value
    assert re.search(r"<th>k</th><td>10</td>", block)


def capped_night(synthetic, monkeypatch, table_rows: int):
    """The night's success record and results, with the report's caps far below its size (a table of
    ``table_rows``, strips of 2 least confident and 3 drawn) and every image reachable."""
    monkeypatch.setattr(report, "TABLE_ROWS", table_rows)
    monkeypatch.setattr(report, "STRIPS_LEAST_CONFIDENT", 2)
    monkeypatch.setattr(report, "STRIPS_RANDOM", 3)
    monkeypatch.setattr(report, "thumbnail", lambda uri: "data:image/jpeg;base64,AAAA" if uri else None)
    return json.loads((synthetic["partition"] / "_SUCCESS.json").read_text()), results_of(synthetic["partition"])


def test_table_cap_and_strip_sample_are_stated(synthetic, monkeypatch):
    """A large night embeds only the least confident rows and says so; strips cover a seeded sample."""
    record, results = capped_night(synthetic, monkeypatch, table_rows=10)
    page = report.render(results, record["summary"], record["provenance"], FAMILIES).decode()
    assert "The table holds the 10 least confident of the 66 queries" in page
    rows = table_rows(page)
    lowest = sorted((-math.inf if c is None else c, t) for c, t in zip(results.column("confidence").to_pylist(),
                                                                     results.column("top_score").to_pylist()))[:10]
    assert len(rows) == 10 and [float(row["cells"][6]) for row in rows] == pytest.approx([t for _, t in lowest], abs=1e-3)
    assert "Neighbour strips for 5 of 66 queries: the 2 least confident and 3 chosen at random (seed 0)." in page
    assert page.count('class="strip"') == 5
    assert report.render(results, record["summary"], record["provenance"], FAMILIES).decode() == page  # seeded


def test_filter_from_the_url_hash_in_chromium(synthetic, tmp_path):
    page = synthetic["partition"] / "report.html"
    rows = table_rows(page.read_text())
    counts = Counter(row["attrs"]["data-predicted"] for row in rows)
    label = next(name for name, _ in counts.most_common() if name != "unknown")
    visible = [row for row in table_rows(dumped_dom(page, f"predicted={label}", tmp_path / "profile"))
               if "hidden" not in row["attrs"]]
    assert len(visible) == counts[label] and {row["attrs"]["data-predicted"] for row in visible} == {label}
    unknown = [row for row in table_rows(dumped_dom(page, "unknown=1", tmp_path / "profile"))
               if "hidden" not in row["attrs"]]
    assert len(unknown) == synthetic["summary"].unknown and all(row["cells"][7] == "yes" for row in unknown)
    # two clicks on the confidence header: most confident first
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.read_text().replace("</body>", "<script>var th = document.querySelectorAll("
                                                "'#query-table th')[5]; th.click(); th.click();</script></body>"))
    scores = [-math.inf if row["cells"][5] == "—" else float(row["cells"][5])
              for row in table_rows(dumped_dom(clicked, "", tmp_path / "profile"))]
    assert len(scores) == 66 and scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_cli_names_metrics_with_their_k_and_prints_them_only_for_labelled_nights(synthetic, tmp_path):
    from typer.testing import CliRunner

    from latentsweep.cli import app

    root = synthetic["root"]
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(root / "night"), "--index", str(root / "index"), "--out",
                                 str(tmp_path / "k5"), "--date", DATE, "-k", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("sweep metrics"))
    assert re.search(r"vote_acc=\d\.\d{3} top1=\d\.\d{3} p@5=\d\.\d{3}", line) and "p@10" not in line
    record = json.loads((tmp_path / "k5" / f"date={DATE}" / "_SUCCESS.json").read_text())
    overall = record["summary"]["metrics"]["overall"]
    assert "precision_at_5" in overall and "precision_at_10" not in overall
    page = (tmp_path / "k5" / f"date={DATE}" / "report.html").read_text()
    assert "Prec.@5" in page and "Prec.@10" not in page
    pulled = runner.invoke(app, ["pull", str(tmp_path / "k5" / f"date={DATE}"), str(tmp_path / "pulled"), "--quiet"])
    assert pulled.exit_code == 0, pulled.output
    assert re.search(r"66 labelled; metrics of the labelled: vote_acc=\d\.\d{3} top1=\d\.\d{3} p@5=", pulled.output)
    # the same night without labels: no metrics line, no metrics
    unlabelled = tmp_path / "unlabelled"
    for path in sorted((root / "night" / "embeddings").glob("*.parquet")):
        table = pq.read_table(path)
        nulls = pa.nulls(table.num_rows, pa.string())
        table = table.set_column(table.schema.get_field_index("label"), table.schema.field("label"), nulls)
        table = table.set_column(table.schema.get_field_index("family"), table.schema.field("family"), nulls)
        storage.write_table(str(unlabelled / "embeddings" / path.name), table)
    result = runner.invoke(app, ["sweep", str(unlabelled), "--index", str(root / "index"), "--out",
                                 str(tmp_path / "none"), "--date", DATE, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "labelled=0" in result.output and "sweep metrics" not in result.output
    pulled = runner.invoke(app, ["pull", str(tmp_path / "none" / f"date={DATE}"), str(tmp_path / "pulled-none"),
                                 "--quiet"])
    assert "0 labelled" in pulled.output and "vote_acc" not in pulled.output


def test_metric_names_carry_k():
    row = metrics.per_query("a", ["a", "b", "a", "a", "b"], 3, {"a": "gan", "b": "dm"}, k=5, predicted="b")
    assert row["precision_at_5"] == pytest.approx(0.6) and "precision_at_10" not in row
    assert row["top1"] == 1 and row["vote_accuracy"] == 0
    summary = metrics.summarise(["a"], [row], {"a": "gan", "b": "dm"})
    assert summary["confusion"] == {"a": {"b": 1}}  # keyed on the vote
    assert metrics.headline(summary["overall"]).startswith("vote_acc=0.000 top1=1.000 p@5=0.600")
    protocol = metrics.summarise(["a"], metrics.per_queries(["a"], [["b", "a"]], [1], {}), {})
    assert protocol["confusion"] == {"a": {"b": 1}} and "vote_accuracy" not in protocol["overall"]
    assert "precision_at_10" in protocol["overall"]


# ---- a night of real images: thumbnails, frames, the browser ------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory, ray_session):
    from images import photo_corpus
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run as ingest

    root = tmp_path_factory.mktemp("photos")
    reference, queries = root / "ref", root / "queries"
    photo_corpus(reference, per_label=5)
    photo_corpus(queries, per_label=2, size=(64, 64))
    settings = EmbedSettings(feature_set="2lat", device="cpu")
    for corpus in (reference, queries):
        ingest(IngestJob(str(corpus), str(root / "emb" / corpus.name), settings, labels_from_folders=True, augment="none",
                         families={"alpha": "gan", "beta": "gan", "gamma": "dm"}, quiet=True))
    build(IndexJob([str(root / "emb" / "ref")], str(root / "index"), shards=1, quiet=True))
    return root


def test_report_with_neighbour_strips_renders(photos):
    summary = sweep(SweepJob([str(photos / "emb" / "queries")], str(photos / "index"), str(photos / "results"),
                             date=DATE, quiet=True))
    page = photos / "results" / f"date={DATE}" / "report.html"
    text = page.read_text()
    assert summary.queries == 6 and summary.labelled == 6 and "By label (Table 3)" in text and "Confusion" in text
    assert "Neighbour strips for 6 of 6 queries: the 6 least confident and 0 chosen at random" in text
    assert text.count('class="strip"') == 6 and text.count("data:image/jpeg;base64") >= 6 * 6
    assert "http://" not in without_data_uris(text) and "https://" not in without_data_uris(text)  # self-contained
    record = json.loads((page.parent / "_SUCCESS.json").read_text())
    assert any(entry["file"] == "report.html" for entry in record["parts"])
    pixels = screenshot(page, photos / "report.png")
    assert pixels.shape[0] > 500 and pixels.std() > 20  # rendered content, not a blank page


def test_unlabelled_night_has_no_metrics_and_neutral_frames(photos):
    """A normal night: labels are NULL. Nothing is scored, nothing is framed wrong, no 'nan'."""
    unlabelled = photos / "unlabelled"
    for path in sorted((photos / "emb" / "queries" / "embeddings").glob("*.parquet")):
        table = pq.read_table(path)
        nulls = pa.nulls(table.num_rows, pa.string())
        for name in ("label", "family"):
            table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), nulls)
        storage.write_table(str(unlabelled / "embeddings" / path.name), table)
    summary = sweep(SweepJob([str(unlabelled)], str(photos / "index"), str(photos / "night"), date=DATE, quiet=True))
    assert summary.queries == 6 and summary.labelled == 0 and summary.metrics is None
    page = photos / "night" / f"date={DATE}" / "report.html"
    text = page.read_text()
    visible = without_data_uris(text)
    assert not re.search(r"\bnan\b", visible, re.IGNORECASE) and "None" not in visible
    assert 'id="metrics"' not in text and "vote accuracy" not in text and "Confusion" not in text
    assert "6 queries, 0 labelled" in text
    assert text.count('class="strip"') == 6
    assert all(colour not in text for colour in report.FRAME.values())  # no red (or green) frames
    assert text.count(f"border:3px solid {report.NEUTRAL}") >= 6 * 5
    rows = table_rows(text)
    assert len(rows) == 6 and len(rows[0]["cells"]) == 10  # no true-label column
    assert not any(row["attrs"].get("class") == "miss" for row in rows)
    pixels = screenshot(page, photos / "night.png")
    assert pixels.std() > 20


def test_the_page_from_per_part_aggregates_equals_the_page_from_every_row(synthetic, monkeypatch):
    """The driver builds the page from each part's candidates, reduced as parts come in: the same page
    as the one made of every result row, even when the caps are far below the night's size."""
    from functools import reduce

    from latentsweep.query.sweep import AGGREGATE_KEY, AGGREGATES

    record, results = capped_night(synthetic, monkeypatch, table_rows=7)
    parts = sorted((synthetic["partition"]).glob("part-*.parquet"))
    assert len(parts) == 2
    merged = report.candidates(results.slice(0, 0))
    for part in parts:  # as the driver merges them, one part at a time
        merged = report.candidates(pa.concat_tables([merged, report.candidates(storage.read_table(str(part)))]))
    assert merged.num_rows < results.num_rows
    predicted = report.predicted_counts(results.column("predicted_label").to_pylist())
    whole = report.render(results, record["summary"], record["provenance"], FAMILIES)
    assert report.render(merged, record["summary"], record["provenance"], FAMILIES, predicted=predicted) == whole
    # the metrics added up from the parts' tallies are the metrics of every labelled row
    tallies = [json.loads(pq.read_schema(str(path)).metadata[AGGREGATE_KEY.encode()])["tally"]
               for path in sorted((synthetic["partition"] / AGGREGATES).glob("*.parquet"))]
    added = metrics.summarise_tally(reduce(metrics.merge_tallies, tallies), FAMILIES)
    for name, value in record["summary"]["metrics"]["overall"].items():
        assert added["overall"][name] == pytest.approx(value)
    labelled = results.filter(results.column("label").is_valid())
    labels = labelled.column("label").to_pylist()
    rows = metrics.per_queries(labels, labelled.column("neighbor_labels").to_pylist(),
                               [json.loads((synthetic["root"] / "index" / "manifest.json").read_text())["labels"]
                                .get(label, 0) for label in labels], FAMILIES, 10,
                               predicted=labelled.column("predicted_label").to_pylist())
    direct = metrics.summarise(labels, rows, FAMILIES)
    assert direct["confusion"] == added["confusion"]
    for name, value in direct["overall"].items():
        assert added["overall"][name] == pytest.approx(value)
