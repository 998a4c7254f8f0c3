"""SFMA adapters with and without: the held-out content-controlled corpora ingested again
through the codec with the shipped adapters (``ingest --adapters default``), their held-out queries
attributed by the latent feature sets, beside the controlled table's own rows without adapters and its
classical ``residual_spectrum`` baseline (same corpora, same protocol; those are read, not recomputed).

The baseline twice more, as a holder of the corpora's JPEG AI bitstreams can run it: on the pixels the
decoder gives back (``compress``, with and without the adapters, then ``decompress``). That is what
retrieval before decoding competes with when the originals are gone."""

from __future__ import annotations

import json
from pathlib import Path

from latentsweep_lab.experiment.common import (HELD_OUT_CORPUS, VOTE_K, evaluate_index, headline, ingest_corpus,
                                           manifest_rows, write_manifest)

ADAPTERS = "default"
# Corpora no tuning decision looked at (the software tuning split did): the zoo without colour habits and
# with shared content, and the real-software held-out split, clean and JPEG.
ADAPTER_CORPORA = ("zoo-shared", HELD_OUT_CORPUS, f"{HELD_OUT_CORPUS}-jpeg")
ADAPTER_FEATURES = ("2lat", "y_chroma")
BASELINE = "residual_spectrum"


def adapters_table(root: Path, controlled: Path, controlled_rows: list[dict], log) -> dict:
    """Per corpus of :data:`ADAPTER_CORPORA` that the controlled tables ran (``controlled``: their folder,
    ``controlled_rows``: their rows): held-out query rows of each latent feature set without adapters, with
    them, and the baseline on the original pixels and on decoded ones (coded without adapters, and with
    them); plus what the adapters cost (their training card)."""
    without = {(r["corpus"], r["features"]): r for r in controlled_rows if r["query_set"] == "queries"}
    rows = []
    for corpus in (name for name in ADAPTER_CORPORA if (name, ADAPTER_FEATURES[0]) in without):
        embedded = {part: ingest_corpus(controlled / "corpus" / corpus / part, root / "embeddings" / corpus / part,
                                        log=log, adapters=ADAPTERS) for part in ("reference", "queries")}
        for features in ADAPTER_FEATURES:
            metrics = evaluate_index([embedded["reference"]], root / "index" / corpus / features, features,
                                     root / "evaluation" / corpus / features, [embedded["queries"]], vote=True)
            adapted = {"corpus": corpus, "features": features, "adapters": True, **headline(metrics)}
            if (corpus, features) in without:
                rows.append(_reused(without[corpus, features], adapted))
            rows.append(adapted)
            log(f"experiment: adapters {corpus} {features}: top1 {adapted['top1']:.3f}")
        if (corpus, BASELINE) in without:
            rows.append({**_reused(without[corpus, BASELINE], adapted), "pixels": "original"})
        for adapters in (None, ADAPTERS):
            rows.append(_decoded_baseline(controlled / "corpus" / corpus, root / "decoded" / corpus, adapters, log))
    return {"card": adapters_card(), "rows": rows}


def _decoded_baseline(corpus: Path, root: Path, adapters: str | None, log) -> dict:
    """The baseline's held-out row on ``corpus`` (``reference`` and ``queries``) after the codec: each part
    compressed (``adapters``: with them) and decompressed to PNGs, which are ingested with their labels."""
    from latentsweep.compress import CodecJob, run as code

    variant = root / ("adapters" if adapters else "base")
    embedded = {}
    for part in ("reference", "queries"):
        bitstreams, pngs = variant / "bitstreams" / part, variant / "decoded" / part
        code(CodecJob("compress", str(corpus / part / "manifest.csv"), str(bitstreams), adapters=adapters, quiet=True))
        code(CodecJob("decompress", str(bitstreams), str(pngs), quiet=True))
        # the decompressed copies keep their originals' relative paths and stems: same rows, PNG uris
        write_manifest(pngs, [{**row, "uri": str(Path(row["uri"]).with_suffix(".png"))}
                              for row in manifest_rows(corpus / part)])
        embedded[part] = ingest_corpus(pngs, variant / "embeddings" / part, log=log)
    metrics = evaluate_index([embedded["reference"]], variant / "index", BASELINE, variant / "evaluation",
                             [embedded["queries"]], vote=True)
    row = {"corpus": corpus.name, "features": BASELINE, "adapters": adapters is not None, "pixels": "decoded",
           **headline(metrics)}
    log(f"experiment: {corpus.name} {BASELINE} on decoded pixels{' (adapters)' if adapters else ''}: "
        f"top1 {row['top1']:.3f}")
    return row


def _reused(row: dict, like: dict) -> dict:
    """A controlled table's row cut to the fields of an adapters row ``like`` (the rest is in its own table)."""
    return {**{key: row[key] for key in like if key in row}, "adapters": False}


def adapters_card() -> dict:
    """The shipped adapters' identity and their guard numbers, from the training card in their sidecar
    (held-out photos with and without them; the calibration's output scale on training photos)."""
    from latentsweep.codec import weights

    card = json.loads(weights.sidecar(weights.DEFAULT_ADAPTERS).read_text())
    meta = card["meta"]
    summary = {"name": weights.DEFAULT_ADAPTERS.name, "sha256": card["sha256"], "parameters": meta.get("parameters"),
               "sfma": meta.get("sfma", True), "steps_done": meta.get("steps_done"),
               "trace_code": meta.get("trace_code", 0), "train_seconds": meta.get("train_seconds")}
    if meta.get("trace"):
        summary["trace_spectra"] = meta["trace"]["spectra"]
    if meta.get("held_out"):
        held_out = meta["held_out"]
        summary.update({"psnr_db": [held_out["base"]["psnr_db"], held_out["adapted"]["psnr_db"]],
                        "bpp": [held_out["base"]["bpp"], held_out["adapted"]["bpp"]],
                        "psnr_delta_db": held_out["psnr_delta_db"], "rate_ratio": held_out["rate_ratio"]})
    if meta.get("calibration"):
        summary["output_scale"] = meta["calibration"]["factor"]
    return summary


def adapters_markdown(table: dict) -> list[str]:
    card = table["card"]
    keys = ("top1", "precision_at_10", "map_at_10", "vote_accuracy")
    parts = []
    if card.get("trace_code"):
        parts.append(f"a trace writer on {card['trace_code']} channels of y, its detector fitted on "
                     f"{card['trace_spectra']:,} crops of synthetic formation recipes")
    if card.get("sfma", True):
        parts.append(f"SFMA trained {card['steps_done']} steps")
    cost = f"{card['parameters']:,} parameters; {' and '.join(parts)}, in {card['train_seconds']:.0f} s"
    if "output_scale" in card:
        cost += f", outputs scaled x{card['output_scale']} by the calibration on training photos"
    if "psnr_db" in card:
        cost += (f"; held-out photos {card['psnr_db'][0]:.2f} -> {card['psnr_db'][1]:.2f} dB "
                 f"({card['psnr_delta_db']:+.2f} dB) at x{card['rate_ratio']:.3f} the rate "
                 f"({card['bpp'][0]:.3f} -> {card['bpp'][1]:.3f} bpp)")
    lines = ["## Adapters: with and without", "",
             "The held-out content-controlled corpora (no tuning decision looked at them), references and "
             f"held-out queries ingested again with `--adapters {ADAPTERS}` (`{card['name']}`, sha256 "
             f"`{card['sha256'][:16]}...`: {cost}) into their own indices; rows without adapters and the "
             f"`{BASELINE}` baseline on the original pixels are the controlled tables' own. The baseline on "
             "decoded pixels: both parts `compress`ed (without adapters, and with them) and `decompress`ed by the "
             "base decoder, the PNGs ingested with their labels: what a holder of the bitstreams alone can run. "
             f"Held-out queries (new content) against the references, z-scored, cosine, Flat index; Vote Acc. is "
             f"the {VOTE_K}-NN vote.", "",
             "| corpus | features | adapters | Top-1 Acc. | Prec.@10 | mAP@10 | Vote Acc. |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['corpus']} | {r['features']} | {_adapters_cell(r)} | "
              + " | ".join(f"{r[key]:.3f}" for key in keys) + " |" for r in table["rows"]]
    return lines + [""]


def _adapters_cell(row: dict) -> str:
    if row["features"] != BASELINE:
        return "with" if row["adapters"] else "without"
    if row["pixels"] == "original":
        return "baseline (original pixels)"
    return f"baseline (decoded pixels, {'with' if row['adapters'] else 'without'})"
