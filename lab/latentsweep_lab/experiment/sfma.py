"""SFMA, the second seed's question on our held-out corpora: do decoded images keep the forensic traces of
the originals? Held-out queries of each corpus of :data:`CORPORA`, four ways: the original pixels, and
after a real round trip (``.jai`` bytes, then decoded pixels) through the base codec, through stage one
(decoder adapters) and through stage two (encoder and decoder adapters). Each way's queries against two
reference sets: the references decoded the same way (what a holder of the bitstreams alone can index)
and the clean references (a detector of original pixels meeting decoded images). Per way: Top-1 of the
pixel descriptors, PSNR and bits per pixel of the query files, and, on the real-software held-out split,
the share of its ``real`` queries still voted ``real`` against the clean references. Both stages are
trained here (``training/adapters.py``, default settings) and their training time is reported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from latentsweep_lab.experiment.common import HELD_OUT_CORPUS, evaluate_index, ingest_corpus, query_votes
from latentsweep_lab.experiment.robustness import processed_corpus

CORPORA = ("zoo-shared", HELD_OUT_CORPUS, f"{HELD_OUT_CORPUS}-jpeg")
FEATURES = ("residual_spectrum", "fingerprint", "self_description")
WAYS = ("original", "codec", "stage one", "stage two")  # the queries' pixels
REAL = "real"


def trained_stages(root: Path, log) -> dict[str, dict]:
    """Stage one, then stage two started from it, trained with the default settings unless ``root`` holds
    them; ``{"stage one": {"path": ..., "card": ...}, ...}``."""
    from latentsweep_lab.training.adapters import AdapterTrainSettings, train

    stages = {}
    for way, stage, init in (("stage one", "decoder", None), ("stage two", "both", root / "stage-one.pt")):
        path = root / f"{way.replace(' ', '-')}.pt"
        card = root / f"{way.replace(' ', '-')}.card.json"
        if not card.exists():
            root.mkdir(parents=True, exist_ok=True)
            meta = train(AdapterTrainSettings(stage=stage, init=str(init) if init else None), str(path),
                         progress=lambda line: log(f"experiment: sfma {line}"))
            card.write_text(json.dumps(meta, indent=2))
        stages[way] = {"path": str(path), "card": json.loads(card.read_text())}
    return stages


def round_trip(source: Path, dest: Path, adapters: str | None) -> dict:
    """``source``'s images coded to ``.jai`` bytes (no forensic field) and decoded again, with ``adapters``
    (their encoder part codes, their decoder part decodes), as PNGs with the labels under ``dest``; returns
    the mean PSNR (dB, against the original pixels) and bits per pixel of the files."""
    quality = dest / "quality.json"
    if quality.exists():
        return json.loads(quality.read_text())
    from latentsweep.bitstream.codec import BitstreamCodec
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings

    codec = BitstreamCodec(Embedder(EmbedSettings(device="cpu", adapters=adapters)))
    psnrs, rates = [], []

    def coded(image: np.ndarray) -> np.ndarray:
        data, _ = codec.compress(image, descriptors=False)
        decoded = codec.decompress(data)
        mse = np.mean((decoded.astype(np.float64) - image) ** 2)
        psnrs.append(10 * math.log10(255.0 ** 2 / max(mse, 1e-12)))
        rates.append(8 * len(data) / (image.shape[0] * image.shape[1]))
        return decoded

    (dest / "manifest.csv").unlink(missing_ok=True)  # a round trip without its qualities is made again
    processed_corpus(source, dest, "codec", coded)
    result = {"psnr_db": round(float(np.mean(psnrs)), 3), "bpp": round(float(np.mean(rates)), 4)}
    quality.write_text(json.dumps(result))
    return result


def sfma_table(root: Path, controlled: Path, log) -> dict:
    """The rows of the module docstring. ``controlled``: the controlled tables' folder (corpora and
    embeddings of :data:`CORPORA`)."""
    stages = trained_stages(root / "adapters", log)
    adapters = {"original": None, "codec": None, **{way: stages[way]["path"] for way in stages}}
    rows, real = [], []
    for corpus in CORPORA:
        clean = str(controlled / "embeddings" / corpus / "reference")
        for way in WAYS:
            slug = way.replace(" ", "-")
            if way == "original":
                queries, quality = str(controlled / "embeddings" / corpus / "queries"), {"psnr_db": None, "bpp": None}
                same = clean
            else:
                qualities, embedded = {}, {}
                for part, name in (("queries", slug), ("reference", f"{slug}-reference")):
                    qualities[part] = round_trip(controlled / "corpus" / corpus / part, root / "corpus" / corpus / name,
                                                 adapters[way])
                    embedded[part] = ingest_corpus(root / "corpus" / corpus / name, root / "embeddings" / corpus / name,
                                                   log=log)
                queries, same, quality = embedded["queries"], embedded["reference"], qualities["queries"]
            row = {"corpus": corpus, "way": way, **quality}
            for features in FEATURES:
                for key, references, index in ((f"{features} same", same, root / "index" / corpus / slug / features),
                                               (features, clean, root / "index" / corpus / "original" / features)):
                    metrics = evaluate_index([references], index, features,
                                             root / "evaluation" / corpus / features / slug / key.replace(" ", "-"),
                                             [queries])
                    row[key] = round(metrics["overall"]["top1"], 4)
                if corpus == HELD_OUT_CORPUS:
                    voted = query_votes(root / "index" / corpus / "original" / features, [queries])
                    truth, said = voted.label == REAL, voted.predicted == REAL
                    real.append({"way": way, "features": features, "real_called_real": round(float(said[truth].mean()), 4),
                                 "generated_called_generated": round(float((~said[~truth]).mean()), 4)})
            rows.append(row)
            log(f"experiment: sfma {corpus} {way}: " + ", ".join(
                f"{f} {row[f + ' same']:.3f} / {row[f]:.3f}" for f in FEATURES))
    training = {way: {"train_seconds": stages[way]["card"]["train_seconds"], "steps": stages[way]["card"]["steps_done"],
                      "held_out_photos": stages[way]["card"]["held_out"],
                      "calibration": stages[way]["card"].get("calibration")} for way in stages}
    return {"rows": rows, "real": real, "training": training}


def sfma_markdown(result: dict) -> list[str]:
    rows, real, training = result["rows"], result["real"], result["training"]
    lines = ["## SFMA: do decoded images keep their forensic traces?", "",
             "Held-out queries (new content) of each corpus, Top-1 Acc. of each pixel descriptor: on the original "
             "pixels, and after a round trip (`.jai` file, then decoded pixels) through the base codec, through "
             "stage one (SFMA in the decoder, encoder frozen: the base rate by construction) and through stage two "
             "(SFMA in encoder and decoder under a rate guard). Each against the references decoded the same way "
             "(what a holder of the bitstreams alone indexes; the first value) and against the clean references "
             "(a detector of original pixels; the second). PSNR against the original pixels and bits per pixel "
             "of the query files (no forensic field). The adapters were trained "
             "on crops of the codec's training photos through synthetic formation recipes "
             "(`lab/latentsweep_lab/training/formation.py`); no corpus below, its software or its photos took part. "
             "The recipes share resampling mechanisms (B-spline, Gaussian kernels) with the real-software held-out "
             "classes: those columns are held-out software and photos, not held-out mechanisms.", "",
             "| corpus | pixels | " + " | ".join(FEATURES) + " | PSNR (dB) | bpp |",
             "|---|---|" + "---|" * len(FEATURES) + "---|---|"]
    for r in rows:
        quality = "| |" if r["psnr_db"] is None else f"{r['psnr_db']:.2f} | {r['bpp']:.3f} |"
        lines.append(f"| {r['corpus']} | {r['way']} | " + " | ".join(f"{r[f + ' same']:.3f} / {r[f]:.3f}"
                                                                     for f in FEATURES) + f" | {quality}")
    lines += ["", f"Real versus generated on the `{HELD_OUT_CORPUS}` queries after each round trip, 10-NN vote against "
              "the clean references without an open-set threshold: the share of its real photos voted "
              f"`{REAL}`, then the share of its resized images voted anything else.", "",
              "| features | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
    by = {(r["features"], r["way"]): r for r in real}
    lines += [f"| {f} | " + " | ".join(f"{by[f, way]['real_called_real']:.3f} / {by[f, way]['generated_called_generated']:.3f}"
                                       for way in WAYS) + " |" for f in FEATURES]
    lines += ["", "Training on this machine's CPU (default `train-adapters` settings), and each stage's PSNR and "
              "estimated rate on the held-out photos against the base codec:", "",
              "| stage | steps | seconds | PSNR change (dB) | rate ratio |", "|---|---|---|---|---|"]
    for way, t in training.items():
        held = t["held_out_photos"]
        lines.append(f"| {way} | {t['steps']} | {t['train_seconds']:.0f} | {held['psnr_delta_db']:+.2f} | "
                     f"{held['rate_ratio']:.3f} |")
    return lines + [""]
