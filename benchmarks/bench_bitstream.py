"""Bitstream ingest against image ingest and the pixel path, and bytes per image, same images, one run.

Three paths from a stored file to a vector, timed per image with the stage functions the ingest
worker runs (``ingest.decode.fetch`` then ``ingest.encode.Encoder.encode``, batches of ``--batch``):

- image ingest: read the PNG, decode it (Pillow), the analysis transforms and the hyperprior, pool.
- bitstream ingest: read the ``.jai``, check its container, entropy-decode ``z_hat`` and the residuals,
  hyper-decoder and latent prediction only (no analysis, no synthesis), pool.
- the pixel path: read the ``.jai``, decompress it (the same entropy decoding and prediction, then the
  synthesis transforms and YUV -> RGB), and the pixel descriptor of ``codec/pixel_baseline.py``.

Both ingest paths use feature set ``2lat`` (what a bitstream carries that the paper ranks on) and no
pixel descriptors; ``--threads`` sets the in-process rows' torch threads. Then the two ingest paths
again through ``latentsweep ingest`` on local Ray (a warm-up job first; Ray's start-up excluded), and
the bitstream path's own stages (batched as ingest batches them). Bytes per image: the ``.jai`` files
against the PNGs and Pillow's JPEG at quality 90 of the same images. The machine's load average is
recorded with the rows: on a shared machine it moves every figure.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import make_images, report  # noqa: E402

SETTINGS = {"feature_set": "2lat", "device": "cpu", "descriptors": False}


def compress_all(paths: list[Path], out: Path) -> tuple[list[Path], object]:
    from latentsweep.bitstream.codec import BitstreamCodec
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import decode_image

    codec = BitstreamCodec(Embedder(EmbedSettings(**SETTINGS)))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        data, _ = codec.compress(decode_image(path.read_bytes()), "bench")
        target = out / (path.stem + ".jai")
        target.write_bytes(data)
        written.append(target)
    return written, codec


def jpeg_bytes(path: Path, quality: int = 90) -> int:
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return len(buffer.getvalue())


def in_process(paths: list[Path], batch: int) -> float:
    """Seconds for fetch + Encoder.encode over ``paths`` (PNGs or .jai), batches as a shard worker."""
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import fetch
    from latentsweep.ingest.encode import Encoder

    encoder = Encoder(EmbedSettings(max_batch=batch, **SETTINGS))
    encoder.encode([fetch(str(paths[0]))])  # warm-up: lazy imports, the entropy tables
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        items = [fetch(str(path)) for path in paths[start:start + batch]]
        encoder.encode(items)
        assert not any(item.error_type for item in items), [item.message for item in items if item.error_type]
    return time.perf_counter() - started


def pixel_path(paths: list[Path], codec) -> float:
    """Seconds for read + decompress (entropy decoding, prediction, synthesis) + pixel descriptor."""
    import torch

    from latentsweep_lab.experiment.pixel_domain import describe

    def one(path: Path) -> np.ndarray:
        rgb = codec.decompress(path.read_bytes())
        with torch.inference_mode():
            return describe(torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255.0)).numpy()

    one(paths[0])
    started = time.perf_counter()
    for path in paths:
        one(path)
    return time.perf_counter() - started


def bitstream_stages(paths: list[Path], codec, batch: int) -> dict[str, float]:
    """Seconds a bitstream spends in each stage of ``BitstreamCodec.latents_batch`` (summed over ``paths``,
    in batches of ``batch`` as ingest runs them; the benchmark's files are of one size, one batch each)."""
    import torch

    from latentsweep.bitstream import coding
    from latentsweep.bitstream.codec import BRANCHES, STREAMS, _words

    spent = dict.fromkeys(("container + z_hat decoding", "scale levels (float64, batched)", "residual decoding",
                           "hyper-decoder + prediction (batched)"), 0.0)

    def tick(name: str, started: float) -> float:
        now = time.perf_counter()
        spent[name] += now - started
        return now

    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            now = time.perf_counter()
            parsed = [codec._decode_z(path.read_bytes(), None, False) for path in paths[start:start + batch]]
            now = tick("container + z_hat decoding", now)
            levels = {branch: codec.levels(branch, torch.cat([z_hats[branch] for _, z_hats in parsed]))
                      for branch in BRANCHES}
            now = tick("scale levels (float64, batched)", now)
            symbols = []
            for position, (bitstream, z_hats) in enumerate(parsed):
                decoded = {}
                for branch in BRANCHES:
                    words = _words(bitstream.streams[STREAMS.index(("r", branch))])
                    residual = coding.decode_residual(codec.models, words, levels[branch][position])
                    decoded.update({f"z_hat_{branch}": z_hats[branch],
                                    f"residual_quant_{branch}": torch.from_numpy(residual).float()[None]})
                symbols.append(decoded)
            now = tick("residual decoding", now)
            codec._predict(symbols)
            tick("hyper-decoder + prediction (batched)", now)
    return spent


def through_ray(source: Path, out: Path, batch: int, shard_size: int) -> float:
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = run(IngestJob(str(source), str(out), EmbedSettings(max_batch=batch, **SETTINGS),
                            shard_size=shard_size, quiet=True))
    seconds = time.perf_counter() - started
    assert summary.embedded == summary.inputs, summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="in-process rows only")
    parser.add_argument("--shard-size", type=int, default=256,
                        help="items per shard of the Ray rows (ingest's default)")
    parser.add_argument("--threads", type=int, help="torch threads of the in-process rows (a CPU shard worker "
                                                     "runs one per core; default: torch's own, every core)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-bitstream-"))
    pngs = make_images(work / "png", args.images, args.size)
    jais, codec = compress_all(pngs, work / "jai")
    n = args.images

    image_s = in_process(pngs, args.batch)
    bitstream_s = in_process(jais, args.batch)
    pixel_s = pixel_path(jais, codec)
    stages = bitstream_stages(jais, codec, args.batch)

    png_bytes = np.mean([p.stat().st_size for p in pngs])
    jai_bytes = np.mean([p.stat().st_size for p in jais])
    jpeg = np.mean([jpeg_bytes(p) for p in pngs])
    bpp = lambda size: round(8 * size / args.size**2, 3)  # noqa: E731
    rows = [
        {"path": "image ingest (PNG decode + analysis + hyperprior)", "where": "in-process", "images": n,
         "ms_per_image": round(1000 * image_s / n, 1), "img_s": round(n / image_s, 2), "vs_image": 1.0},
        {"path": "bitstream ingest (entropy decoding + hyperprior)", "where": "in-process", "images": n,
         "ms_per_image": round(1000 * bitstream_s / n, 1), "img_s": round(n / bitstream_s, 2),
         "vs_image": round(image_s / bitstream_s, 2)},
        {"path": "pixel path (decompress + synthesis + pixel descriptor)", "where": "in-process", "images": n,
         "ms_per_image": round(1000 * pixel_s / n, 1), "img_s": round(n / pixel_s, 2),
         "vs_image": round(image_s / pixel_s, 2)},
    ]
    if not args.no_ray:
        from latentsweep.cluster import connect

        connect(quiet=True)
        through_ray(work / "png", work / "warm", args.batch, args.shard_size)  # Ray worker imports, once per machine
        ray_image = through_ray(work / "png", work / "out-png", args.batch, args.shard_size)
        ray_bitstream = through_ray(work / "jai", work / "out-jai", args.batch, args.shard_size)
        rows += [
            {"path": "image ingest", "where": "latentsweep ingest, local Ray", "images": n,
             "ms_per_image": round(1000 * ray_image / n, 1), "img_s": round(n / ray_image, 2),
             "vs_image": 1.0},
            {"path": "bitstream ingest", "where": "latentsweep ingest, local Ray", "images": n,
             "ms_per_image": round(1000 * ray_bitstream / n, 1), "img_s": round(n / ray_bitstream, 2),
             "vs_image": round(ray_image / ray_bitstream, 2)},
        ]
    total = sum(stages.values())
    rows += [{"path": f"bitstream stage: {name}", "where": "in-process", "images": n,
              "ms_per_image": round(1000 * seconds / n, 2), "img_s": "", "vs_image": f"{seconds / total:.0%} of stages"}
             for name, seconds in stages.items()]
    rows += [{"path": f"bytes per image: {name}", "where": f"{args.size}x{args.size} photo crops", "images": n,
              "ms_per_image": "", "img_s": f"{size:.0f} B ({bpp(size)} bpp)",
              "vs_image": f"{size / png_bytes:.3f} of PNG"}
             for name, size in (("bitstream .jai", jai_bytes), ("PNG", png_bytes), ("JPEG q90 (Pillow)", jpeg))]
    import torch

    rows.append({"path": "torch threads of the in-process rows", "where": "this process", "images": "",
                 "ms_per_image": "", "img_s": torch.get_num_threads(), "vs_image": ""})
    rows.append({"path": "load average (1, 5, 15 min): start -> end", "where": "this machine", "images": "",
                 "ms_per_image": "", "img_s": f"{load_before} -> {os.getloadavg()}", "vs_image": ""})
    report("bitstream: ingest from bitstreams vs images vs the pixel path", rows,
           Path("benchmarks/results/bitstream.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
