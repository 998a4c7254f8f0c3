"""Held-out benchmark of the pixel descriptors on software the project never used anywhere.

Classes are resizers of OpenCV, libvips (pyvips) and SimpleITK: no Pillow, torch, scikit-image or
scipy resizer (the real-software corpus, ``zoo/software.py``), none of the formation recipes
(``codec/formation.py``), and nothing the ``self_description`` filters were trained on (real photos
only). Content: pixel-exact crops (random photo, position, flip and 90-degree rotation; no
resampling) of real photos the codec and the filters never saw: ``china`` and ``flower`` (bundled with
scikit-learn) and ``grace_hopper`` (bundled with matplotlib), used nowhere else in the project, and
scikit-image's ``coffee`` and ``rocket`` (the codec's held-out photos). Two corpora of 8 classes x 30
images: ``A`` at 256 px and ``B`` at 288 px; each clean (PNG) and after Pillow's JPEG at a quality drawn
per image in 80-95. Protocol: the project's CLI, as users run it: ``ingest --labels-from-folders``,
``index build --features F``, ``evaluate`` (leave-one-out Top-1 over the index's own references),
for the baseline ``residual_spectrum``, ``fingerprint``, ``self_description`` and the fusion
``fingerprint,self_description``, all in the same run. Also the ingest cost: the time of
``descriptors.describe`` per 256 px image with and without ``self_description`` (one thread).

The corpus step needs opencv-python-headless, pyvips (with pyvips-binary) and SimpleITK; they are
not project dependencies, so it runs under ``--corpus-python`` (a Python that has them; the project's
Python by default):

    python3 -m venv /tmp/heldout && /tmp/heldout/bin/pip install opencv-python-headless pyvips \\
        pyvips-binary simpleitk numpy pillow
    .venv/bin/python benchmarks/bench_descriptor_heldout.py --corpus-python /tmp/heldout/bin/python
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PHOTOS = ("china", "flower", "grace_hopper", "coffee", "rocket")
FEATURES = ("residual_spectrum", "fingerprint", "self_description", "fingerprint,self_description")
JPEG = (80, 95)

# corpus -> (output side, classes); a class is (name, family, steps); a step is (library, kernel, crop -> size)
# given as the crop side that the step's input has; sides below make every factor exact.
CORPORA = {
    "A": (256, (
        ("opencv-linear-x2", "opencv", (("cv2", "INTER_LINEAR", 128),)),
        ("opencv-cubic-x1.33", "opencv", (("cv2", "INTER_CUBIC", 192),)),
        ("opencv-lanczos4-x1.6", "opencv", (("cv2", "INTER_LANCZOS4", 160),)),
        ("opencv-area-x0.5-cubic-x1.6", "opencv", (("cv2", "INTER_AREA", 320), ("cv2", "INTER_CUBIC", 160))),
        ("vips-mitchell-x2", "vips", (("vips-resize", "mitchell", 128),)),
        ("vips-lanczos3-x1.33", "vips", (("vips-resize", "lanczos3", 192),)),
        ("vips-lbb-x1.6", "vips", (("vips-affine", "lbb", 160),)),
        ("sitk-bspline-x2", "simpleitk", (("sitk", "sitkBSpline", 128),)),
    )),
    "B": (288, (
        ("opencv-linear-exact-x1.5", "opencv", (("cv2", "INTER_LINEAR_EXACT", 192),)),
        ("opencv-nearest-exact-x2.25", "opencv", (("cv2", "INTER_NEAREST_EXACT", 128),)),
        ("vips-cubic-x1.8", "vips", (("vips-resize", "cubic", 160),)),
        ("vips-mks2021-x1.5", "vips", (("vips-resize", "mks2021", 192),)),
        ("vips-nohalo-x2", "vips", (("vips-affine", "nohalo", 144),)),
        ("sitk-linear-x3", "simpleitk", (("sitk", "sitkLinear", 96),)),
        ("sitk-lanczos-x1.5", "simpleitk", (("sitk", "sitkLanczosWindowedSinc", 192),)),
        ("sitk-gaussian-x2.25", "simpleitk", (("sitk", "sitkGaussian", 128),)),
    )),
}


# ---- corpus (runs under --corpus-python: numpy, Pillow, cv2, pyvips, SimpleITK) ----------------

def _resize(image: np.ndarray, library: str, kernel: str, side: int) -> np.ndarray:
    """uint8 (s, s, 3) -> uint8 (side, side, 3) by ``library``'s resizer with ``kernel``."""
    source = image.shape[0]
    if library == "cv2":
        import cv2

        return cv2.resize(image, (side, side), interpolation=getattr(cv2, kernel))
    if library in ("vips-resize", "vips-affine"):
        import pyvips

        vips = pyvips.Image.new_from_memory(np.ascontiguousarray(image).tobytes(), source, source, 3, "uchar")
        scale = side / source
        if library == "vips-resize":
            out = vips.resize(scale, kernel=kernel)
        else:
            out = vips.affine([scale, 0, 0, scale], interpolate=pyvips.Interpolate.new(kernel))
        array = np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(out.height, out.width, out.bands))
        assert array.shape[0] >= side and array.shape[1] >= side, (library, kernel, array.shape)
        return np.ascontiguousarray(array[:side, :side, :3])
    if library == "sitk":
        import SimpleITK as sitk

        channels = []
        for channel in range(3):
            plane = sitk.GetImageFromArray(image[:, :, channel].astype(np.float32))
            resample = sitk.ResampleImageFilter()
            resample.SetSize([side, side])
            spacing = source / side
            resample.SetOutputSpacing([spacing, spacing])
            resample.SetOutputOrigin([-0.5 + spacing / 2] * 2)  # pixel areas aligned (half-pixel convention)
            resample.SetInterpolator(getattr(sitk, kernel))
            resample.SetUseNearestNeighborExtrapolator(True)
            channels.append(sitk.GetArrayFromImage(resample.Execute(plane)))
        return np.clip(np.stack(channels, -1), 0, 255).round().astype(np.uint8)
    raise ValueError(library)


def _content(photos: dict, rng: np.random.Generator, side: int) -> np.ndarray:
    fitting = [name for name in PHOTOS if min(photos[name].shape[:2]) >= side]
    photo = photos[fitting[rng.integers(len(fitting))]]
    top, left = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
    crop = np.rot90(photo[top:top + side, left:left + side], k=int(rng.integers(4)))
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def make_corpora(work: Path, per_class: int, seed: int) -> None:
    from PIL import Image

    photos = {name: np.load(work / "photos" / f"{name}.npy") for name in PHOTOS}
    for code, (corpus, (size, classes)) in enumerate(CORPORA.items()):
        for number, (name, family, steps) in enumerate(classes):
            for index in range(per_class):
                rng = np.random.default_rng([seed, code, number, index])
                image = _content(photos, rng, steps[0][2])
                for position, (library, kernel, _) in enumerate(steps):
                    target = steps[position + 1][2] if position + 1 < len(steps) else size
                    image = _resize(image, library, kernel, target)
                assert image.shape == (size, size, 3), (name, image.shape)
                quality = int(rng.integers(JPEG[0], JPEG[1] + 1))
                for variant in ("clean", "jpeg"):
                    folder = work / "corpora" / f"{corpus}-{variant}" / name
                    folder.mkdir(parents=True, exist_ok=True)
                    if variant == "clean":
                        Image.fromarray(image).save(folder / f"{index:03d}.png")
                    else:
                        Image.fromarray(image).save(folder / f"{index:03d}.jpg", "JPEG", quality=quality)


# ---- the project side ------------------------------------------------------------------------

def save_photos(work: Path) -> None:
    import matplotlib.cbook
    import skimage.data
    import sklearn.datasets
    from PIL import Image

    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    china, flower = sklearn.datasets.load_sample_images().images
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(io.BytesIO(handle.read())).convert("RGB"))
    for name, image in (("china", china), ("flower", flower), ("grace_hopper", hopper),
                        ("coffee", skimage.data.coffee()), ("rocket", skimage.data.rocket())):
        np.save(folder / f"{name}.npy", np.ascontiguousarray(image[:, :, :3]).astype(np.uint8))


def cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "latentsweep", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"latentsweep {' '.join(args)} failed:\n{result.stderr[-3000:]}")


def evaluate_corpus(work: Path, name: str, log) -> dict[str, float]:
    corpus, embeddings = work / "corpora" / name, work / "embeddings" / name
    started = time.monotonic()
    cli("ingest", str(corpus), "--out", str(embeddings), "--labels-from-folders", "--augment", "none",
        "--feature-set", "2lat", "--device", "cpu", "--overwrite", "-q")
    log(f"{name}: ingested in {time.monotonic() - started:.0f} s")
    scores = {}
    for features in FEATURES:
        index, out = work / "index" / name / features, work / "evaluation" / name / features
        shutil.rmtree(index, ignore_errors=True)
        cli("index", "build", str(embeddings), "--out", str(index), "--features", features, "--shards", "1", "-q")
        cli("evaluate", "--index", str(index), "--out", str(out))
        metrics = json.loads((out / "metrics.json").read_text())
        scores[features] = metrics["overall"]["top1"]
        log(f"{name}: {features} top1 {scores[features]:.3f} ({metrics['protocol'].get('queries', '?')} queries)")
    return scores


def describe_cost(repeats: int = 5, images: int = 24) -> dict:
    """Median seconds per 256 px image of ``describe`` with all columns, and without
    ``self_description`` (the columns before it), interleaved so both see the same machine load."""
    import torch

    from latentsweep import descriptors
    from latentsweep_lab import photos

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sources = [photos.load(name) for name in photos.names("train") if min(photos.load(name).shape[:2]) >= 256]
    crops = []
    for _ in range(images):
        photo = sources[rng.integers(len(sources))]
        top, left = rng.integers(photo.shape[0] - 255), rng.integers(photo.shape[1] - 255)
        crops.append(np.ascontiguousarray(photo[top:top + 256, left:left + 256]))
    everything = dict(descriptors._FUNCTIONS)
    before = {name: function for name, function in everything.items() if name != "self_description"}
    timings = {"before": [], "after": []}
    descriptors.describe(crops[0])
    try:
        for _ in range(repeats):
            for label, functions in (("before", before), ("after", everything)):
                descriptors._FUNCTIONS = functions
                started = time.perf_counter()
                for image in crops:
                    descriptors.describe(image)
                timings[label].append((time.perf_counter() - started) / len(crops))
    finally:
        descriptors._FUNCTIONS = everything
    before_s, after_s = float(np.median(timings["before"])), float(np.median(timings["after"]))
    return {"before_ms": round(before_s * 1000, 2), "after_ms": round(after_s * 1000, 2),
            "ratio": round(after_s / before_s, 3), "threads": 1, "images": images, "repeats": repeats}


def markdown(results: dict) -> str:
    lines = ["| corpus | size | condition | `residual_spectrum` (baseline) | `fingerprint` | `self_description` | "
             "`fingerprint,self_description` |", "|---|---|---|---|---|---|---|"]
    for name, scores in results["top1"].items():
        corpus, variant = name.split("-")
        lines.append(f"| {corpus} | {CORPORA[corpus][0]} px | {'clean' if variant == 'clean' else 'JPEG 80-95'} | "
                     + " | ".join(f"{scores[features]:.3f}" for features in FEATURES) + " |")
    cost = results.get("cost")
    if cost:
        lines += ["", f"`describe` per 256 px image (one thread, median of {cost['repeats']}): "
                      f"{cost['before_ms']} ms without `self_description`, {cost['after_ms']} ms with it "
                      f"(x{cost['ratio']})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/latentsweep-heldout", help="corpora, embeddings, indices, results")
    parser.add_argument("--corpus-python", default=sys.executable,
                        help="a Python with opencv-python-headless, pyvips, pyvips-binary, SimpleITK, numpy, pillow")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--make-corpora", action="store_true", help=argparse.SUPPRESS)  # the corpus step itself
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.make_corpora:
        make_corpora(work, args.per_class, args.seed)
        return
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    save_photos(work)
    subprocess.run([args.corpus_python, __file__, "--make-corpora", "--work", str(work),
                    "--per-class", str(args.per_class), "--seed", str(args.seed)], check=True)
    log(f"corpora written under {work / 'corpora'}")
    results: dict = {"top1": {}, "per_class": args.per_class, "seed": args.seed,
                     "classes": {corpus: [c[0] for c in classes] for corpus, (_, classes) in CORPORA.items()}}
    for corpus in CORPORA:
        for variant in ("clean", "jpeg"):
            results["top1"][f"{corpus}-{variant}"] = evaluate_corpus(work, f"{corpus}-{variant}", log)
    if not args.skip_cost:
        results["cost"] = describe_cost()
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
