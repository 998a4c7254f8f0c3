"""Robustness: Top-1 per post-processing condition on the real-software held-out split, against the
clean references and against the same references ingested with ``--augment standard`` (the product's
recipe: Pillow JPEG, WebP, resizes and blur). Each condition is said to be in the recipe, of a kind
the recipe has but outside its range, or never in it; the mean over the last is the held-out number."""

from __future__ import annotations

from pathlib import Path

from latentsweep_lab.experiment.common import (HELD_OUT_CORPUS as CORPUS, evaluate_index, ingest_corpus, manifest_rows,
                                           write_manifest)

ROBUSTNESS_FEATURES = ("self_description", "fingerprint", "residual_spectrum", "2lat")
# each condition of zoo/robustness.py against the augmentation recipe (latentsweep/ingest/augment.py)
IN_RECIPE, OUTSIDE_RANGE, NEVER = "in the recipe", "recipe's kind, outside its range", "never in the recipe"
RECIPE_RELATION = {"jpeg95": IN_RECIPE, "jpeg85": IN_RECIPE, "jpeg75": IN_RECIPE, "jpeg50": OUTSIDE_RANGE,
                   "webp80": IN_RECIPE, "resize0.5": OUTSIDE_RANGE, "resize1.5": OUTSIDE_RANGE, "crop50": NEVER,
                   "blur1": IN_RECIPE, "noise2": NEVER, "codec": NEVER}


def processed_corpus(source: Path, dest: Path, condition: str, round_trip, limit_per_label: int | None = None) -> Path:
    """``source``'s images after ``condition``, with its labels (each image its own noise seed); the
    first ``limit_per_label`` images of each label when given."""
    from latentsweep.ingest.decode import decode_image
    from latentsweep_lab.zoo.robustness import apply

    if (dest / "manifest.csv").exists():
        return dest
    rows, taken = [], {}
    for number, row in enumerate(manifest_rows(source)):
        if limit_per_label is not None and taken.get(row["label"], 0) >= limit_per_label:
            continue
        taken[row["label"]] = taken.get(row["label"], 0) + 1
        image = decode_image((source / row["uri"]).read_bytes())
        data, suffix = apply(condition, image, seed=number, round_trip=round_trip)
        name = str(Path(row["uri"]).with_suffix(suffix))
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
        rows.append({**row, "uri": name})
    write_manifest(dest, rows)
    return dest


def robustness_table(root: Path, controlled: Path, settings, log) -> list[dict]:
    """One row per condition and feature: Top-1 of the processed held-out queries against the clean
    references, then against the references ingested with ``--augment standard``. ``controlled``: the
    controlled tables' folder (corpora and embeddings)."""
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep_lab.zoo.robustness import CONDITIONS

    round_trip = Embedder(EmbedSettings()).round_trip
    corpus = controlled / "corpus" / CORPUS
    clean = str(controlled / "embeddings" / CORPUS / "reference")
    augmented = ingest_corpus(corpus / "reference", root / "embeddings" / "augmented", log=log, augment="standard")
    queries = {}
    for condition in CONDITIONS:
        folder = processed_corpus(corpus / "queries", root / "corpus" / "queries" / condition, condition, round_trip)
        queries[condition] = ingest_corpus(folder, root / "embeddings" / "queries" / condition, log=log)
    rows = []
    for features in ROBUSTNESS_FEATURES:
        for condition in CONDITIONS:
            row = {"condition": condition, "features": features, "recipe": RECIPE_RELATION[condition]}
            for name, references, index in (
                    ("top1", [clean], controlled / "index" / CORPUS / features),  # the controlled table's own
                    ("top1_augmented", [augmented], root / "index" / "augmented" / features)):
                metrics = evaluate_index(references, index, features,
                                         root / "evaluation" / name / features / condition, [queries[condition]])
                row[name] = round(metrics["overall"]["top1"], 4)
            rows.append(row)
            log(f"experiment: robustness {features} {condition}: top1 {row['top1']:.3f}, "
                f"augmented {row['top1_augmented']:.3f}")
    return rows


def robustness_markdown(rows: list[dict], settings: dict) -> list[str]:
    from latentsweep_lab.zoo.robustness import CONDITIONS
    from latentsweep_lab.zoo.software import SPLITS

    lines = ["## Robustness: post-processing conditions (real software, held-out split)", "",
             f"Held-out queries (new content, {settings['software_size']} px before processing) after each "
             "condition, against the clean references and against the same references ingested with "
             "`--augment standard` (3 processed copies each, counted as one neighbour with their original). "
             f"Top-1 Acc.; chance 1/{len(SPLITS['held-out'].classes)}. JPEG/WebP are Pillow's encoders; `codec` "
             "is a round trip through this project's codec. The recipe column says whether the recipe "
             "(latentsweep/ingest/augment.py) contains the condition.", "",
             "| condition | recipe | " + " | ".join(f"{f} | {f} +aug" for f in ROBUSTNESS_FEATURES) + " |",
             "|---|---|" + "---|---|" * len(ROBUSTNESS_FEATURES)]
    by = {(r["condition"], r["features"]): r for r in rows}
    for condition in CONDITIONS:
        cells = [f"{by[condition, f]['top1']:.3f} | {by[condition, f]['top1_augmented']:.3f}" for f in ROBUSTNESS_FEATURES]
        lines.append(f"| {condition} | {RECIPE_RELATION[condition]} | " + " | ".join(cells) + " |")
    never = [c for c in CONDITIONS if RECIPE_RELATION[c] == NEVER]
    means = [f"{sum(by[c, f][key] for c in never) / len(never):.3f}" for f in ROBUSTNESS_FEATURES
             for key in ("top1", "top1_augmented")]
    lines.append(f"| mean, never in the recipe ({', '.join(never)}) | | " + " | ".join(means) + " |")
    return lines + [""]
