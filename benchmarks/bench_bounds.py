"""Physical bounds of this machine, and how close each stage's bare kernel comes to them.

Measured in one run: the plain-matmul GFLOP/s of torch (all threads), the memory read bandwidth
(numpy sum over 1 GiB), the decode rate of the image files (Pillow, one core), the encoder's FLOPs
per image (torch's FLOP counter) and so its compute bound, exact flat search against
``max(FLOPs / GFLOP/s, bytes streamed / bandwidth)``, and the latent path against the pixel path per
image (the paper's efficiency claim: the pixel path runs the same encoder plus the decoder).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import encoder_flops, make_images, report, timed  # noqa: E402


def matmul_gflops(n: int = 2048) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b  # warm-up
    return 2 * n**3 / timed(lambda: a @ b, 5) / 1e9


def read_bandwidth_gbs(size: int = 1 << 30) -> float:
    data = np.ones(size // 4, np.float32)
    data.sum()
    return size / timed(data.sum, 5) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128, help="image side, as in bench_ingest")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--references", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    args = parser.parse_args()

    import faiss
    from PIL import Image

    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep_lab.experiment.pixel_domain import PixelBaseline

    cores = os.cpu_count() or 1
    gflops, bandwidth = matmul_gflops(), read_bandwidth_gbs()
    rows = [{"measure": "plain matmul (torch fp32, all threads)", "measured": f"{gflops:.1f} GFLOP/s",
             "bound": "-", "fraction_of_bound": "-"},
            {"measure": "memory read bandwidth (numpy sum, 1 GiB)", "measured": f"{bandwidth:.1f} GB/s",
             "bound": "-", "fraction_of_bound": "-"}]

    paths = make_images(Path(tempfile.mkdtemp(prefix="bench-bounds-")), args.images, args.size)
    blobs = [path.read_bytes() for path in paths]
    decode = timed(lambda: [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs], 3)
    decode_rate = args.images / decode
    rows.append({"measure": f"PNG decode {args.size}px (Pillow, 1 core)", "measured": f"{decode_rate:.0f} img/s",
                 "bound": f"{decode_rate * cores:.0f} img/s on {cores} cores", "fraction_of_bound": "-"})

    embedder = Embedder(EmbedSettings(feature_set="all", device="cpu", max_batch=args.batch))
    flops = encoder_flops(embedder.model, args.size)
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    embedder.embed(images[:args.batch])
    encode = timed(lambda: embedder.embed(images), 2)
    compute_bound = gflops * 1e9 / flops
    rows.append({"measure": f"encoder + pooling {args.size}px ({flops / 1e9:.2f} GFLOP/img)",
                 "measured": f"{args.images / encode:.1f} img/s", "bound": f"{compute_bound:.1f} img/s (matmul rate)",
                 "fraction_of_bound": round(args.images / encode / compute_bound, 3)})
    ingest_bound = min(compute_bound, decode_rate * cores)
    rows.append({"measure": "ingest (decode + encode) bound", "measured": "see bench_ingest",
                 "bound": f"{ingest_bound:.1f} img/s", "fraction_of_bound": "-"})

    rng = np.random.default_rng(0)
    dim = 256
    reference = rng.standard_normal((args.references, dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(reference)
    index.search(queries[:100], 10)
    search = timed(lambda: index.search(queries, 10), 2)
    search_flops = 2.0 * args.queries * args.references * dim
    block = 4096  # FAISS streams the reference matrix once per block of queries (BLAS GEMM tiles)
    streamed = reference.nbytes * -(-args.queries // block)
    bound = max(search_flops / (gflops * 1e9), streamed / (bandwidth * 1e9))
    rows.append({"measure": f"flat search {args.queries // 1000}k x {args.references // 1000}k x {dim} (bare FAISS)",
                 "measured": f"{args.queries / search:.0f} q/s", "bound": f"{args.queries / bound:.0f} q/s",
                 "fraction_of_bound": round(bound / search, 3)})

    same_size = [image for image in images if image.shape == images[0].shape]
    pixel = PixelBaseline(embedder)
    pixel.embed(same_size[:args.batch])
    latent_s = timed(lambda: embedder.embed(same_size), 2) / len(same_size)
    pixel_s = timed(lambda: pixel.embed(same_size), 2) / len(same_size)
    rows.append({"measure": "latent path vs pixel path per image", "measured": f"{latent_s * 1e3:.1f} vs "
                 f"{pixel_s * 1e3:.1f} ms", "bound": "-", "fraction_of_bound": f"pixel/latent {pixel_s / latent_s:.2f}x"})
    report(f"physical bounds (torch {torch.__version__}, {torch.get_num_threads()} threads, faiss {faiss.__version__})",
           rows, Path("benchmarks/results/bounds.json"))


if __name__ == "__main__":
    main()
