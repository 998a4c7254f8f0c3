"""Encoder throughput: latentsweep's Embedder (colour, padding, bucketing, export, pooling) against a
bare torch forward of the same network on a ready tensor, same images, same run. Also MACs/pixel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import encoder_flops, report, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for half in ([False, True] if device == "cuda" else [False]):
            embedder = Embedder(EmbedSettings(feature_set="all", device=device, half=half, max_batch=args.batch))
            model = embedder.model
            batches = [torch.from_numpy(np.stack(images[i:i + args.batch])).permute(0, 3, 1, 2)
                       .float().div(255).to(device) for i in range(0, len(images), args.batch)]

            def bare():
                with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=half):
                    for batch in batches:
                        model.export(batch)
                if device == "cuda":
                    torch.cuda.synchronize()

            def ours():
                embedder.embed(images)
                if device == "cuda":
                    torch.cuda.synchronize()

            bare()  # warm-up
            bare_seconds, ours_seconds = timed(bare, 2), timed(ours, 2)
            rows.append({"device": device + (" fp16" if half else ""), "images": args.images,
                         "size": args.size, "bare_img_s": round(args.images / bare_seconds, 2),
                         "latentsweep_img_s": round(args.images / ours_seconds, 2),
                         "ratio": round(bare_seconds / ours_seconds, 3)})
    macs = encoder_flops(Embedder(EmbedSettings(device="cpu")).model, args.size) / 2 / args.size**2  # per pixel
    for row in rows:
        row["kMAC_per_px"] = round(macs / 1000, 1)
    report("codec: Embedder vs bare torch forward", rows, Path("benchmarks/results/codec.json"))


if __name__ == "__main__":
    main()
