"""The latent-retrieval paper's experiments, end to end through the real pipeline, written as ``results.md``.

Table 1: semantic retrieval (2, 4, 8 photo classes) x feature sets (2lat, selected, all), leave-one-out.
Tables 2 and 3: the synthetic generator zoo, by family and by generator, leave-one-out on the
references and on held-out queries with new content, plus extra rows: the beyond-the-paper pooling
(gap+std), JPEG re-compressed queries, and the pixel-domain baseline (Figure 1a) with its time ratio.
Attribution where content is controlled: the zoo without colour habits and with content
shared across generators, and the real-software corpus (real photos, real libraries' resizers;
:mod:`latentsweep_lab.zoo.software`), tuning and held-out splits, clean and JPEG 80-95; the latent
descriptors beside the forensic ``fingerprint`` and the classical ``residual_spectrum`` baseline;
robustness to post-processing (:mod:`.robustness`) and the open set, leaving one generator out
(:mod:`.open_set`), on the real-software held-out split; and whether decoded images keep their forensic
traces with SFMA adapters in the codec (:mod:`.sfma`).
Every corpus is made, ingested with Ray, indexed and evaluated by the same code users run; each step
resumes, so a rerun after an interruption only does what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latentsweep_lab.experiment.common import HELD_OUT_CORPUS, VOTE_K, evaluate_index, headline, ingest_corpus, subset
from latentsweep_lab.zoo.corpus import CorpusSettings

FEATURE_SETS = ("2lat", "selected", "all")
# Beyond the paper's sets, on the zoo: the chroma branch's unquantised latent, whose input packs the
# 2x2 pixel phases of luma and chroma side by side (where sub-pixel generator traces live).
ZOO_FEATURES = FEATURE_SETS + ("y_chroma",)
CLASS_COUNTS = (2, 4, 8)
# Where content is controlled: two latent descriptors, the pixel forensic descriptor and the classical
# baseline (radially averaged power spectrum of the luma high-pass residual), all stored by ingest.
CONTROLLED_FEATURES = ("2lat", "y_chroma", "fingerprint", "residual_spectrum")


@dataclass
class ExperimentSettings:
    size: int = 256                  # image side of both corpora
    per_class: int = 24              # semantic corpus images per photo class
    per_generator: int = 60          # zoo references per generator
    queries_per_generator: int = 20  # held-out zoo queries per generator (new content seed)
    habit: float = 1.0               # strength of the generators' colour habits
    jpeg_quality: int = 90           # robustness variant of the held-out queries
    main_features: str = "y_chroma"  # feature set of the full Tables 2 and 3
    software_size: int = 192         # image side of the real-software corpus (a multiple of 24)
    software_per_class: int = 60     # real-software references per class
    software_queries_per_class: int = 40  # held-out real-software queries per class (new content seed)
    software_jpeg: tuple[int, int] = (80, 95)  # JPEG variant: a quality drawn per image in this range
    controlled_features: tuple[str, ...] = CONTROLLED_FEATURES
    controlled: tuple[str, ...] = ()  # the controlled corpora to run (names of CONTROLLED; empty: all)

    @classmethod
    def quick(cls) -> "ExperimentSettings":
        """Tiny sizes: every table, in a few minutes (tests, a first look)."""
        return cls(size=128, per_class=6, per_generator=12, queries_per_generator=6, software_size=96,
                   software_per_class=8, software_queries_per_class=4)


def run(out: Path, settings: ExperimentSettings = ExperimentSettings(), log=print) -> dict:
    """Run everything under ``out``; returns the results and writes ``out/results.md`` and ``.json``.
    Every step skips what ``out`` already holds, so ``out`` must hold this experiment's settings only."""
    from latentsweep.errors import UsageError

    recorded, wanted = out / "settings.json", json.dumps(asdict(settings), indent=2)
    if recorded.exists() and recorded.read_text() != wanted:
        raise UsageError(f"{out} holds an experiment made with other settings ({recorded}); its corpora and "
                         f"indices would be reused as they are: choose another --out, or remove it")
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(wanted)
    started = time.monotonic()
    results = {"settings": asdict(settings), "weights": _default_weights(),
               "table1": semantic_table(out / "semantic", settings, log),
               **zoo_tables(out / "zoo", settings, log),
               "controlled": controlled_tables(out / "controlled", settings, log,
                                               {"zoo-habits": zoo_embeddings(out / "zoo")})}
    if not settings.controlled or HELD_OUT_CORPUS in settings.controlled:
        from latentsweep_lab.experiment.open_set import open_set_table
        from latentsweep_lab.experiment.real import real_table
        from latentsweep_lab.experiment.robustness import robustness_table
        from latentsweep_lab.experiment.sfma import CORPORA as SFMA_CORPORA, sfma_table

        results["robustness"] = robustness_table(out / "robustness", out / "controlled", settings, log)
        results["open_set"] = open_set_table(out / "open-set", out / "controlled", log)
        results["real"] = real_table(out / "robustness", out / "controlled", log)
        if all(not settings.controlled or name in settings.controlled for name in SFMA_CORPORA):
            results["sfma"] = sfma_table(out / "sfma", out / "controlled", log)
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results))
    log(f"experiment: results in {out / 'results.md'} ({results['seconds']:.0f} s)")
    return results


def _default_weights() -> dict:
    from latentsweep.codec import weights

    card = json.loads(weights.sidecar(weights.DEFAULT_WEIGHTS).read_text())
    held_out = card["meta"]["held_out_trained"]
    return {"name": weights.DEFAULT_WEIGHTS.name, "sha256": card["sha256"],
            "summary": f"{held_out['psnr_db']:.2f} dB at {held_out['bpp']:.3f} bpp on held-out photos"}


def semantic_table(root: Path, settings: ExperimentSettings, log) -> list[dict]:
    from latentsweep_lab.zoo.semantic import CLASSES, make_semantic_corpus

    corpus = root / "corpus"
    if not (corpus / "manifest.csv").exists():
        make_semantic_corpus(corpus, max(CLASS_COUNTS), settings.per_class, settings.size)
    embeddings = ingest_corpus(corpus, root / "embeddings", log=log)
    rows = []
    for classes in CLASS_COUNTS:
        source = embeddings if classes == max(CLASS_COUNTS) else subset(
            embeddings, root / f"subset-{classes}", CLASSES[:classes])
        for features in FEATURE_SETS:
            name = f"{classes}-{features}"
            metrics = evaluate_index([source], root / "index" / name, features, root / "evaluation" / name)
            rows.append({"classes": classes, "features": features, **headline(metrics)})
            log(f"experiment: table 1, {classes} classes, {features}: top1 {rows[-1]['top1']:.3f}")
    return rows


def zoo_tables(root: Path, settings: ExperimentSettings, log) -> dict:
    from latentsweep_lab.zoo.corpus import make_corpus

    corpora = {
        "reference": CorpusSettings(settings.per_generator, settings.size, seed=0, habit=settings.habit),
        "queries": CorpusSettings(settings.queries_per_generator, settings.size, seed=1, habit=settings.habit),
        f"queries-jpeg{settings.jpeg_quality}": CorpusSettings(
            settings.queries_per_generator, settings.size, seed=1, habit=settings.habit,
            jpeg_quality=settings.jpeg_quality)}
    for name, corpus in corpora.items():
        if not (root / "corpus" / name / "manifest.csv").exists():
            make_corpus(root / "corpus" / name, corpus)
    rows, main = [], {}
    for pooling in ("gap", "gap+std"):
        embedded = {name: ingest_corpus(root / "corpus" / name, _zoo_embedded(root, pooling, name), pooling, log)
                    for name in corpora if pooling == "gap" or not name.startswith("queries-jpeg")}
        for features in ZOO_FEATURES:
            index = root / "index" / pooling / features
            for name in embedded:
                queries = None if name == "reference" else [embedded[name]]
                metrics = evaluate_index([embedded["reference"]], index, features,
                                    root / "evaluation" / pooling / features / name, queries)
                rows.append({"pooling": pooling, "features": features, "query_set": name, **headline(metrics)})
                if pooling == "gap" and features == settings.main_features and name in ("reference", "queries"):
                    main[name] = metrics
                log(f"experiment: zoo {pooling} {features} {name}: top1 {rows[-1]['top1']:.3f}")
    return {"zoo_rows": rows, "zoo_main": {name: {k: main[name][k] for k in ("overall", "by_family", "by_label")}
                                           for name in main},
            "pixel_baseline": pixel_baseline(root, settings, log)}


def _zoo_embedded(root: Path, pooling: str, name: str) -> Path:
    return root / "embeddings" / pooling / name


def zoo_embeddings(root: Path) -> dict[str, str]:
    """The zoo tables' reference and held-out query embeddings (GAP): the controlled tables' zoo-habits."""
    return {name: str(_zoo_embedded(root, "gap", name)) for name in ("reference", "queries")}


def _images(manifest: Path) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """A corpus read and decoded as ingest reads and decodes it."""
    from latentsweep import storage
    from latentsweep.ingest.decode import decode_image
    from latentsweep.ingest.sources import list_source

    items = list_source(str(manifest)).items()
    images = [decode_image(storage.read_bytes(item["uri"])) for item in items]
    return images, [item["label"] for item in items], {item["label"]: item["family"] for item in items}


def pixel_baseline(root: Path, settings: ExperimentSettings, log) -> dict:
    """Decode-to-pixels descriptor vs the latent path on the zoo: held-out accuracy and time per image."""
    import faiss

    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep_lab.experiment.pixel_domain import PixelBaseline
    from latentsweep.index.scaler import Scaler
    from latentsweep.query import metrics

    reference, reference_labels, families = _images(root / "corpus" / "reference" / "manifest.csv")
    queries, query_labels, _ = _images(root / "corpus" / "queries" / "manifest.csv")
    embedder = Embedder(EmbedSettings(feature_set="all"))
    baseline = PixelBaseline(embedder)
    embedder.embed(queries[:2])  # warm-up, not timed
    baseline.embed(queries[:2])
    timings = {}
    for name, describe in (("latent", lambda images: embedder.embed(images)), ("pixel", baseline.embed)):
        began = time.perf_counter()
        describe(queries)
        timings[name] = (time.perf_counter() - began) / len(queries)
    reference_vectors = baseline.embed(reference)
    scaler = Scaler.fit(reference_vectors)
    index = faiss.IndexFlatIP(reference_vectors.shape[1])
    index.add(scaler.transform(reference_vectors))
    _, found = index.search(scaler.transform(baseline.embed(queries)), len(reference))
    counts = {label: reference_labels.count(label) for label in set(reference_labels)}
    rows = metrics.per_queries(query_labels, np.asarray(reference_labels, dtype=object)[found],
                               [counts[label] for label in query_labels], families)
    result = headline({"overall": metrics.summarise(query_labels, rows, families)["overall"]})
    result.update({"latent_seconds_per_image": round(timings["latent"], 5),
                   "pixel_seconds_per_image": round(timings["pixel"], 5),
                   "pixel_over_latent_time": round(timings["pixel"] / timings["latent"], 3)})
    log(f"experiment: pixel baseline top1 {result['top1']:.3f}, {result['pixel_over_latent_time']:.2f}x "
        f"the latent path's time per image")
    return result


CONTROLLED = {
    "zoo-habits": "the zoo with its colour habits and content drawn per generator: NOT controlled, for reference",
    "zoo-shared": "the zoo, habit 0, content shared across generators",
    "software-tuning": "real software, tuning split (Pillow, torch; training photos)",
    "software-tuning-jpeg": "real software, tuning split, JPEG",
    "software-held-out": "real software, HELD-OUT split (scikit-image, scipy; held-out photos)",
    "software-held-out-jpeg": "real software, HELD-OUT split, JPEG",
}


def controlled_corpora(settings: ExperimentSettings) -> dict[str, dict[str, tuple]]:
    """name -> {"reference": (writer, settings), "queries": (writer, settings)}: the queries have new
    content (seed 1), as in the zoo tables."""
    from latentsweep_lab.zoo.corpus import make_corpus
    from latentsweep_lab.zoo.software import SoftwareSettings, make_software_corpus

    def zoo(seed: int, count: int) -> tuple:
        return make_corpus, CorpusSettings(count, settings.size, seed=seed, habit=0.0, shared_content=True)

    def software(split: str, jpeg: bool, seed: int, count: int) -> tuple:
        return make_software_corpus, SoftwareSettings(split, count, settings.software_size, seed,
                                                      tuple(settings.software_jpeg) if jpeg else None)

    corpora = {"zoo-shared": {"reference": zoo(0, settings.per_generator),
                              "queries": zoo(1, settings.queries_per_generator)}}
    for split in ("tuning", "held-out"):
        for jpeg in (False, True):
            corpora[f"software-{split}" + ("-jpeg" if jpeg else "")] = {
                "reference": software(split, jpeg, 0, settings.software_per_class),
                "queries": software(split, jpeg, 1, settings.software_queries_per_class)}
    return corpora


def controlled_tables(root: Path, settings: ExperimentSettings, log, ingested: dict[str, dict[str, str]]
                      ) -> list[dict]:
    """Every controlled corpus x feature set x (leave-one-out on the references, held-out queries), after
    the corpora other tables already made and ingested (``ingested``: name -> query set -> embeddings;
    the zoo with habits is the zoo tables' own)."""
    made = controlled_corpora(settings)
    rows = []
    for name in [*ingested, *made]:
        if settings.controlled and name not in settings.controlled:
            continue
        embedded = ingested[name] if name in ingested else {
            query_set: _made_and_ingested(root, name, query_set, *made[name][query_set], log) for query_set in made[name]}
        for features in settings.controlled_features:
            index = root / "index" / name / features
            for query_set in embedded:
                queries = None if query_set == "reference" else [embedded[query_set]]
                metrics = evaluate_index([embedded["reference"]], index, features,
                                    root / "evaluation" / name / features / query_set, queries, vote=True)
                rows.append({"corpus": name, "features": features, "query_set": query_set, **headline(metrics),
                             "classes": len(metrics["by_label"]), "reliability": metrics["overall"].get("reliability")})
                log(f"experiment: controlled {name} {features} {query_set}: top1 {rows[-1]['top1']:.3f}")
    return rows


def _made_and_ingested(root: Path, name: str, query_set: str, write, corpus, log) -> str:
    folder = root / "corpus" / name / query_set
    if not (folder / "manifest.csv").exists():
        write(folder, corpus)
    return ingest_corpus(folder, root / "embeddings" / name / query_set, log=log)


def controlled_markdown(rows: list[dict], settings: dict) -> list[str]:
    """The content-controlled section: a summary of held-out-query Top-1, then one table per corpus."""
    from latentsweep_lab.zoo.software import HELD_OUT, TUNING

    keys = ("top1", "precision_at_10", "map_at_10", "map_full", "vote_accuracy", "type_top1")
    jpeg = f"{settings['software_jpeg'][0]}-{settings['software_jpeg'][1]}"
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    features = list(dict.fromkeys(r["features"] for r in rows))
    top1 = {(r["corpus"], r["features"], r["query_set"]): r["top1"] for r in rows}
    lines = ["## Attribution where content is controlled", "",
             "**zoo-habits** is the zoo of the tables above (colour habits on, each generator drawing its own "
             "content): not controlled, the reference point. Then two corpora where only how an image was "
             "formed tells the classes apart. **zoo-shared**: the "
             "synthetic zoo with the colour habits off (`habit` 0) and image i of every generator rendering "
             "the same content i, so a descriptor that follows content is drawn to the wrong generator. "
             "**software**: real photos bundled with scikit-image, each image its own pixel-exact crop "
             "(random photo, position, flip, 90-degree rotation; no resampling), and each class a resampling "
             f"chain of real, widely used software to {settings['software_size']} px "
             "(`lab/latentsweep_lab/zoo/software.py`), plus a `real` class, the untouched crops. Its **tuning** split "
             "(8 classes of Pillow and torch: nearest, "
             "bilinear, bicubic, Lanczos, align_corners, area; x2, x1.5, x0.75 then x2; content from the "
             "codec's training photos) may be used for tuning decisions; its **held-out** split (8 classes "
             "of scikit-image and scipy.ndimage: B-spline orders 0-5, Gaussian anti-aliasing, corner-aligned "
             "grids; x2, x1.5, x4/3, x1.6, x3; content from the held-out photos coffee, rocket, clock) was "
             "used for none. `-jpeg`: every image saved by Pillow's JPEG encoder at a quality drawn per "
             f"image in {jpeg} (references and queries). These are resizers, not generative models.", "",
             "Tuning classes: " + ", ".join(f"`{c.name}`" for c in TUNING) + ". Held-out classes: "
             + ", ".join(f"`{c.name}`" for c in HELD_OUT) + ".", "",
             "Features: `2lat` and `y_chroma` (latent GAP, as above), `fingerprint` (the forensic pixel "
             "descriptor stored by ingest) and `residual_spectrum` (the classical baseline: radially "
             "averaged power spectrum of the luma high-pass residual), each z-scored, cosine, Flat index. "
             "`reference` = leave-one-out on the references; `queries` = held-out images with new content "
             f"against the references. Vote Acc. = the {VOTE_K}-NN majority vote (a sweep's `predicted_label`); "
             "Top-1 Type = the nearest neighbour's family (zoo: gan/diffusion; software: the library).", "",
             "### Summary: Top-1 of held-out queries", "",
             "| features | " + " | ".join(corpora) + " |", "|---" * (len(corpora) + 1) + "|"]
    lines += [f"| {f} | " + " | ".join(f"{top1[(c, f, 'queries')]:.3f}" if (c, f, "queries") in top1 else "-"
                                       for c in corpora) + " |" for f in features]
    for corpus in corpora:
        selected = [r for r in rows if r["corpus"] == corpus]
        title = CONTROLLED.get(corpus, corpus) + (f" {jpeg}" if corpus.endswith("-jpeg") else "")
        lines += ["", f"### {corpus}: {title} (chance Top-1 1/{selected[0]['classes']} "
                  f"= {1 / selected[0]['classes']:.3f})", "",
                  "| features | query set | Top-1 Acc. | Prec.@10 | mAP@10 | mAP full | Vote Acc. | Top-1 Type Acc. |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['features']} | {r['query_set']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |"
                  for r in selected]
    return lines + [""]


def calibration_markdown(rows: list[dict], curves: tuple[str, ...] = (HELD_OUT_CORPUS,)) -> list[str]:
    """The sweeps' confidence against what happened on held-out queries: the ECE of every controlled
    corpus and feature set, then the calibration curves of ``curves``."""
    queries = [r for r in rows if r["query_set"] == "queries" and r.get("reliability")]
    if not queries:
        return []
    corpora = list(dict.fromkeys(r["corpus"] for r in queries))
    features = list(dict.fromkeys(r["features"] for r in queries))
    ece = {(r["corpus"], r["features"]): r["reliability"]["ece"] for r in queries}
    lines = ["## Confidence: is it a probability? (held-out queries)", "",
             "A sweep gives each vote a `confidence`: the probability that the voted label is right, read from "
             "the index's calibration table (each index, at build, votes every sampled reference against the "
             "others, leave-one-out, and tabulates how often the vote was right by vote share). Here it meets "
             "held-out queries with new content: ECE (expected calibration error: |accuracy - mean confidence| "
             "of 10 confidence bins, weighted by their queries; 0 is perfect).", "",
             "| features | " + " | ".join(corpora) + " |", "|---" * (len(corpora) + 1) + "|"]
    lines += [f"| {f} | " + " | ".join(f"{ece[c, f]:.3f}" if (c, f) in ece else "-" for c in corpora) + " |"
              for f in features]
    for r in (r for r in queries if r["corpus"] in curves):
        lines += ["", f"Calibration curve, {r['corpus']}, {r['features']} (Vote Acc. {r['vote_accuracy']:.3f}):", "",
                  "| confidence bin | queries | mean confidence | accuracy |", "|---|---|---|---|"]
        lines += [f"| ({b['low']:.1f}, {b['high']:.1f}] | {b['queries']} | {b['mean_confidence']:.3f} | "
                  f"{b['accuracy']:.3f} |" for b in r["reliability"]["bins"]]
    return lines + [""]


def markdown(results: dict) -> str:
    """``docs/results.md``: the tables, the commands, the corpus parameters and the codec weights."""
    settings, weights = results["settings"], results["weights"]

    def row(values, keys):
        return "| " + " | ".join(f"{values[k]:.3f}" if isinstance(values[k], float) else str(values[k])
                                 for k in keys) + " |"

    metric_keys = ("top1", "precision_at_10", "map_at_10", "map_full")
    lines = ["# Results: the latent-retrieval paper's experiments on this project's codec", "",
             "Made by `make experiment` (`latentsweep experiment --out experiment --docs docs/results.md`) "
             f"in {results['seconds']:.0f} s on this machine's CPU. Every number below went through the "
             "real pipeline: corpus -> `ingest` (local Ray) -> `index build` (Flat, cosine) -> `evaluate`.", "",
             "**The corpora are SYNTHETIC** (no deepfake corpus is reachable here): the semantic corpus is "
             "augmented crops of photos bundled with scikit-image; the generator zoo is 7 fixed random "
             "generator networks ([corpora](corpora.md)); the real-software corpus is real photos "
             "resized by real libraries, not generative models. The numbers say what the method does on "
             "them, not what it does on real generators.", "",
             f"Codec weights: `{weights['name']}` (sha256 `{weights['sha256'][:16]}...`), {weights['summary']}.",
             f"Corpus parameters: {json.dumps(settings)}.", "",
             "## Table 1: semantic retrieval (leave-one-out)", "",
             "| classes | features | Top-1 Acc. | Prec.@10 | mAP@10 | mAP full |", "|---|---|---|---|---|---|"]
    lines += [row(r, ("classes", "features") + metric_keys) for r in results["table1"]]
    lines += ["", "## The zoo: every configuration", "",
              "`reference` = leave-one-out on the reference set (the paper's protocol); `queries` = held-out "
              "images with new content against the reference index; `queries-jpeg*` = the same held-out "
              "images re-compressed as JPEG. Chance Top-1 is 1/7 = 0.143.", "",
              "| pooling | features | query set | Top-1 Acc. | Prec.@10 | mAP@10 | mAP full | Top-1 Type Acc. |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [row(r, ("pooling", "features", "query_set") + metric_keys + ("type_top1",)) for r in results["zoo_rows"]]
    pixel = results["pixel_baseline"]
    lines += ["", "## Pixel-domain baseline (Figure 1a)", "",
              "Held-out queries; the pixel path decodes the latents (synthesis transforms), converts YUV to "
              "RGB and describes the decoded pixels (channel means and log energies of a fixed high-pass "
              "bank); same scaler, cosine Flat index and protocol as the latent path.", "",
              "| path | Top-1 Acc. | Prec.@10 | mAP@10 | mAP full | seconds per image |", "|---|---|---|---|---|---|",
              f"| latent ({settings['main_features']}, gap) | "
              + " | ".join(f"{_row_of(results, 'queries')[k]:.3f}" for k in metric_keys)
              + f" | {pixel['latent_seconds_per_image']:.4f} |",
              "| pixel (decode + descriptor) | " + " | ".join(f"{pixel[k]:.3f}" for k in metric_keys)
              + f" | {pixel['pixel_seconds_per_image']:.4f} |", "",
              f"The pixel path takes {pixel['pixel_over_latent_time']:.2f}x the latent path's time per image.", ""]
    if results.get("controlled"):
        lines += controlled_markdown(results["controlled"], settings)
        lines += calibration_markdown(results["controlled"])
    if results.get("robustness"):
        from latentsweep_lab.experiment.robustness import robustness_markdown

        lines += robustness_markdown(results["robustness"], settings)
    if results.get("open_set"):
        from latentsweep_lab.experiment.open_set import open_set_markdown

        lines += open_set_markdown(results["open_set"])
    if results.get("real"):
        from latentsweep_lab.experiment.real import real_markdown

        lines += real_markdown(results["real"])
    if results.get("sfma"):
        from latentsweep_lab.experiment.sfma import sfma_markdown

        lines += sfma_markdown(results["sfma"])
    from latentsweep.query.evaluate import tables

    for name, title in (("reference", "leave-one-out on the references"), ("queries", "held-out queries")):
        lines += [f"## Tables 2 and 3: the zoo, {title} ({settings['main_features']}, gap)", "",
                  tables(results["zoo_main"][name]).replace("### ", "#### ")]
    return "\n".join(lines) + "\n"


def _row_of(results: dict, query_set: str) -> dict:
    features = results["settings"]["main_features"]
    return next(r for r in results["zoo_rows"]
                if r["pooling"] == "gap" and r["features"] == features and r["query_set"] == query_set)
