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

``--end-to-end N``: instead, the whole commands as a user runs them, each a fresh process (its own local
Ray): ``latentsweep compress`` of N PNG crops (its default, the forensic field on), then ``latentsweep ingest``
of the PNGs and of the ``.jai`` files, ``--feature-set 2lat`` and ingest's other defaults, ``--repeats``
times in turn (the order swapped every repeat, after one uncounted pair), each ratio from one pair. Its
rows replace the end-to-end rows of the results file and keep the others.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
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


def bitstream_stages(paths: list[Path], codec, batch: int) -> tuple[dict[str, float], int]:
    """Seconds a bitstream spends in each stage of ``BitstreamCodec.latents_batch`` (summed over ``paths``,
    in batches of ``batch`` as ingest runs them; the benchmark's files are of one size, one batch each), and
    how many files the float32 levels failed, which were decoded again at the float64 levels."""
    import torch

    from latentsweep.bitstream import coding
    from latentsweep.bitstream.codec import BRANCHES

    spent = dict.fromkeys(("container + z_hat decoding", "hyper- and scale decoders (float32, batched)",
                           "residual decoding (float32 levels; float64 levels where they fail)",
                           "latent prediction (batched)"), 0.0)
    again = 0

    def tick(name: str, started: float) -> float:
        now = time.perf_counter()
        spent[name] += now - started
        return now

    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            now = time.perf_counter()
            parsed = [codec._decode_z(path.read_bytes(), None, False) for path in paths[start:start + batch]]
            now = tick("container + z_hat decoding", now)
            hyper = codec._hyper([z_hats for _, z_hats in parsed])
            now = tick("hyper- and scale decoders (float32, batched)", now)
            symbols = codec._decode_residuals(parsed, hyper)
            now = tick("residual decoding (float32 levels; float64 levels where they fail)", now)
            codec._predict(symbols, hyper)
            tick("latent prediction (batched)", now)
            rough = {branch: coding.level_of(hyper[branch]["log_scale"].double().numpy()) for branch in BRANCHES}
            for position, item in enumerate(parsed):
                levels = {branch: rough[branch][position] for branch in BRANCHES}
                again += isinstance(codec._decode_residual(item, levels), Exception)
    return spent, again


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


RESULTS = Path("benchmarks/results/bitstream.json")
END_TO_END = "latentsweep ingest, end to end"  # the "where" of the --end-to-end rows


def command(*args: str) -> float:
    """Seconds of ``latentsweep ARGS`` as a fresh process; a failure stops the benchmark."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "latentsweep", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"latentsweep {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds


def end_to_end(count: int, size: int, repeats: int, ingest_options: list[str], results: Path) -> None:
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-bitstream-"))
    sources = {"PNG": work / "png", ".jai": work / "jai"}
    make_images(sources["PNG"], count, size)
    compress_s = command("compress", str(sources["PNG"]), "--out", str(sources[".jai"]), "-q")
    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for repeat in range(repeats + 1):  # repeat 0 warms the page cache and the bytecode caches
        for name in (list(sources) if repeat % 2 else list(sources)[::-1]):
            source = sources[name]
            took = command("ingest", str(source), "--out", str(work / f"out-{source.name}"), "--overwrite", "-q",
                           "--feature-set", "2lat", *ingest_options)
            if repeat:
                seconds[name].append(took)
    ratios = [jai / png for jai, png in zip(seconds[".jai"], seconds["PNG"])]
    options = " ".join(["--feature-set 2lat", *ingest_options])
    rows = [{"path": f"{name} ingest ({options})", "where": END_TO_END, "images": count,
             "seconds": f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})",
             "img_s": round(count / statistics.median(values), 1),
             "vs_image": "" if name == "PNG" else
             f"{statistics.median(ratios):.3f} of the PNG time ({min(ratios):.3f}-{max(ratios):.3f}), "
             f"{len(ratios)} pairs"}
            for name, values in seconds.items()]
    jai_bytes = np.mean([path.stat().st_size for path in sources[".jai"].glob("*.jai")])
    rows += [{"path": "latentsweep compress (forensic field on, the default)", "where": END_TO_END, "images": count,
              "seconds": f"{compress_s:.1f}", "img_s": round(count / compress_s, 1),
              "vs_image": f"{size}x{size} crops, .jai {jai_bytes:.0f} B"},
             {"path": "load average (1, 5, 15 min): start -> end", "where": END_TO_END, "images": count,
              "seconds": "", "img_s": f"{load_before} -> {os.getloadavg()}", "vs_image": ""}]
    report("bitstream: latentsweep ingest of .jai files against the same images, end to end", rows)
    save(rows, results)
    shutil.rmtree(work, ignore_errors=True)


def save(rows: list[dict], results: Path) -> None:
    """Write ``rows`` to ``results``, keeping the rows there of the other mode (end to end or not) and the end
    to end rows of other image counts."""
    def key(row: dict) -> tuple:
        return (row["where"] == END_TO_END, row["images"] if row["where"] == END_TO_END else None)

    ran = {key(row) for row in rows}
    kept = [row for row in json.loads(results.read_text()) if key(row) not in ran] if results.exists() else []
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(kept + rows, indent=2))


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
    parser.add_argument("--end-to-end", type=int, metavar="N",
                        help="time the whole commands on N images instead (see the module's docstring)")
    parser.add_argument("--repeats", type=int, default=3, help="counted pairs of the --end-to-end runs")
    parser.add_argument("--no-descriptors", action="store_true",
                        help="--end-to-end: ingest both with --no-descriptors (the files keep their field)")
    args = parser.parse_args()
    if args.end_to_end:
        end_to_end(args.end_to_end, args.size, args.repeats, ["--no-descriptors"] if args.no_descriptors else [],
                   RESULTS)
        return
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
    stages, again = bitstream_stages(jais, codec, args.batch)

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
    rows.append({"path": "files decoded again at the float64 levels", "where": "in-process", "images": n,
                 "ms_per_image": "", "img_s": again, "vs_image": f"{again / n:.1%} of files"})
    rows += [{"path": f"bytes per image: {name}", "where": f"{args.size}x{args.size} photo crops", "images": n,
              "ms_per_image": "", "img_s": f"{size:.0f} B ({bpp(size)} bpp)",
              "vs_image": f"{size / png_bytes:.3f} of PNG"}
             for name, size in (("bitstream .jai", jai_bytes), ("PNG", png_bytes), ("JPEG q90 (Pillow)", jpeg))]
    import torch

    rows.append({"path": "torch threads of the in-process rows", "where": "this process", "images": "",
                 "ms_per_image": "", "img_s": torch.get_num_threads(), "vs_image": ""})
    rows.append({"path": "load average (1, 5, 15 min): start -> end", "where": "this machine", "images": "",
                 "ms_per_image": "", "img_s": f"{load_before} -> {os.getloadavg()}", "vs_image": ""})
    report("bitstream: ingest from bitstreams vs images vs the pixel path", rows)
    save(rows, RESULTS)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
