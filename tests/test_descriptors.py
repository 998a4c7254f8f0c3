"""The pixel descriptors: the schema contract, an independent reference for the classical baseline,
invariances that make the fingerprint blind to content placement, batch invariance through the real
ingest, null rows for .pt latents, and the refusals of an index over rows that have none."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latentsweep import descriptors, schema
from latentsweep.descriptors import fingerprint, residual_spectrum
from latentsweep_lab import photos
from processes import ingest_photos, run_command

RNG = np.random.default_rng(7)


def photo_crop(rng: np.random.Generator, side: int) -> np.ndarray:
    image = photos.load(photos.names("train")[rng.integers(10)])
    top, left = rng.integers(image.shape[0] - side), rng.integers(image.shape[1] - side)
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def test_dimensions_follow_the_schema_contract():
    image = photo_crop(RNG, 40)
    described = descriptors.describe(image)
    assert {name: len(values) for name, values in described.items()} == descriptors.columns()
    assert descriptors.columns() == {name: dim for name, (dim, _) in schema.DESCRIPTORS.items()}
    assert fingerprint.DIMENSIONS == schema.DESCRIPTORS["fingerprint"][0]
    assert all(values.dtype == np.float32 and np.isfinite(values).all() for values in described.values())


def test_residual_spectrum_equals_an_independent_numpy_computation():
    """Laplacian residual of BT.601 luma (edges replicated), |FFT|^2, mean per radial band, log."""
    image = photo_crop(RNG, 48)[:, :40]
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    padded = np.pad(luma, 1, mode="edge")
    residual = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * luma)
    power = np.abs(np.fft.fft2(residual)) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(48), np.fft.fftfreq(40), indexing="ij"))
    band = np.minimum((radius / 0.5 * residual_spectrum.BINS).astype(int), residual_spectrum.BINS - 1)
    expected = [np.log(power[band == b].mean() + 1e-8) if (band == b).any() else np.log(1e-8)
                for b in range(residual_spectrum.BINS)]
    np.testing.assert_allclose(descriptors.describe(image)["residual_spectrum"], expected, rtol=1e-5, atol=1e-5)


def test_fingerprint_ignores_orientation_and_brightness_but_not_formation():
    """Flips, transposes and a brightness offset leave it unchanged (content placement is not a
    trace); resampling the same content with another kernel moves it."""
    image = photo_crop(RNG, 64)
    base = descriptors.describe(image)["fingerprint"]
    for variant in (image[:, ::-1], image[::-1], image.transpose(1, 0, 2), np.rot90(image)):
        np.testing.assert_allclose(descriptors.describe(variant)["fingerprint"], base, atol=1e-5)
    brighter = (image.astype(np.int16) * 0.8 + 20).astype(np.uint8)  # no clipping at either end
    offset = (brighter.astype(np.int16) + 10).astype(np.uint8)
    np.testing.assert_allclose(descriptors.describe(offset)["fingerprint"],
                               descriptors.describe(brighter)["fingerprint"], atol=1e-5)
    bilinear = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR))
    nearest = np.asarray(Image.fromarray(image).resize((128, 128), Image.NEAREST))
    gap = np.abs(descriptors.describe(bilinear)["fingerprint"] - descriptors.describe(nearest)["fingerprint"])
    assert gap.max() > 0.1


def test_markov_part_averages_transition_probabilities():
    """Each part averages 12 row-normalised matrices (3 channels x 4 directions): a row's sum is the
    share of those in which its d1 context occurred."""
    rgb = torch.from_numpy(photo_crop(RNG, 32))
    rows = fingerprint.markov(rgb).view(2, 7, 7)
    occurrences = rows.sum(-1) * 12
    assert torch.allclose(occurrences, occurrences.round(), atol=1e-9) and torch.all(rows >= 0)
    assert occurrences.round().max() == 12 and occurrences.min() >= 0


def test_tiny_images_are_described():
    for shape in ((16, 16, 3), (3, 50, 3), (1, 1, 3)):
        values = descriptors.describe(np.full(shape, 90, np.uint8))
        assert all(np.isfinite(v).all() for v in values.values())


def test_fingerprint_tells_resizers_apart_where_content_differs():
    """Leave-one-out 1-NN on z-scored cosine over two real resizers, each image its own content:
    the fingerprint separates them; averaging the luma (what a GAP of any feature sees) does not."""
    rng = np.random.default_rng(3)
    images, labels = [], []
    for kind in (Image.HAMMING, Image.BILINEAR):
        for _ in range(12):
            images.append(np.asarray(Image.fromarray(photo_crop(rng, 48)).resize((96, 96), kind)))
            labels.append(kind)
    labels = np.array(labels)

    def leave_one_out(vectors):
        vectors = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        return (labels[scores.argmax(1)] == labels).mean()

    fingerprints = np.array([descriptors.describe(image)["fingerprint"] for image in images])
    means = np.array([image.reshape(-1, 3).mean(0) for image in images])
    assert leave_one_out(fingerprints) >= 0.9 > leave_one_out(means) + 0.2


# ---- through the CLI, as users run it ----------------------------------------------------------

def cli(*args: str):
    return run_command([sys.executable, "-m", "latentsweep", *args])


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_session):
    return ingest_photos(tmp_path_factory.mktemp("descriptors"), per_label=3)


def test_default_ingest_stores_descriptors_equal_to_one_image_alone(ingested):
    """Batch invariance: the row of each image equals its descriptors computed alone, in this process."""
    from latentsweep.ingest.decode import decode_image

    table = pq.read_table(ingested / "emb" / "embeddings")
    assert table.schema.field("fingerprint").metadata == {b"version": schema.DESCRIPTORS["fingerprint"][1].encode()}
    for row in table.to_pylist():
        alone = descriptors.describe(decode_image(open(row["uri"], "rb").read()))
        np.testing.assert_allclose(row["fingerprint"], alone["fingerprint"], atol=1e-5)
        np.testing.assert_allclose(row["residual_spectrum"], alone["residual_spectrum"], atol=1e-5)
    plan = json.loads((ingested / "emb" / "plan.json").read_text())
    assert plan["settings"]["descriptors"] == {name: version for name, (_, version) in schema.DESCRIPTORS.items()}


def test_index_over_fingerprint_and_fused_columns(ingested):
    """Fused: a descriptor and a pooled tensor in one index (the descriptor alone: tests/test_verdicts.py)."""
    for features, dimension in (("fingerprint,y_hat_luma", 251 + 160),):
        out = ingested / f"index-{features.replace(',', '-')}"
        result = cli("index", "build", str(ingested / "emb"), "--out", str(out), "--features", features,
                     "--shards", "1", "-q")
        assert result.returncode == 0, result.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["dimension"] == dimension and manifest["columns"] == features.split(",")
        evaluated = cli("evaluate", "--index", str(out), "--out", str(ingested / f"evaluation-{features}"))
        assert evaluated.returncode == 0, evaluated.stderr


def test_rows_without_descriptors_are_refused_in_one_line(ingested, tmp_path):
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run

    bare = tmp_path / "bare"
    run(IngestJob(str(ingested / "corpus"), str(bare), EmbedSettings(weights="untrained", feature_set="2lat",
                                                                     descriptors=False), quiet=True))
    assert "fingerprint" not in pq.read_schema(next((bare / "embeddings").glob("*.parquet"))).names
    refused = cli("index", "build", str(bare), "--out", str(tmp_path / "idx"), "--features", "fingerprint")
    assert refused.returncode == 2 and "lack fingerprint" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "idx").exists()

    # rows from .pt latents: null descriptors, refused by name
    source = next((ingested / "emb" / "embeddings").glob("*.parquet"))
    table = pq.read_table(source)
    nulls = pa.nulls(table.num_rows, table.schema.field("fingerprint").type)
    position = table.schema.get_field_index("fingerprint")
    pq.write_table(table.set_column(position, table.schema.field("fingerprint"), nulls), tmp_path / "latents.parquet")
    refused = cli("index", "build", str(tmp_path / "latents.parquet"), "--out", str(tmp_path / "idx2"),
                  "--features", "fingerprint")
    assert refused.returncode == 2 and "have no fingerprint" in refused.stderr and ".pt latents" in refused.stderr

    # another descriptor version: refused, never mixed
    old = table.schema.field("fingerprint").with_metadata({"version": "0"})
    pq.write_table(table.cast(table.schema.set(position, old)), tmp_path / "old.parquet")
    refused = cli("index", "build", str(tmp_path / "old.parquet"), "--out", str(tmp_path / "idx3"),
                  "--features", "fingerprint")
    assert refused.returncode == 2 and "version 0" in refused.stderr and "ingest again" in refused.stderr
