"""The synthetic generator zoo: deterministic, generators differ, families labelled."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from latentsweep_lab.zoo.content import content as corpus_content
from latentsweep_lab.zoo.corpus import CorpusSettings, make_corpus
from latentsweep_lab.zoo.generators import ZOO


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
    from latentsweep_lab.zoo.content import content
    from latentsweep_lab.zoo.generators import Generator

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

    from latentsweep_lab.zoo.generators import Generator, Habit

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

    from latentsweep_lab.zoo.generators import Generator

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


def test_shared_content_renders_the_same_content_for_every_generator(tmp_path, monkeypatch):
    """With ``shared_content`` image i of every generator is made from content i (the content
    function's output, recorded, is identical across generators), and the images show it: once each
    generator's fingerprint is removed by a low-pass (8x8 block means), images of one index correlate
    far more than images of different indices or of the same index without sharing."""
    from latentsweep_lab.zoo import corpus

    assert [corpus.content_index(3, number, True) for number in range(len(ZOO))] == [3] * len(ZOO)
    assert len({corpus.content_index(3, number, False) for number in range(len(ZOO))}) == len(ZOO)
    given = []
    monkeypatch.setattr(corpus, "content", lambda *args: given.append(corpus_content(*args)) or given[-1])
    generators = ("gan-nearest", "gan-tconv", "dm-linear")
    for shared in (True, False):
        given.clear()
        make_corpus(tmp_path / str(shared), CorpusSettings(per_generator=4, size=64, habit=0.0,
                                                           shared_content=shared, generators=generators))
        by_index = [given[i * len(generators):(i + 1) * len(generators)] for i in range(4)]
        assert all(np.array_equal(first, other) == shared for first, *rest in by_index for other in rest)
    assert "same content" in (tmp_path / "True" / "README.txt").read_text()

    def low(shared, generator, index):
        image = np.asarray(Image.open(tmp_path / str(shared) / generator / f"{index:05d}.png"), float)
        return image.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3)).ravel()

    def mean_correlation(pairs):
        return np.mean([np.corrcoef(low(*a), low(*b))[0, 1] for a, b in pairs])

    pairs = [(generators[0], other) for other in generators[1:]]
    same = mean_correlation([((True, a, i), (True, b, i)) for a, b in pairs for i in range(4)])
    other = mean_correlation([((True, a, i), (True, b, (i + 1) % 4)) for a, b in pairs for i in range(4)])
    unshared = mean_correlation([((False, a, i), (False, b, i)) for a, b in pairs for i in range(4)])
    assert same > 0.85 and same > max(other, unshared) + 0.3, (same, other, unshared)


def _jpeg_tables() -> dict[int, dict]:
    """Pillow's quantisation tables for every quality (to recognise the quality a file was saved at)."""
    import io

    tables = {}
    for quality in range(1, 101):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buffer, "JPEG", quality=quality)
        tables[quality] = Image.open(buffer).quantization
    return tables


def test_software_corpus_is_deterministic_and_labelled(tmp_path):
    from latentsweep_lab.zoo.software import REAL, SPLITS, SoftwareSettings, make_software_corpus

    TUNING, HELD_OUT = SPLITS["tuning"].classes, SPLITS["held-out"].classes  # with the real class
    assert TUNING[-1] == HELD_OUT[-1] == REAL and not REAL.steps and REAL.library == "real"
    settings = SoftwareSettings(split="tuning", per_class=2, size=48)
    assert make_software_corpus(tmp_path / "a", settings) == 2 * len(TUNING)
    make_software_corpus(tmp_path / "b", settings)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    lines = (tmp_path / "a" / "manifest.csv").read_text().splitlines()
    assert lines[0] == "uri,label,family" and len(lines) == 1 + 2 * len(TUNING)
    for line in lines[1:]:
        uri, label, family = line.split(",")
        assert uri.startswith(label + "/") and uri.endswith(".png")
        assert Image.open(tmp_path / "a" / uri).size == (48, 48)
    assert {line.split(",")[1]: line.split(",")[2] for line in lines[1:]} == {c.name: c.library for c in TUNING}
    assert "TUNING" in (tmp_path / "a" / "README.txt").read_text()
    assert len(set(digests(tmp_path / "a").values())) == 2 * len(TUNING)  # every image its own
    make_software_corpus(tmp_path / "c", SoftwareSettings(split="tuning", per_class=2, size=48, seed=1))
    assert set(digests(tmp_path / "c").values()).isdisjoint(digests(tmp_path / "a").values())

    jpeg = SoftwareSettings(split="held-out", per_class=3, size=48, jpeg=(80, 95))
    assert make_software_corpus(tmp_path / "j", jpeg) == 3 * len(HELD_OUT)
    make_software_corpus(tmp_path / "k", jpeg)
    files = sorted((tmp_path / "j").rglob("*.jpg"))
    assert len(files) == 3 * len(HELD_OUT) and not list((tmp_path / "j").rglob("*.png"))
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "k").rglob("*.jpg"))]
    tables = _jpeg_tables()
    qualities = [next(q for q, table in tables.items() if table == Image.open(f).quantization) for f in files]
    assert all(80 <= q <= 95 for q in qualities) and len(set(qualities)) > 3, qualities  # drawn per image
    readme = (tmp_path / "j" / "README.txt").read_text()
    assert "HELD-OUT" in readme and "80-95" in readme and "real (real): crop 48 px, then nothing" in readme


def test_real_class_is_the_untouched_crop_and_leaves_the_other_classes_as_they_were(tmp_path):
    """``real`` renders the content crop itself; it comes last, so every other class draws the same
    content as without it; at 192 px a crop too large for a photo (the tuning split's ``page``, 191
    px high) is drawn again among the photos it fits, never an error."""
    from latentsweep_lab.zoo.software import REAL, SPLITS, content, render

    loaded: dict = {}
    crop = content("held-out", len(SPLITS["held-out"].classes) - 1, 3, 48, 0, loaded)
    assert np.array_equal(render(REAL, crop), crop)
    number = len(SPLITS["tuning"].classes) - 1
    fits = {}
    for index in range(60):
        big = content("tuning", number, index, 192, 0, fits)
        assert big.shape == (192, 192, 3)
    assert "page" in fits and min(fits["page"].shape[:2]) < 192  # drawn at least once, then drawn again


def test_software_splits_are_disjoint():
    """Held-out software, kernels' calls and photos never appear in the tuning split, and the content
    of each split is drawn only from its own photos."""
    from latentsweep_lab import photos
    from latentsweep_lab.zoo.software import HELD_OUT, SPLITS, TUNING, content

    assert len(TUNING) == len(HELD_OUT) == 8  # the software classes; both splits add ``real`` to them
    assert {c.name for c in TUNING}.isdisjoint(c.name for c in HELD_OUT)
    assert {c.library for c in TUNING} == {"pillow", "torch"} and {c.library for c in HELD_OUT} == {"skimage", "scipy"}
    assert {s.op for c in TUNING for s in c.steps}.isdisjoint(s.op for c in HELD_OUT for s in c.steps)
    assert {c.factor for c in HELD_OUT} - {c.factor for c in TUNING}  # factors the tuning split never has
    assert set(SPLITS["held-out"].photos) == set(photos.HELD_OUT)
    assert set(SPLITS["tuning"].photos) == set(photos.names("train"))
    assert set(SPLITS["tuning"].photos).isdisjoint(SPLITS["held-out"].photos)
    for split in SPLITS:
        loaded: dict = {}
        for index in range(40):
            content(split, index % 8, index, 24, 0, loaded)
        assert set(loaded) <= set(SPLITS[split].photos) and len(loaded) >= 2, (split, sorted(loaded))
    with pytest.raises(ValueError, match="multiple of 24"):
        from latentsweep_lab.zoo.software import SoftwareSettings, make_software_corpus

        make_software_corpus("/nonexistent", SoftwareSettings(size=100))


def test_software_content_is_a_pixel_exact_crop_and_classes_differ():
    """The content step only crops, flips and rotates (every pixel of the crop is a pixel of the photo);
    the chains are the libraries' own (Pillow's NEAREST x2 repeats pixels, scipy's corner-aligned zoom
    keeps the corners); every class of a split renders the same crop differently."""
    from latentsweep_lab.zoo.software import SPLITS, content, render

    loaded: dict = {}
    crop = content("tuning", 0, 5, 48, 0, loaded)
    (photo,) = loaded.values()
    found = False
    for turned in (np.rot90(crop, k) for k in range(4)):
        for candidate in (turned, turned[:, ::-1]):
            for top, left in np.argwhere((photo == candidate[0, 0]).all(axis=2)):
                window = photo[top:top + 48, left:left + 48]
                found |= window.shape == candidate.shape and np.array_equal(window, candidate)
    assert found
    for split in SPLITS:
        classes = SPLITS[split].classes
        rendered = {c.name: render(c, crop[:c.crop_side(48), :c.crop_side(48)]).astype(int) for c in classes}
        assert {image.shape for image in rendered.values()} == {(48, 48, 3)}
        names = sorted(rendered)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert np.abs(rendered[a] - rendered[b]).mean() > 0.1, (a, b)
    by_name = {c.name: c for split in SPLITS.values() for c in split.classes}
    small = crop[:24, :24]
    assert np.array_equal(render(by_name["pillow-nearest-x2"], small), small.repeat(2, 0).repeat(2, 1))
    zoomed = render(by_name["scipy-zoom-o1-x2"], small)
    assert np.array_equal(zoomed[[0, 0, -1, -1], [0, -1, 0, -1]], small[[0, 0, -1, -1], [0, -1, 0, -1]])


def test_make_corpus_command_software(tmp_path):
    from typer.testing import CliRunner

    from latentsweep.cli import application
    from latentsweep.errors import UsageError

    runner = CliRunner()
    result = runner.invoke(application(), ["make-corpus", str(tmp_path / "s"), "--kind", "software", "--split", "held-out",
                                 "--per-generator", "1", "--size", "48", "--jpeg-range", "80-95"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "s" / "manifest.csv").read_text().splitlines()) == 10  # 8 resizers and real
    assert len(list((tmp_path / "s").rglob("*.jpg"))) == 9
    for bad in (["--size", "50"], ["--split", "test"], ["--jpeg-range", "95"], ["--habit", "0"]):
        result = runner.invoke(application(), ["make-corpus", str(tmp_path / "bad"), "--kind", "software", *bad])
        assert isinstance(result.exception, UsageError), (bad, result.exception)  # exit code 2 from main()
    assert not (tmp_path / "bad" / "manifest.csv").exists()
    result = runner.invoke(application(), ["make-corpus", str(tmp_path / "z"), "--per-generator", "1", "--size", "32",
                                 "--habit", "0", "--shared-content"])
    assert result.exit_code == 0 and "same content" in (tmp_path / "z" / "README.txt").read_text()


def test_semantic_corpus_is_deterministic_and_labelled(tmp_path):
    from latentsweep_lab.zoo.semantic import CLASSES, make_semantic_corpus

    assert make_semantic_corpus(tmp_path / "a", classes=2, per_class=3, size=64) == 6
    make_semantic_corpus(tmp_path / "b", classes=2, per_class=3, size=64)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    lines = (tmp_path / "a" / "manifest.csv").read_text().splitlines()
    assert {line.split(",")[1] for line in lines[1:]} == set(CLASSES[:2])
    assert len(set(digests(tmp_path / "a").values())) == 6  # augmentations differ


def test_pixel_descriptor_sees_high_frequency_energy():
    import torch

    from latentsweep_lab.experiment.pixel_domain import DIMENSIONS, describe

    flat = torch.full((1, 3, 32, 32), 0.5)
    checker = flat + 0.05 * ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 2 - 1).float()
    a, b = describe(flat), describe(checker)
    assert a.shape == (1, DIMENSIONS)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # same means
    assert (b[:, 3:] > a[:, 3:] + 5).any()  # log energy of the high-pass bank jumps


@pytest.mark.experiment
def test_paper_experiment_end_to_end_beats_chance(tmp_path, ray_session):
    """Small run of `latentsweep experiment`: every table is produced through ingest -> index ->
    evaluate, semantic retrieval works, and held-out zoo queries are attributed above chance."""
    import json

    from latentsweep_lab import experiment
    from latentsweep.errors import UsageError
    from latentsweep_lab.experiment.common import vote_accuracy

    settings = experiment.ExperimentSettings(size=128, per_class=6, per_generator=12, queries_per_generator=6,
                                             software_size=48, software_per_class=4, software_queries_per_class=2,
                                             controlled=("zoo-habits", "zoo-shared"))  # robustness, open set:
    # test_robustness.py, test_open_set.py (the held-out software corpus that gates them costs minutes here)
    results = experiment.run(tmp_path, settings, log=lambda message: None)
    assert len(results["table1"]) == 9
    semantic = {(r["classes"], r["features"]): r["top1"] for r in results["table1"]}
    assert semantic[(8, "all")] > 3 / 8  # chance is 1/8
    held_out = {(r["pooling"], r["features"]): r["top1"] for r in results["zoo_rows"] if r["query_set"] == "queries"}
    assert len(held_out) == 2 * len(experiment.ZOO_FEATURES)
    assert held_out[("gap", "y_chroma")] > 2 / 7  # chance is 1/7
    text = (tmp_path / "results.md").read_text()
    assert "SYNTHETIC" in text and "Table 1" in text and "By family (Table 2)" in text
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["size"] == 128
    controlled = {(r["corpus"], r["features"], r["query_set"]): r for r in results["controlled"]}
    assert {key[0] for key in controlled} == set(settings.controlled)
    assert {key[1] for key in controlled} == set(experiment.CONTROLLED_FEATURES)
    assert len(controlled) == len(settings.controlled) * len(experiment.CONTROLLED_FEATURES) * 2
    curve = controlled[("zoo-shared", "fingerprint", "queries")]["reliability"]  # the sweeps' confidence
    assert sum(b["queries"] for b in curve["bins"]) == 7 * settings.queries_per_generator
    assert all(b["low"] <= b["mean_confidence"] <= b["high"] for b in curve["bins"])  # each query in its own bin
    assert "Confidence: is it a probability?" in text
    assert controlled[("zoo-shared", "y_chroma", "queries")]["top1"] > 2 / 7  # chance is 1/7
    one = vote_accuracy(tmp_path / "controlled" / "index" / "zoo-shared" / "y_chroma",
                                   [str(tmp_path / "controlled" / "embeddings" / "zoo-shared" / "reference")], k=1)
    assert round(one["vote_accuracy"], 4) == controlled[("zoo-shared", "y_chroma", "reference")]["top1"]  # a 1-NN vote
    assert "Attribution where content is controlled" in text and "zoo-shared" in text
    # the zoo with habits is the zoo tables' own embeddings: the same held-out queries, the same nearest neighbour
    assert controlled[("zoo-habits", "y_chroma", "queries")]["top1"] == held_out[("gap", "y_chroma")]
    assert not (tmp_path / "controlled" / "embeddings" / "zoo-habits").exists()
    with pytest.raises(UsageError, match="other settings"):  # a folder never mixes two experiments
        experiment.run(tmp_path, experiment.ExperimentSettings.quick(), log=lambda message: None)
    rerun = experiment.run(tmp_path, settings, log=lambda message: None)  # resumes: same numbers
    assert rerun["table1"] == results["table1"] and rerun["zoo_rows"] == results["zoo_rows"]
    assert rerun["controlled"] == results["controlled"]


def test_experiment_command_takes_the_settings_defaults_and_what_is_given(tmp_path, monkeypatch):
    """Options left out are ExperimentSettings' own defaults (one place for them), --quick its tiny
    sizes; options given win either way; a bad software size is one usage error before any run."""
    from typer.testing import CliRunner

    from latentsweep_lab import experiment
    from latentsweep.cli import application
    from latentsweep.errors import UsageError

    seen = []
    monkeypatch.setattr(experiment, "run", lambda out, settings, log: seen.append(settings))
    runner = CliRunner()
    assert runner.invoke(application(), ["experiment", "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(application(), ["experiment", "--out", str(tmp_path / "b"), "--quick", "--habit", "0",
                               "--software-queries-per-class", "3"]).exit_code == 0
    assert seen[0] == experiment.ExperimentSettings()
    assert seen[1].size == experiment.ExperimentSettings.quick().size and seen[1].habit == 0.0
    assert seen[1].software_queries_per_class == 3
    bad = runner.invoke(application(), ["experiment", "--out", str(tmp_path / "c"), "--software-size", "100"])
    assert isinstance(bad.exception, UsageError) and len(seen) == 2
