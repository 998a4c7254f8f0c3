"""Post-processing conditions of the robustness tables: real encoders, the right sizes, reproducible
noise, and a codec round trip as good as the weights card says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentsweep_lab import photos
from latentsweep.codec import weights
from latentsweep.codec.embed import Embedder
from latentsweep.codec.settings import EmbedSettings
from latentsweep.ingest.decode import decode_image
from latentsweep_lab.zoo import robustness

IMAGE = photos.load("coffee")[80:208, 200:328]  # 128 x 128, a held-out photo


def error(condition: str) -> float:
    data, _ = robustness.apply(condition, IMAGE, seed=1)
    return float(np.abs(decode_image(data).astype(int) - IMAGE).mean())


def test_every_condition_gives_a_file_ingest_decodes_at_the_expected_size():
    sizes = {"resize0.5": (64, 64), "resize1.5": (192, 192), "crop50": (64, 64)}
    suffixes = {"jpeg": ".jpg", "webp": ".webp"}
    for condition in robustness.CONDITIONS:
        if condition == "codec":
            continue
        data, suffix = robustness.apply(condition, IMAGE, seed=1)
        assert suffix == suffixes.get(condition[:4], ".png")
        assert decode_image(data).shape[:2] == sizes.get(condition, (128, 128)), condition
    assert error("jpeg95") < error("jpeg75") < error("jpeg50")
    assert np.array_equal(decode_image(robustness.apply("crop50", IMAGE)[0]), IMAGE[32:96, 32:96])


def test_noise_is_reproducible_and_has_the_stated_strength():
    first, second = (decode_image(robustness.apply("noise2", IMAGE, seed=5)[0]) for _ in range(2))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, decode_image(robustness.apply("noise2", IMAGE, seed=6)[0]))
    assert 1.8 < float((first.astype(float) - IMAGE).std()) < 2.2


def test_codec_round_trip_reaches_the_psnr_of_the_weights_card():
    """Mean PSNR of the round trip over the held-out photos is the card's (measured at training)."""
    with pytest.raises(ValueError, match="round_trip"):
        robustness.apply("codec", IMAGE)
    embedder = Embedder(EmbedSettings(device="cpu"))
    card = json.loads(weights.sidecar(weights.DEFAULT_WEIGHTS).read_text())["meta"]
    psnrs = []
    for name in card["held_out_photos"]:
        image = photos.load(name)
        decoded = decode_image(robustness.apply("codec", image, round_trip=embedder.round_trip)[0])
        assert decoded.shape == image.shape
        psnrs.append(10 * np.log10(255.0 ** 2 / np.mean((decoded.astype(float) - image) ** 2)))
    assert abs(np.mean(psnrs) - card["held_out_trained"]["psnr_db"]) < 0.1, psnrs
    with pytest.raises(ValueError, match="unknown condition"):
        robustness.apply("sharpen", IMAGE)


def test_processed_corpus_keeps_labels_and_takes_the_first_of_each(tmp_path):
    from PIL import Image

    from latentsweep_lab.experiment.robustness import processed_corpus

    lines = ["uri,label,family"]
    for label in ("a", "b"):
        for n in range(3):
            (tmp_path / "src" / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(IMAGE[n * 8:n * 8 + 64, :64]).save(tmp_path / "src" / label / f"{n}.png")
            lines.append(f"{label}/{n}.png,{label},lib-{label}")
    (tmp_path / "src" / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = processed_corpus(tmp_path / "src", tmp_path / "out", "jpeg50", round_trip=None, limit_per_label=2)
    rows = (out / "manifest.csv").read_text().splitlines()
    assert rows == ["uri,label,family", "a/0.jpg,a,lib-a", "a/1.jpg,a,lib-a", "b/0.jpg,b,lib-b", "b/1.jpg,b,lib-b"]
    assert decode_image((out / "b" / "1.jpg").read_bytes()).shape == (64, 64, 3)
