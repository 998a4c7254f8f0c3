"""The ``self_description`` descriptor: contract, determinism, batch invariance, the weights'
provenance and their verification, and the column through ingest and index as users run them."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latentsweep import descriptors, schema
from latentsweep.codec.weights import WeightsError
from latentsweep.descriptors import self_description as sd
from latentsweep_lab.training import descriptor as train
from latentsweep_lab import photos
from processes import ingest_photos, run_command

RNG = np.random.default_rng(11)


def crop(rng: np.random.Generator, side: int, name: str | None = None) -> np.ndarray:
    image = photos.load(name or photos.names("train")[rng.integers(10)])
    top, left = rng.integers(image.shape[0] - side), rng.integers(image.shape[1] - side)
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def test_dimension_and_version_follow_the_schema_and_the_weights():
    dimension, version = schema.DESCRIPTORS["self_description"]
    assert sd.DIMENSIONS == dimension
    assert version == sd.column_version() == f"{sd.VERSION}-w{sd.digest()[:16]}"
    for image in (crop(RNG, 96), crop(RNG, 40), np.full((9, 13, 3), 128, np.uint8)):  # tiny and flat images too
        values = descriptors.describe(image)["self_description"]
        assert values.shape == (dimension,) and values.dtype == np.float32 and np.isfinite(values).all()


def test_filters_are_constrained_symmetric_prediction_errors():
    filters, _, card = sd.load()
    assert filters.dtype == torch.float32 and card["supports"] == list(sd.SUPPORTS)
    for kernel, name in zip(filters[:, 0], sd.SUPPORTS):
        assert kernel[2, 2] == -1.0 and abs(float(kernel.sum())) < 1e-5  # others sum to 1
        for symmetric in (kernel.flip(0), kernel.flip(1), kernel.T):
            torch.testing.assert_close(symmetric, kernel)
        outside = torch.ones(5, 5, dtype=torch.bool)
        for dy, dx in sd.support(name):
            outside[2 + dy, 2 + dx] = False
        outside[2, 2] = False
        assert not kernel[outside].any()


def test_deterministic_and_independent_of_threads_batch_and_order():
    images = [crop(RNG, 80 + 8 * i) for i in range(4)]
    first = [descriptors.describe(image)["self_description"] for image in images]
    again = [descriptors.describe(image)["self_description"] for image in reversed(images)][::-1]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = [descriptors.describe(image)["self_description"] for image in images]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, single):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_invariant_to_transposes_and_flips():
    image = crop(RNG, 128)
    values = descriptors.describe(image)["self_description"]
    for variant in (image[::-1], image[:, ::-1], image.transpose(1, 0, 2)):
        np.testing.assert_allclose(descriptors.describe(np.ascontiguousarray(variant))["self_description"], values,
                                   atol=2e-3)


def test_training_reproduces_the_shipped_weights_from_training_photos_only(tmp_path):
    meta = train.train(str(tmp_path / "filters.pt"), progress=lambda line: None)
    assert meta["sha256"] == sd.digest()
    _, _, card = sd.load()
    assert card["training_photos"] == photos.names("train")
    assert not set(card["training_photos"]) & set(photos.HELD_OUT)
    assert card["steps"] == 1 and card["train_seconds"] > 0 and "no evaluation class" in card["training_data"]


def test_tampered_missing_or_foreign_weights_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "self-description.pt"
    shutil.copy(sd.WEIGHTS, path)
    shutil.copy(sd.WEIGHTS.with_suffix(".json"), path.with_suffix(".json"))
    assert sd.load(path)[1] == hashlib.sha256(path.read_bytes()).hexdigest()

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        sd.load(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="no checksum file"):
        sd.load(path)

    # verified, but not the filters the column's version names: the descriptor refuses them
    from latentsweep.codec.weights import write_checkpoint

    other = tmp_path / "other.pt"
    filters = sd.load()[0].clone()
    filters[0, 0, 1, 1] += 0.01
    filters[0, 0, 1, 2] -= 0.01
    write_checkpoint({"filters": filters}, other, {"kind": "self-description-filters"})
    monkeypatch.setattr(sd, "WEIGHTS", other)
    sd._weights.cache_clear()
    sd._on.cache_clear()
    try:
        with pytest.raises(WeightsError, match="not the filter bank"):
            sd.describe(torch.from_numpy(crop(RNG, 64)))
    finally:
        monkeypatch.undo()
        sd._weights.cache_clear()
        sd._on.cache_clear()
    # a wrong shape is refused by name
    write_checkpoint({"filters": torch.zeros(3, 1, 5, 5)}, other, {})
    with pytest.raises(WeightsError, match="does not hold"):
        sd.load(other)


def test_tells_resizers_apart_where_content_differs():
    rng = np.random.default_rng(3)
    images, labels = [], []
    for label, kernel, factor in (("nearest", Image.Resampling.NEAREST, 2), ("bilinear", Image.Resampling.BILINEAR, 2),
                                  ("untouched", None, 1), ("lanczos", Image.Resampling.LANCZOS, 1.5)):
        for _ in range(8):
            side = int(128 / factor)
            image = Image.fromarray(crop(rng, side))
            image = image.resize((128, 128), kernel) if kernel is not None else image
            images.append(np.asarray(image))
            labels.append(label)
    vectors = np.array([descriptors.describe(image)["self_description"] for image in images], np.float64)
    vectors = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-9)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    assert (np.array(labels)[scores.argmax(1)] == np.array(labels)).mean() >= 0.9


# ---- through the CLI, as users run it ----------------------------------------------------------

def cli(*args: str):
    return run_command([sys.executable, "-m", "latentsweep", *args])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_session):
    return ingest_photos(tmp_path_factory.mktemp("self_description"), per_label=2)


def test_ingest_records_version_and_digest_and_rows_equal_one_image_alone(ingested):
    from latentsweep.ingest.decode import decode_image

    table = pq.read_table(ingested / "emb" / "embeddings")
    version = schema.DESCRIPTORS["self_description"][1]
    assert table.schema.field("self_description").metadata == {b"version": version.encode()}
    assert sd.digest().startswith(version.split("-w")[1])
    plan = json.loads((ingested / "emb" / "plan.json").read_text())
    assert plan["settings"]["descriptors"]["self_description"] == version
    for row in table.to_pylist():
        alone = descriptors.describe(decode_image(open(row["uri"], "rb").read()))["self_description"]
        np.testing.assert_allclose(row["self_description"], alone, atol=1e-4)


def test_index_over_self_description_alone_and_fused_with_fingerprint(ingested):
    # fused; self_description alone is the default index of tests/test_verdicts.py and tests/test_nightly.py
    for features, dimension in (("fingerprint,self_description", 251 + 515),):
        out = ingested / f"index-{features.replace(',', '-')}"
        result = cli("index", "build", str(ingested / "emb"), "--out", str(out), "--features", features,
                     "--shards", "1", "-q")
        assert result.returncode == 0, result.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dimension"] == dimension and manifest["columns"] == features.split(",")
    evaluated = cli("evaluate", "--index", str(ingested / "index-fingerprint-self_description"),
                    "--out", str(ingested / "evaluation"))
    assert evaluated.returncode == 0, evaluated.stderr

    # rows made with other weights (another version) are refused, never mixed
    source = next((ingested / "emb" / "embeddings").glob("*.parquet"))
    table = pq.read_table(source)
    position = table.schema.get_field_index("self_description")
    foreign = table.schema.field("self_description").with_metadata({"version": "1-w0000000000000000"})
    pq.write_table(table.cast(table.schema.set(position, foreign)), ingested / "foreign.parquet")
    refused = cli("index", "build", str(ingested / "foreign.parquet"), "--out", str(ingested / "idx-foreign"),
                  "--features", "self_description")
    assert refused.returncode == 2 and "self_description version 1-w0000000000000000" in refused.stderr
