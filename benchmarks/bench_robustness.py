"""Held-out robustness benchmark: attribution of queries processed by software and operations that
no reference and no augmentation recipe ever saw, through the CLI as users run it.

Corpora: those of ``bench_descriptor_heldout.py`` (imported, not copied): ``A`` at 256 px and ``B`` at
288 px, 8 classes x 30 images each, the classes resizers of OpenCV, libvips and SimpleITK, the content
pixel-exact crops of photos the project never trained on. Each class is split deterministically by
image number: images 0-19 are the references, images 20-29 the queries (different crops).

References, two arms: ``clean`` (``latentsweep ingest REFS --labels-from-folders --augment none``) and
``augmented`` (the same with ``--augment standard``, ingest's default for labelled images: 3 processed
copies of every labelled reference, Pillow's JPEG at quality 60-98 with 4:2:0 or 4:4:4 chroma, Pillow's
WebP, Pillow's resizes by 0.6-1.4 with bilinear, bicubic or Lanczos, Gaussian blur of radius 0.3-1.2,
counted as one neighbour with their original). The augmented arm runs only when
``latentsweep ingest --help`` lists ``--augment``; otherwise it is skipped with a printed line (and no
ingest gets ``--augment``). Queries are ingested with ``--augment none`` (copies never query).

Queries, each condition its own labelled folder, ingested the same way:

* in the augmentation recipe: ``clean`` (PNG, the unprocessed image) and ``jpeg80-95`` (Pillow's JPEG,
  quality drawn per image in 80-95: the target condition);
* held out, in no augmentation recipe: ``mozjpeg75-90`` (imagecodecs' mozjpeg, quality 75-90; named
  ``opencv-jpeg75-90`` instead when that imagecodecs build has no mozjpeg and OpenCV's JPEG encoder
  writes it, quality 75-90), ``opencv-jpeg-q70`` (OpenCV's JPEG at 70), ``noise-sigma2`` (Gaussian noise,
  sigma 2, PNG), ``unsharp`` (Pillow's UnsharpMask, radius 2, percent 80, PNG), ``gamma0.8`` (PNG),
  ``crop75`` (centre crop to 75 % of the side, no resampling, PNG), ``vips-resize0.8+cv2-jpeg88``
  (libvips' resize by 0.8, then OpenCV's JPEG at 88) and ``palette256`` (Pillow's quantize to 256
  colours, palette PNG).

Indices: ``latentsweep index build REFS_EMB`` with the default features (``self_description`` where the
embeddings hold it), ``residual_spectrum`` (the classical baseline), ``fingerprint`` and
``fingerprint,self_description``; ``latentsweep evaluate --index IDX --queries Q_EMB``: Top-1 from its
``metrics.json``. Also the ingest seconds per reference image of each arm (the ingest summary's
``seconds`` over the reference images; its ``inputs`` count the copies too, both are kept).

The corpus and query step needs opencv-python-headless, pyvips (with pyvips-binary), SimpleITK and
imagecodecs; they are not project dependencies, so it runs under ``--corpus-python`` (a Python that has
them, e.g. a virtual environment with opencv-python-headless, pyvips, pyvips-binary, simpleitk, numpy,
pillow and imagecodecs installed):

    .venv/bin/python benchmarks/bench_robustness.py --corpus-python PYTHON [--work DIR]

A rerun with the same ``--work`` reuses its corpora and query conditions, its ingests made with the same
arguments, and indices and evaluations newer than their inputs (``--fresh`` redoes the ingests and
everything after them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_descriptor_heldout as heldout  # noqa: E402  (the corpus builder)

REFERENCES = range(0, 20)
QUERIES = range(20, 30)
PER_CLASS = 30
FEATURES = ("default", "residual_spectrum", "fingerprint", "fingerprint,self_description")
ARMS = ("clean", "augmented")
CHANCE = 0.125
IN_RECIPE = ("clean", "jpeg80-95")
HELD_OUT = ("mozjpeg75-90", "opencv-jpeg-q70", "noise-sigma2", "unsharp", "gamma0.8", "crop75",
            "vips-resize0.8+cv2-jpeg88", "palette256")
OPENCV_FALLBACK = "opencv-jpeg75-90"  # the name of mozjpeg75-90 when OpenCV's encoder writes it


# ---- queries (runs under --corpus-python: numpy, Pillow, cv2, pyvips, imagecodecs) ------------

def mozjpeg_available() -> bool:
    try:
        import imagecodecs

        imagecodecs.mozjpeg_encode(np.zeros((16, 16, 3), np.uint8), level=90)
        return True
    except Exception:  # noqa: BLE001  (absent from this build: DelayedImportError, AttributeError, ...)
        return False


def _cv2_jpeg(image: np.ndarray, path: Path, quality: int) -> None:
    import cv2

    ok = cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, path


def process(condition: str, image: np.ndarray, rng: np.random.Generator, stem: Path) -> None:
    """Write ``image`` (uint8 RGB) under ``condition`` to ``stem`` plus the condition's extension."""
    from PIL import Image, ImageFilter

    if condition == "clean":
        Image.fromarray(image).save(stem.with_suffix(".png"))
    elif condition == "jpeg80-95":
        Image.fromarray(image).save(stem.with_suffix(".jpg"), "JPEG", quality=int(rng.integers(80, 96)))
    elif condition == "mozjpeg75-90":
        import imagecodecs

        stem.with_suffix(".jpg").write_bytes(imagecodecs.mozjpeg_encode(image, level=int(rng.integers(75, 91))))
    elif condition == OPENCV_FALLBACK:
        _cv2_jpeg(image, stem.with_suffix(".jpg"), int(rng.integers(75, 91)))
    elif condition == "opencv-jpeg-q70":
        _cv2_jpeg(image, stem.with_suffix(".jpg"), 70)
    elif condition == "noise-sigma2":
        noisy = image.astype(np.float64) + rng.normal(0.0, 2.0, image.shape)
        Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)).save(stem.with_suffix(".png"))
    elif condition == "unsharp":
        Image.fromarray(image).filter(ImageFilter.UnsharpMask(radius=2, percent=80)).save(stem.with_suffix(".png"))
    elif condition == "gamma0.8":
        lifted = 255.0 * (image.astype(np.float64) / 255.0) ** 0.8
        Image.fromarray(np.clip(np.round(lifted), 0, 255).astype(np.uint8)).save(stem.with_suffix(".png"))
    elif condition == "crop75":
        side = image.shape[0] * 3 // 4
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side])).save(stem.with_suffix(".png"))
    elif condition == "vips-resize0.8+cv2-jpeg88":
        import pyvips

        height, width = image.shape[:2]
        vips = pyvips.Image.new_from_memory(np.ascontiguousarray(image).tobytes(), width, height, 3, "uchar")
        out = vips.resize(0.8)
        small = np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(out.height, out.width, out.bands))
        _cv2_jpeg(np.ascontiguousarray(small[:, :, :3]), stem.with_suffix(".jpg"), 88)
    elif condition == "palette256":
        Image.fromarray(image).quantize(colors=256).save(stem.with_suffix(".png"))
    else:
        raise ValueError(condition)


def make_queries(work: Path, seed: int) -> None:
    """From the builder's clean corpora: the references (copied PNGs) and every query condition."""
    from PIL import Image

    conditions = conditions_here()
    for code, corpus in enumerate(heldout.CORPORA):
        source, root = work / "corpora" / f"{corpus}-clean", work / "robustness" / corpus
        if (root / "complete.json").exists():
            continue
        shutil.rmtree(root, ignore_errors=True)
        for number, (name, _, _) in enumerate(heldout.CORPORA[corpus][1]):
            (root / "references" / name).mkdir(parents=True)
            for index in REFERENCES:
                shutil.copyfile(source / name / f"{index:03d}.png", root / "references" / name / f"{index:03d}.png")
            for position, condition in enumerate(conditions):
                folder = root / "queries" / condition / name
                folder.mkdir(parents=True, exist_ok=True)
                for index in QUERIES:
                    image = np.asarray(Image.open(source / name / f"{index:03d}.png").convert("RGB"))
                    rng = np.random.default_rng([seed, 1000 + code, number, index, position])
                    process(condition, image, rng, folder / f"{index:03d}")
        (root / "complete.json").write_text(json.dumps({"conditions": conditions, "seed": seed}) + "\n")


def conditions_here() -> list[str]:
    swap = {"mozjpeg75-90": "mozjpeg75-90" if mozjpeg_available() else OPENCV_FALLBACK}
    return [*IN_RECIPE, *(swap.get(name, name) for name in HELD_OUT)]


# ---- the project side ------------------------------------------------------------------------

def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "latentsweep", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"latentsweep {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def augment_available() -> bool:
    return "--augment" in cli("ingest", "--help")


def _newer(output: Path, *inputs: Path) -> bool:
    """``output`` exists and is newer than every input."""
    return output.exists() and all(output.stat().st_mtime >= source.stat().st_mtime for source in inputs)


def ingest(source: Path, out: Path, fresh: bool, *extra: str) -> dict:
    """Ingest (or reuse a finished ingest of ``source`` with the same ``extra`` arguments); its ``summary.json``."""
    summary, arguments = out / "summary.json", out / "bench-arguments.json"
    if fresh or not summary.exists() or not arguments.exists() or json.loads(arguments.read_text()) != list(extra):
        shutil.rmtree(out, ignore_errors=True)
        cli("ingest", str(source), "--out", str(out), "--labels-from-folders", "--feature-set", "2lat",
            "--device", "cpu", "--overwrite", "-q", *extra)
        arguments.write_text(json.dumps(list(extra)) + "\n")
    record = json.loads(summary.read_text())
    if record.get("errors"):
        raise SystemExit(f"ingest of {source} ended with error rows: {record['errors']}")
    return record


def index(references: Path, out: Path, features: str) -> Path:
    manifest = out / "manifest.json"
    if not _newer(manifest, references / "summary.json"):
        shutil.rmtree(out, ignore_errors=True)
        chosen = () if features == "default" else ("--features", features)
        cli("index", "build", str(references), "--out", str(out), *chosen, "--shards", "1", "-q")
    return manifest


def evaluate(index_dir: Path, manifest: Path, queries: Path, out: Path) -> dict:
    metrics = out / "metrics.json"
    if not _newer(metrics, manifest, queries / "summary.json"):
        shutil.rmtree(out, ignore_errors=True)
        cli("evaluate", "--index", str(index_dir), "--queries", str(queries), "--out", str(out), "-q")
    return json.loads(metrics.read_text())


def run_corpus(work: Path, corpus: str, arms: list[str], conditions: list[str], fresh: bool, augment: bool,
               results: dict) -> None:
    root, embeddings = work / "robustness" / corpus, work / "embeddings" / corpus
    entry = results["corpora"].setdefault(corpus, {"top1": {}, "ingest": {}, "features_resolved": {}})
    queries = {}
    # labelled ingests augment by default where ingest has --augment: say "none" for the queries (copies
    # never query, they would only cost time) and for the clean arm
    plain = ("--augment", "none") if augment else ()
    for condition in conditions:
        summary = ingest(root / "queries" / condition, embeddings / "queries" / condition, fresh, *plain)
        queries[condition] = embeddings / "queries" / condition
        entry["ingest"].setdefault("queries", {})[condition] = _cost(summary, _files(root / "queries" / condition))
    log(f"{corpus}: {len(conditions)} query conditions ingested")
    for arm in arms:
        extra = ("--augment", "standard") if arm == "augmented" else plain
        references = embeddings / f"references-{arm}"
        summary = ingest(root / "references", references, fresh, *extra)
        entry["ingest"][f"references-{arm}"] = _cost(summary, _files(root / "references"))
        log(f"{corpus}: references ({arm}) ingested, {entry['ingest'][f'references-{arm}']}")
        for features in FEATURES:
            index_dir = work / "index" / corpus / arm / features
            manifest = index(references, index_dir, features)
            for condition in conditions:
                out = work / "evaluation" / corpus / arm / features / condition
                metrics = evaluate(index_dir, manifest, queries[condition], out)
                protocol = metrics["protocol"]
                entry["top1"].setdefault(condition, {}).setdefault(features, {})[arm] = metrics["overall"]["top1"]
                entry["features_resolved"][features] = protocol["features"]
                entry.setdefault("reference_vectors", {})[arm] = protocol["reference_vectors"]
                entry.setdefault("queries_evaluated", {})[condition] = protocol["queries"]
            row = " ".join(f"{entry['top1'][c][features][arm]:.2f}" for c in conditions)
            log(f"{corpus} {arm} {features}: {row}")


def _cost(summary: dict, images: int) -> dict:
    """``images``: the files of the ingested folder (an augmented ingest's ``inputs`` count its copies too)."""
    return {"images": images, "inputs": summary["inputs"], "items_encoded": summary["items_encoded"],
            "seconds": summary["seconds"], "seconds_per_image": round(summary["seconds"] / images, 3),
            "seconds_per_input": round(summary["seconds"] / summary["inputs"], 3) if summary["inputs"] else None,
            "workers": summary["workers"], "device": summary["device"]}


def _files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def held_out_means(entry: dict, conditions: list[str]) -> dict:
    means = {}
    held = [condition for condition in conditions if condition not in IN_RECIPE]
    for features in FEATURES:
        for arm in ARMS:
            values = [entry["top1"][c][features][arm] for c in held if arm in entry["top1"][c].get(features, {})]
            if len(values) == len(held):
                means.setdefault(features, {})[arm] = round(float(np.mean(values)), 4)
    return means


def _title(features: str, resolved: dict) -> str:
    if features == "default":
        return f"default (`{resolved.get('default', '?')}`)"
    return f"`{features}`" + (" (baseline)" if features == "residual_spectrum" else "")


def markdown(results: dict) -> str:
    conditions = results["conditions"]
    held = [condition for condition in conditions if condition not in IN_RECIPE]

    def cell(scores: dict) -> str:
        return " / ".join(f"{scores[arm]:.3f}" if arm in scores else "not run" for arm in ARMS)

    lines = ["# Held-out robustness", "",
             f"Each cell: Top-1 with clean references / with augmented references (`--augment standard`). "
             f"Chance {CHANCE}. {len(REFERENCES)} references and {len(QUERIES)} queries per class (different "
             f"crops of the same photos), {len(results['classes']['A'])} classes per corpus.", "",
             f"In the augmentation recipe: {', '.join(f'`{c}`' for c in IN_RECIPE)} (the target). "
             f"Held out (in no augmentation recipe): {', '.join(f'`{c}`' for c in held)}.", ""]
    if results["jpeg_encoder_note"]:
        lines += [results["jpeg_encoder_note"], ""]
    if results.get("augmented_skipped"):
        lines += [f"Augmented arm: {results['augmented_skipped']}", ""]
    for corpus, entry in results["corpora"].items():
        resolved = entry["features_resolved"]
        lines += [f"## Corpus {corpus}: {results['sizes'][corpus]} px, classes "
                  + ", ".join(f"`{c}`" for c in results["classes"][corpus]), "",
                  "| condition | " + " | ".join(_title(f, resolved) for f in FEATURES) + " |",
                  "|---|" + "---|" * len(FEATURES)]
        for condition in conditions:
            label = condition + (" (in recipe)" if condition in IN_RECIPE else "")
            cells = " | ".join(cell(entry["top1"][condition].get(f, {})) for f in FEATURES)
            lines.append(f"| {label} | {cells} |")
        means = entry["held_out_mean"]
        lines.append(f"| **mean over the {len(held)} held-out** | "
                     + " | ".join(f"**{cell(means.get(f, {}))}**" for f in FEATURES) + " |")
        costs = "; ".join(f"{arm} {cost['seconds_per_image']} s (summary: {cost['seconds']} s, "
                          f"{cost['images']} images, {cost['inputs']} inputs)"
                          for arm, cost in ((arm, entry["ingest"].get(f"references-{arm}")) for arm in ARMS) if cost)
        lines += ["", f"Reference ingest, seconds per reference image (wall time of the ingest summary, "
                      f"`--device cpu`): {costs}.", ""]
    lines += [f"Ingest times are wall seconds on {results['cpus']} CPU cores that other work may share while "
              "the benchmark runs; the augmented arm encodes each reference and its copies (its `inputs`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/latentsweep-robustness",
                        help="corpora, query conditions, embeddings, indices, evaluations")
    parser.add_argument("--corpus-python", default=sys.executable,
                        help="a Python with opencv-python-headless, pyvips, pyvips-binary, SimpleITK, imagecodecs, "
                             "numpy, pillow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS), help="clean, augmented or both (comma list)")
    parser.add_argument("--fresh", action="store_true", help="redo the ingests and everything after them")
    parser.add_argument("--results", default=str(HERE / "results"), help="where robustness.json/.md go")
    parser.add_argument("--make-queries", action="store_true", help=argparse.SUPPRESS)  # the corpus step itself
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.make_queries:
        if not all((work / "corpora" / f"{corpus}-clean").is_dir() for corpus in heldout.CORPORA):
            heldout.make_corpora(work, PER_CLASS, args.seed)
        make_queries(work, args.seed)
        return
    if not all((work / "corpora" / f"{corpus}-clean").is_dir() for corpus in heldout.CORPORA):
        heldout.save_photos(work)
    subprocess.run([args.corpus_python, __file__, "--make-queries", "--work", str(work), "--seed", str(args.seed)],
                   check=True)
    conditions = json.loads((work / "robustness" / "A" / "complete.json").read_text())["conditions"]
    log(f"corpora and query conditions under {work / 'robustness'}")
    arms = [arm for arm in args.arms.split(",") if arm]
    results: dict = {"conditions": conditions, "in_recipe": list(IN_RECIPE),
                     "held_out": [c for c in conditions if c not in IN_RECIPE], "chance": CHANCE,
                     "references_per_class": len(REFERENCES), "queries_per_class": len(QUERIES),
                     "split": f"images {REFERENCES.start}-{REFERENCES.stop - 1} of each class are references, "
                              f"{QUERIES.start}-{QUERIES.stop - 1} queries",
                     "seed": args.seed, "features": list(FEATURES), "cpus": os.cpu_count(),
                     "sizes": {corpus: size for corpus, (size, _) in heldout.CORPORA.items()},
                     "classes": {corpus: [c[0] for c in classes] for corpus, (_, classes) in heldout.CORPORA.items()},
                     "jpeg_encoder_note": "" if "mozjpeg75-90" in conditions else
                     f"`{OPENCV_FALLBACK}` stands for `mozjpeg75-90`: the corpus Python's imagecodecs has no mozjpeg "
                     "encoder, so OpenCV's JPEG encoder wrote it (its own quality drawn per image in 75-90).",
                     "corpora": {}}
    augment = augment_available()
    if "augmented" in arms and not augment:
        arms.remove("augmented")
        results["augmented_skipped"] = "skipped: `latentsweep ingest --help` lists no `--augment`."
        print("augmented arm skipped: `latentsweep ingest --help` lists no --augment", flush=True)
    for corpus in heldout.CORPORA:
        run_corpus(work, corpus, arms, conditions, args.fresh, augment, results)
        results["corpora"][corpus]["held_out_mean"] = held_out_means(results["corpora"][corpus], conditions)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "robustness.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
