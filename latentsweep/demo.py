"""The main job on the embedded default: local Ray, local folders, CPU.

Makes a small labelled corpus from the bundled photos, ingests it with local Ray and reports what
landed. Later stages (index, sweep) join this job as they land.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentsweep import photos

DEMO_PHOTOS = ("astronaut", "chelsea", "rocket", "coffee")


def make_corpus(root: Path, per_label: int = 6, size: int = 96, seed: int = 0) -> int:
    """``root/<photo>/<n>.png``: random crops of each bundled photo (class = source photo)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    count = 0
    for name in DEMO_PHOTOS:
        image = photos.load(name)
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            top = rng.integers(image.shape[0] - size + 1)
            left = rng.integers(image.shape[1] - size + 1)
            Image.fromarray(image[top:top + size, left:left + size]).save(root / name / f"{n:03d}.png")
            count += 1
    return count


def run(out: Path, log=print) -> int:
    from latentsweep.codec.embed import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run as ingest

    corpus = out / "corpus"
    log(f"demo: writing a labelled corpus of {make_corpus(corpus)} crops of bundled photos to {corpus}")
    summary = ingest(IngestJob(str(corpus), str(out / "embeddings"), EmbedSettings(feature_set="all"),
                               shard_size=8, labels_from_folders=True))
    log(f"demo: ingest embedded {summary.embedded}/{summary.inputs} images in {summary.shards} shards "
        f"({summary.shards_already_done} already done) in {summary.seconds:.1f} s, "
        f"{summary.images_per_second:.2f} images/s, errors {summary.errors or 'none'}")
    log(f"demo: embeddings in {out / 'embeddings'}/embeddings/, summary in {out / 'embeddings'}/summary.json")
    return summary.failed
