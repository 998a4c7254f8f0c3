"""The main job on the embedded default: local Ray on 127.0.0.1, local folders, the CPU.

make a small synthetic zoo where content is controlled (no colour habits, the same content for every
generator; reference + held-out queries with new content) -> ingest both with Ray -> build the index on
the pixel ``fingerprint`` -> sweep the queries -> evaluate the reference set -> print the per-generator
table.
Every stage resumes, so a second ``make demo`` only re-prints.
"""

from __future__ import annotations

from pathlib import Path

from latentsweep_lab.zoo.corpus import CorpusSettings, make_corpus

SWEEP_DATE = "2026-01-01"  # a fixed partition, so reruns of the demo resume instead of adding nights
SIZE = 256
# What attributes best where content is controlled (docs/results.md): the pixel fingerprint. The latent
# descriptors (`2lat`, the paper's; `y_chroma`) follow content and colour there, near chance.
FEATURES = "fingerprint"


def run(out: Path, per_generator: int = 24, queries_per_generator: int = 8, log=print) -> int:
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.index.build import IndexJob, build
    from latentsweep.ingest.run import IngestJob, run as ingest
    from latentsweep.query.evaluate import evaluate, tables
    from latentsweep.query.sweep import SweepJob, sweep

    failed = 0
    controlled = dict(size=SIZE, habit=0.0, shared_content=True)
    for name, settings in (("reference", CorpusSettings(per_generator=per_generator, seed=0, **controlled)),
                           ("queries", CorpusSettings(per_generator=queries_per_generator, seed=1, **controlled))):
        corpus = out / "corpus" / name
        if not (corpus / "manifest.csv").exists():
            count = make_corpus(corpus, settings)
            log(f"demo: wrote a SYNTHETIC zoo corpus of {count} images ({name}, seed {settings.seed}) to {corpus}")
        summary = ingest(IngestJob(str(corpus / "manifest.csv"), str(out / "embeddings" / name),
                                   EmbedSettings(feature_set="all"), shard_size=32,
                                   augment="standard" if name == "reference" else "none"))
        failed += summary.failed
        log(f"demo: ingest {name}: {summary.embedded}/{summary.inputs} embedded in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} images/s, {summary.shards_already_done}/{summary.shards} shards "
            f"already done), errors {summary.errors or 'none'}")
    index = out / "index"
    if not (index / "manifest.json").exists():
        build(IndexJob([str(out / "embeddings" / "reference")], str(index), features=FEATURES, shards=2))
    result = sweep(SweepJob([str(out / "embeddings" / "queries")], str(index), str(out / "results"),
                            date=SWEEP_DATE))
    log(f"demo: sweep attributed {result.queries} held-out queries ({result.parts_already_done}/{result.parts} "
        f"parts already done) -> {result.out}")
    log("\nHeld-out queries against the reference index (k=10 vote; mAP full truncated at 10):")
    log(tables(result.metrics))
    reference = evaluate(str(index), str(out / "evaluation"))
    log("Leave-one-out on the reference set (the paper's protocol):")
    log(tables(reference))
    log(f"demo: results and report.html in {result.out}, evaluation in {out / 'evaluation'}")
    return failed
