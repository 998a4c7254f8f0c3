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
