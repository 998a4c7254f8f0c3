"""Ingest cost per image of the learned ``self_description`` column: what an encoder actor pays per
image (the codec's pooled latents, feature set ``all``, and every pixel descriptor) with it and
without it, in the same run, interleaved so both see the same machine load. 256 px crops of the
bundled photos, one torch thread, batches of 8 as ingest's default. The ``describe`` step alone is
reported too: it is the part the column changes.

    .venv/bin/python benchmarks/bench_descriptor_cost.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import make_images  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "descriptor_cost.json"


def main(images: int = 24, rounds: int = 5, size: int = 256, batch: int = 8) -> dict:
    import tempfile

    import torch

    from latentsweep import descriptors
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import decode_image

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        crops = [decode_image(path.read_bytes()) for path in make_images(Path(folder), images, size)]
    embedder = Embedder(EmbedSettings(feature_set="all", device="cpu", max_batch=batch))
    everything = dict(descriptors._FUNCTIONS)
    without = {name: function for name, function in everything.items() if name != "self_description"}
    seconds = {(step, arm): [] for step in ("ingest", "describe") for arm in ("without", "with")}

    def describe_all() -> float:
        started = time.perf_counter()
        for image in crops:
            descriptors.describe(image)
        return time.perf_counter() - started

    try:
        embedder.embed(crops[:batch])
        describe_all()  # warm-up: weights loaded, FFT plans made
        arms = [("without", without), ("with", everything)]
        for round_ in range(rounds):
            for arm, functions in arms[::1 if round_ % 2 else -1]:  # alternate which goes first
                descriptors._FUNCTIONS = functions
                started = time.perf_counter()
                for start in range(0, len(crops), batch):
                    embedder.embed(crops[start:start + batch])
                codec = time.perf_counter() - started
                describing = describe_all()
                seconds["ingest", arm].append((codec + describing) / len(crops))
                seconds["describe", arm].append(describing / len(crops))
    finally:
        descriptors._FUNCTIONS = everything
    median = {key: float(np.median(values)) for key, values in seconds.items()}
    result = {"images": images, "size": size, "rounds": rounds, "threads": 1, "batch": batch,
              **{f"{step}_{arm}_ms": round(1000 * median[step, arm], 2) for step, arm in median},
              "ingest_ratio": round(median["ingest", "with"] / median["ingest", "without"], 3),
              "describe_ratio": round(median["describe", "with"] / median["describe", "without"], 3)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
