"""Augmented references: processed copies planned as items, grouped with their source by the index."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from latentsweep.codec.settings import EmbedSettings
from latentsweep.descriptors import jpeg_quality
from latentsweep.errors import UsageError
from latentsweep.index.build import IndexJob, build
from latentsweep.index.lookup import MISSING
from latentsweep.index.shards import collapse
from latentsweep.ingest import augment
from latentsweep.ingest.run import IngestJob, run as ingest
from latentsweep.query.actor import QueryEngine
from latentsweep.query.evaluate import evaluate


def test_copies_are_drawn_once_per_labelled_image_and_named_by_their_source():
    uri = "s3://refs/gen-a/0001.png"
    copies = augment.copy_uris(uri, "standard")
    assert len(copies) == augment.COPIES == len(set(copies))  # this source's three draws differ
    assert copies == augment.copy_uris(uri, "standard")  # the same steps on every run and machine
    assert all(augment.split(copy) == (uri, copy.split("#copy=")[1]) for copy in copies)
    assert augment.copy_uris("s3://refs/gen-b/0001.png", "standard") != copies
    assert augment.copy_uris(uri, "none") == [] and augment.copy_uris("x/latents.pt", "standard") == []
    # a file whose name merely contains the mark is not a copy
    assert augment.split("s3://refs/a#copy=sepia.png") == ("s3://refs/a#copy=sepia.png", None)
    with pytest.raises(UsageError):
        augment.check("heavy")


def test_copies_are_real_encoder_output():
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3)).astype(np.uint8)
    data = augment.process(image, "jpeg-72-420")
    quality = jpeg_quality.estimate(data)
    assert quality.quality == 72 and Image.open(io.BytesIO(data)).format == "JPEG"
    resized = Image.open(io.BytesIO(augment.process(image, "resize-0.50-bicubic+webp-80")))
    assert resized.format == "WEBP" and resized.size == (40, 32)


def test_a_reference_and_its_copies_are_one_neighbour_and_leave_together():
    # query 0's hits: 11 (a copy of 10), 10, 20, 21 (a copy of 20), 30; query 1 must not see source 20
    ids = np.array([[11, 10, 20, 21, 30], [21, 20, 10, 30, MISSING]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, 0.7, 0.6, -np.inf]], np.float32)
    sources = np.array([[10, 10, 20, 20, 30], [20, 20, 10, 30, MISSING]])
    top_scores, top = collapse(scores, ids, sources, np.array([99, 20]), 4)
    assert top.tolist() == [[11, 20, 30, MISSING], [10, 30, MISSING, MISSING]]
    assert top_scores[0].tolist()[:3] == pytest.approx([0.9, 0.7, 0.5])


def _noise_corpus(root, images: int = 8) -> None:
    """Noise images under two labels that say nothing about them: only an image's own copies resemble
    it, so a leave-one-out that counted them would score every query right."""
    rng = np.random.default_rng(7)
    for number in range(images):
        folder = root / ("a" if number % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(folder / f"{number}.png")


@pytest.fixture(scope="module")
def augmented(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("augment")
    _noise_corpus(root / "refs")
    job = IngestJob(str(root / "refs"), str(root / "emb"), EmbedSettings(
        weights="untrained", feature_set="2lat", device="cpu", descriptors=False), labels_from_folders=True,
        augment="standard", quiet=True)
    first = ingest(job)
    build(IndexJob([str(root / "emb")], str(root / "index"), features="2lat", quiet=True))
    return {"root": root, "job": job, "first": first}


def test_augmented_ingest_embeds_each_copy_once_and_a_rerun_resumes(augmented):
    first, job = augmented["first"], augmented["job"]
    images = sorted(str(path) for path in (augmented["root"] / "refs").rglob("*.png"))
    copies = {image: augment.copy_uris(image, "standard") for image in images}
    assert first.copies == sum(map(len, copies.values())) >= len(images) * (augment.COPIES - 1)
    assert first.inputs == first.embedded == len(images) + first.copies and not first.errors
    assert ingest(job).items_encoded == 0
    changed = augmented["root"] / "refs" / "a" / "1.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(changed)  # replaced: it and its copies are fresh
    os.utime(changed, (1e9, 1e9))
    assert ingest(job).items_encoded == 1 + len(copies[str(changed)])


def test_leave_one_out_drops_a_query_with_its_copies(augmented):
    root = augmented["root"]
    result = evaluate(str(root / "index"), str(root / "evaluation"))
    assert result["protocol"]["queries"] == 8  # the originals; copies never query
    # counting its own copies, every query would be right; labels unrelated to content: about chance
    assert result["overall"]["top1"] < 0.9
    engine = QueryEngine(str(root / "index"), use_gpu=False)
    own = engine.references.ids[engine.references.sources(engine.references.ids) == engine.references.ids]
    vectors = np.random.default_rng(1).normal(size=(len(own), engine.manifest.dimension)).astype(np.float32)
    _, ids = engine.search_ids(vectors, 7, exclude_ids=own)
    sources = engine.references.sources(ids)
    for row, query in zip(sources, own):
        assert len(set(row.tolist())) == 7 and query not in row  # seven distinct others, never itself


def test_the_default_path_augments_the_references_and_indexes_the_learned_descriptor(tmp_path, ray_session):
    """What a user runs, with no options (in this process, on the tests' Ray): ingest REFS, ingest
    QUERIES, index build REFS_EMB, evaluate --index --queries. The labelled references get their
    copies; the index holds the learned descriptor with its copies grouped; only originals query."""
    import json

    from typer.testing import CliRunner

    from latentsweep.cli import app
    from images import photo_corpus

    photo_corpus(tmp_path / "refs", per_label=2)
    photo_corpus(tmp_path / "queries", per_label=1, size=(64, 80))
    runner = CliRunner()
    for args in (["ingest", str(tmp_path / "refs"), "--out", str(tmp_path / "emb-refs"), "--labels-from-folders"],
                 ["ingest", str(tmp_path / "queries"), "--out", str(tmp_path / "emb-queries"),
                  "--labels-from-folders"],
                 ["index", "build", str(tmp_path / "emb-refs"), "--out", str(tmp_path / "index")],
                 ["evaluate", "--index", str(tmp_path / "index"), "--queries", str(tmp_path / "emb-queries"),
                  "--out", str(tmp_path / "evaluation")]):
        result = runner.invoke(app, [*args, "-q"])
        assert result.exit_code == 0, (args, result.output)
    summary = json.loads((tmp_path / "emb-refs" / "summary.json").read_text())
    copies = sum(len(augment.copy_uris(str(path), "standard")) for path in (tmp_path / "refs").rglob("*.png"))
    assert summary["copies"] == copies and summary["inputs"] == summary["embedded"] == 6 + copies
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["features"] == "self_description" and manifest["copies_per_source"] == augment.COPIES
    assert manifest["labels"] == {"alpha": 2, "beta": 2, "gamma": 2} and manifest["vectors"] == 6 + copies
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["protocol"]["queries"] == 3 and metrics["protocol"]["copies_per_source"] == augment.COPIES


def test_a_sweep_reads_only_originals_from_embeddings_that_hold_copies(augmented):
    from latentsweep.index import reader

    files = reader.embedding_files([str(augmented["root"] / "emb")])
    rows = sum(reader.read_queries(uri, ["y_hat_luma"]).num_rows for uri in files)
    uris = [uri for f in files for uri in reader.read_queries(f, ["y_hat_luma"]).column("uri").to_pylist()]
    assert rows == 8 and not any("#copy=" in uri for uri in uris)
