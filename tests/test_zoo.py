"""The synthetic generator zoo: deterministic, generators differ, families labelled."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from latentsweep.zoo.corpus import CorpusSettings, make_corpus
from latentsweep.zoo.generators import ZOO


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_zoo_is_deterministic_and_labelled(tmp_path):
    settings = CorpusSettings(per_generator=2, size=64)
    assert make_corpus(tmp_path / "a", settings) == 14
    make_corpus(tmp_path / "b", settings)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    lines = (tmp_path / "a" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "uri,label,family" and len(lines) == 15
    families = {line.split(",")[1]: line.split(",")[2] for line in lines[1:]}
    assert families == {spec.name: spec.family for spec in ZOO}
    assert set(families.values()) == {"gan", "diffusion"} and len(families) >= 7
    assert "SYNTHETIC" in (tmp_path / "a" / "README.txt").read_text()
    other = CorpusSettings(per_generator=2, size=64, seed=1)
    make_corpus(tmp_path / "c", other)
    assert set(digests(tmp_path / "c").values()).isdisjoint(digests(tmp_path / "a").values())


def test_generators_differ_on_the_same_content(tmp_path):
    from latentsweep.zoo.content import content
    from latentsweep.zoo.generators import Generator

    base = content(0, 64, 0, {})
    images = [Generator(spec).render(base, noise_seed=0).astype(int) for spec in ZOO]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 0.5, (ZOO[i].name, ZOO[j].name)
        assert np.abs(images[i] - base * 255).mean() < 25  # still the content


def test_post_processing_variants(tmp_path):
    make_corpus(tmp_path, CorpusSettings(per_generator=1, size=64, jpeg_quality=70, resize=0.5,
                                         generators=("gan-tconv",)))
    (path,) = list((tmp_path / "gan-tconv").iterdir())
    assert path.suffix == ".jpg" and Image.open(path).size == (32, 32)


def test_habits_are_seeded_and_zero_is_neutral():
    import torch

    from latentsweep.zoo.generators import Generator, Habit

    neutral = Habit.draw(np.random.default_rng(0), 0.0)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(neutral.apply(x), x, atol=1e-6)
    habits = {Generator(spec).habit for spec in ZOO}
    assert len(habits) == len(ZOO)  # every generator has its own look
    assert Generator(ZOO[0]).habit == Generator(ZOO[0]).habit


def test_gan_upsamplings_leave_their_own_spectral_trace():
    """The same feature map, upsampled by each GAN-like generator: brightness is kept, and the energy
    at the Nyquist frequency orders as the upsamplings predict (learned kernels with uneven taps leave
    the most, bilinear little, nearest none: its 2-tap box has a zero there)."""
    import torch

    from latentsweep.zoo.generators import Generator

    torch.manual_seed(0)
    low = torch.rand(1, 3, 16, 16)
    nyquist = {}
    for spec in ZOO[:4]:
        up = Generator(spec).upsample(low)
        assert up.shape == (1, 3, 32, 32)
        assert abs(up.mean().item() - low.mean().item()) < 0.02
        inner = up[..., 4:-4, 4:-4]
        nyquist[spec.kind] = torch.fft.fft2(inner - inner.mean()).abs()[..., 12, :].mean().item()
    assert nyquist["nearest"] < 1e-4 < nyquist["bilinear"]
    assert min(nyquist["tconv"], nyquist["pixelshuffle"]) > 2 * nyquist["bilinear"]


def test_semantic_corpus_is_deterministic_and_labelled(tmp_path):
    from latentsweep.zoo.semantic import CLASSES, make_semantic_corpus

    assert make_semantic_corpus(tmp_path / "a", classes=2, per_class=3, size=64) == 6
    make_semantic_corpus(tmp_path / "b", classes=2, per_class=3, size=64)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    lines = (tmp_path / "a" / "manifest.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in lines[1:]} == set(CLASSES[:2])
    assert len(set(digests(tmp_path / "a").values())) == 6  # augmentations differ


def test_pixel_descriptor_sees_high_frequency_energy():
    import torch

    from latentsweep.codec.pixel_baseline import DIMENSIONS, describe

    flat = torch.full((1, 3, 32, 32), 0.5)
    checker = flat + 0.05 * ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 2 - 1).float()
    a, b = describe(flat), describe(checker)
    assert a.shape == (1, DIMENSIONS)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # same means
    assert (b[:, 3:] > a[:, 3:] + 5).any()  # log energy of the high-pass bank jumps


def test_paper_experiment_end_to_end_beats_chance(tmp_path, ray_session):
    """Small run of `latentsweep experiment`: every table is produced through ingest -> index ->
    evaluate, semantic retrieval works, and held-out zoo queries are attributed above chance."""
    import json

    from latentsweep import experiment

    settings = experiment.ExperimentSettings(size=128, per_class=6, per_generator=12, queries_per_generator=6)
    results = experiment.run(tmp_path, settings, log=lambda message: None)
    assert len(results["table1"]) == 9
    semantic = {(r["classes"], r["features"]): r["top1"] for r in results["table1"]}
    assert semantic[(8, "all")] > 3 / 8  # chance is 1/8
    held_out = {(r["pooling"], r["features"]): r["top1"] for r in results["zoo_rows"] if r["query_set"] == "queries"}
    assert len(held_out) == 2 * len(experiment.ZOO_FEATURES)
    assert held_out[("gap", "y_chroma")] > 2 / 7  # chance is 1/7
    assert results["pixel_baseline"]["pixel_seconds_per_image"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "SYNTHETIC" in text and "Table 1" in text and "By family (Table 2)" in text
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["size"] == 128
    rerun = experiment.run(tmp_path, settings, log=lambda message: None)  # resumes: same numbers
    assert rerun["table1"] == results["table1"] and rerun["zoo_rows"] == results["zoo_rows"]
