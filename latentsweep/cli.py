"""The ``latentsweep`` command: parses flags or ``--config``, calls the stages, holds no logic.

Exit codes: 0 success, 1 completed with failed items, 2 bad usage or configuration,
3 the job could not run (storage unreachable, corrupt input files, output in use, ...),
130 interrupted (Ctrl-C): a rerun resumes.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from latentsweep.config import apply_config
from latentsweep.query.verdict import ATTRIBUTE_AT
from latentsweep.schema import ALL_COLUMNS

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEBUG_VARIABLE = "LATENTSWEEP_DEBUG"

EPILOG = ("Exit codes: 0 success; 1 the job completed but some items failed (see the error table); "
          "2 bad usage, configuration or a missing input; 3 the job could not run (storage unreachable, "
          "credentials refused, a corrupt file, the output in use by another run); 130 interrupted "
          "(rerun the same command to resume).\n\n"
          "Environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
          "AWS_REGION, AWS_MAX_ATTEMPTS (S3); RAY_ADDRESS (a cluster to join); LATENTSWEEP_DEBUG=1 "
          "(tracebacks, as --debug).")

# The order of a night's work in --help; commands other packages add follow, under their own heading.
WORKFLOW = ("ingest", "index", "sweep", "pull", "evaluate", "attribute", "compress", "decompress")
COMMAND_PLUGINS = "latentsweep.commands"  # entry points: functions that add commands to the app


class _InWorkflowOrder(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    help="Attribute images to the generator that made them, from JPEG AI latents, on Ray + FAISS.",
    epilog=EPILOG, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    cls=_InWorkflowOrder)


@functools.cache
def application() -> typer.Typer:
    """The command line with the commands installed packages add through the entry-point group
    :data:`COMMAND_PLUGINS` (the research package's); a production install adds none, and importing
    this module imports none of them."""
    from importlib.metadata import entry_points

    for plugin in entry_points(group=COMMAND_PLUGINS):
        plugin.load()(app)
    return app


def command(*args, **kwargs):
    """``app.command`` with the exit codes and environment variables in every command's --help."""
    return app.command(*args, epilog=EPILOG, **kwargs)


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks (also from Ray workers) instead of one-line errors.")] = False) -> None:
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


AllowPartialOption = Annotated[bool, typer.Option(
    "--allow-partial", help="Also take ingest outputs that have not finished (running or stopped): their "
                            "written shards only, saying what is missing. Default: refuse them.")]
ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", callback=apply_config, is_eager=True, exists=False,
    help="YAML file whose keys mirror this command's flags (flags on the command line win).")]
AddressOption = Annotated[Optional[str], typer.Option(
    "--address", envvar="RAY_ADDRESS",
    help="Ray cluster to join (e.g. ray://head:10001 or auto). Default: a local Ray on 127.0.0.1.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary lines.")]


def main() -> None:
    """Console entry point: a user's mistake or a failed job is one line on stderr and an exit code
    (2 usage, 3 could not run), never a traceback unless ``--debug``; errors raised inside Ray tasks
    are unwrapped to their message."""
    from latentsweep.errors import UsageError
    from latentsweep.storage import redact

    parsing = _click_exceptions()
    try:
        code = application()(standalone_mode=False)
    except tuple(module.NoArgsIsHelpError for module in parsing) as error:
        error.show()
        code = EXIT_USAGE
    except tuple(module.ClickException for module in parsing) as error:  # bad flags, values, --config files
        typer.secho(f"error: {redact(error.format_message())}", fg="red", err=True)
        code = EXIT_USAGE
    except (typer.Abort, *(module.Abort for module in parsing if hasattr(module, "Abort"))):
        code = EXIT_INTERRUPTED
    except Exception as error:
        known = _known_cause(error)
        if known is None or os.environ.get(DEBUG_VARIABLE):
            raise
        # the first line: Ray Data appends its retry advice to the messages of errors raised in a stage
        message = str(known).strip().splitlines()[0] if str(known).strip() else type(known).__name__
        typer.secho(f"error: {redact(message)}", fg="red", err=True)
        code = EXIT_USAGE if isinstance(known, UsageError) else EXIT_FAILED
    if code == EXIT_INTERRUPTED:
        typer.secho("interrupted: finished shards and parts are kept; rerun the same command to resume",
                    fg="yellow", err=True)
    sys.exit(code or EXIT_OK)


def entry() -> None:
    """The ``latentsweep`` executable: :func:`main`, then an exit that skips the interpreter's teardown.

    Arrow's C++ thread pools can abort a process while its static objects are destroyed
    (``std::terminate`` on a worker thread still joinable, after Parquet reads: a known pyarrow fault
    at exit, measured here in about 1 of 40 runs under load), which would turn a finished command's
    exit code (a refusal's 2 included) into SIGABRT. By the time :func:`main` returns the work is
    complete and written; Ray is shut down and the streams flushed before the process ends."""
    import logging

    try:
        main()
        code = EXIT_OK
    except SystemExit as end:
        if isinstance(end.code, str):  # what sys.exit(text) prints before exiting 1
            print(end.code, file=sys.stderr)
        code = end.code if isinstance(end.code, int) else (EXIT_OK if end.code is None else 1)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _click_exceptions() -> list:
    """The exception modules command-line parsing raises from: click's, and the copy of click that
    typer vendors since 0.29 (``typer._click``, whose classes are not click's)."""
    import click

    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return modules + [vendored]


def _known_cause(error: BaseException | None):

    """The project's error behind ``error``: itself, or what a Ray task raised (Ray wraps it, its
    message then carrying a remote traceback)."""
    from latentsweep.errors import LatentsweepError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        wrapped = cause if isinstance(cause, BaseException) else None
        if isinstance(error, LatentsweepError) and wrapped is None:
            return error
        error = wrapped or error.__cause__
    return None


COLUMNS_HELP = ("Columns (tensor_branch): " + ", ".join(ALL_COLUMNS) +
                ". y_chroma attributes the synthetic zoo best (docs/results.md).")
FeatureSetOption = Annotated[str, typer.Option(
    "--feature-set", help="Pooled tensors to store: 2lat (y_hat luma+chroma, 256 dims), selected "
                          "(+ residual, residual_quant), all (every exported tensor). " + COLUMNS_HELP)]
DescriptorsOption = Annotated[bool, typer.Option(
    help="Also store the pixel descriptors fingerprint (251 dims) and residual_spectrum (32, the classical "
         "baseline), computed from the decoded images in the same pass; .jai rows read them from the file's "
         "forensic field (--no-descriptors: latents only).")]
PoolingOption = Annotated[str, typer.Option(
    "--pooling", help="gap (the paper's global average) or gap+std (adds per-channel std).")]
WeightsOption = Annotated[Optional[str], typer.Option(
    "--weights", help="Codec checkpoint (.pt with its .json checksum); default: the shipped weights.")]
DeviceOption = Annotated[str, typer.Option(
    "--device", help="auto (GPUs where the cluster has or can add them, else CPU) | cpu | cuda (never falls back)")]
WaitForGpusOption = Annotated[float, typer.Option(
    "--wait-for-gpus", help="Seconds to wait for GPU nodes an autoscaler starts before exit 3.")]
AdaptersOption = Annotated[Optional[str], typer.Option(
    "--adapters", help="SFMA adapters with encoder adapters (a .pt with its .json checksum, made by train-adapters; "
                       "none ship); default: none. Their digest joins the weights digest of every row.")]
DecoderAdaptersOption = Annotated[Optional[str], typer.Option(
    "--adapters", help="SFMA adapters with decoder adapters (a .pt with its .json checksum, made by train-adapters "
                       "--stage decoder or both): decoded images keep more of their forensic traces; the PNG "
                       "records them. Default: the base decoder.")]


def _adapters(value: Optional[str]) -> Optional[str]:
    """A local path made absolute (Ray workers need not share the driver's directory)."""
    if value in (None, "") or "://" in value:
        return value or None
    return str(Path(value).resolve())


@command()
def ingest(
    source: Annotated[str, typer.Argument(help="Folder, s3://bucket/prefix, or a manifest (.parquet/.csv with uri[, label, family]).")],
    out: Annotated[str, typer.Option("--out", help="Output folder or s3:// prefix for the embedding Parquet.")],
    labels_from_folders: Annotated[bool, typer.Option(help="Label = first folder below SOURCE (root/<label>/...).")] = False,
    families: Annotated[Optional[list[str]], typer.Option(
        "--families", help="family=label1,label2 (repeatable), or one YAML/JSON file mapping family -> labels.")] = None,
    feature_set: FeatureSetOption = "all",
    pooling: PoolingOption = "gap",
    weights: WeightsOption = None,
    adapters: AdaptersOption = None,
    device: DeviceOption = "auto",
    half: Annotated[bool, typer.Option(help="fp16 inference on GPU.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per encoder call.")] = 8,
    descriptors: DescriptorsOption = True,
    shard_size: Annotated[int, typer.Option(help="Images per output shard (the unit of resume).")] = 256,
    workers: Annotated[Optional[int], typer.Option(help="Encoder actors (default: one per GPU, or from the CPUs).")] = None,
    wait_for_gpus: WaitForGpusOption = 300.0,
    max_pixels: Annotated[int, typer.Option(help="Refuse images above this many pixels (decompression bombs).")] = 64_000_000,
    min_side: Annotated[int, typer.Option(help="Refuse images whose shorter side is below this.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Redo every shard instead of resuming.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List and plan only; write nothing; print what a run would do as one JSON object.")] = False,
    check_versions: Annotated[bool, typer.Option(
        "--check-versions", help="Manifest sources: stat (local) or HEAD (S3) every entry that the manifest's own "
                                 "version columns (version, else etag, else mtime and size) leave without one, so "
                                 "that a file replaced under the same URI is re-embedded (one request an entry; a "
                                 "folder or prefix needs none: its listing gives the versions).")] = False,
    augment: Annotated[str, typer.Option(
        "--augment", help="References that have seen what queries go through: 'standard' adds 3 processed copies "
                          "of each labelled image (JPEG, WebP, resizes, blur; docs/descriptors.md), which an index "
                          "counts as one neighbour with their original; unlabelled images get none. 'none' for "
                          "labelled query sets (copies never query).")] = "standard",
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Encode a corpus with the JPEG AI codec and write pooled latents to Parquet, one file per shard.

    Reruns resume: finished shards are skipped; items already ingested keep their shard, so a grown
    corpus costs only its new items. Exit code 1 when some inputs ended as error rows.
    """
    import json

    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, dry_run as plan_only, run
    from latentsweep.ingest.sources import parse_families

    job = IngestJob(source, out, EmbedSettings(weights, feature_set, pooling, device, half, batch_size, descriptors,
                                               _adapters(adapters)),
                    shard_size, labels_from_folders, parse_families(families), max_pixels, min_side,
                    workers, wait_for_gpus, overwrite, quiet, address, check_versions, augment)
    if dry_run:
        typer.echo(json.dumps(plan_only(job)))
        return
    summary = run(job)
    report_summary("ingest", summary)
    raise typer.Exit(EXIT_ITEMS_FAILED if summary.failed else EXIT_OK)


def _codec_job(mode: str, source: str, out: str, weights, device, workers, max_pixels, min_side, overwrite,
               address, quiet, adapters=None, descriptors=True) -> None:
    from latentsweep.compress import CodecJob, run

    summary = run(CodecJob(mode, source, out, weights, device, workers, max_pixels, min_side, overwrite, quiet,
                           address, _adapters(adapters), descriptors))
    report_summary(mode, summary)
    raise typer.Exit(EXIT_ITEMS_FAILED if summary.failed else EXIT_OK)


@command()
def compress(
    source: Annotated[str, typer.Argument(help="Images: a folder, s3://bucket/prefix, or a manifest (.parquet/.csv with uri).")],
    out: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix for DIR/<relative path>/<stem>.jai.")],
    weights: WeightsOption = None,
    adapters: AdaptersOption = None,
    device: DeviceOption = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Codec actors (default: one per GPU, or from the CPUs).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images above this many pixels (decompression bombs).")] = 64_000_000,
    min_side: Annotated[int, typer.Option(help="Refuse images whose shorter side is below this.")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Redo every file instead of keeping valid outputs.")] = False,
    descriptors: Annotated[bool, typer.Option(
        help="Store the original pixels' descriptors in each file's forensic field (906 bytes a file) for "
             "bitstream ingest.")] = True,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Code every image into a JPEG AI bitstream (.jai), keeping its relative path and stem.

    DIR is itself an ingest SOURCE (ingest decodes the entropy streams and the hyperprior only).
    Reruns keep outputs of the same input version. Exit code 1 when some inputs failed.
    """
    _codec_job("compress", source, out, weights, device, workers, max_pixels, min_side, overwrite, address, quiet,
               adapters, descriptors)


@command()
def decompress(
    source: Annotated[str, typer.Argument(help="Bitstreams (.jai): a folder, s3://bucket/prefix, or a manifest.")],
    out: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix for DIR/<relative path>/<stem>.png.")],
    weights: WeightsOption = None,
    adapters: DecoderAdaptersOption = None,
    device: DeviceOption = "auto",
    workers: Annotated[Optional[int], typer.Option(help="Codec actors (default: one per GPU, or from the CPUs).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse bitstreams of images above this many pixels.")] = 64_000_000,
    min_side: Annotated[int, typer.Option(help="Unused by decompress (kept for --config files shared with compress).")] = 16,
    overwrite: Annotated[bool, typer.Option(help="Redo every file instead of keeping valid outputs.")] = False,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Decode JPEG AI bitstreams (.jai) to PNG with the synthesis transforms, keeping relative paths and stems.

    Truncated, corrupt or foreign files are refused one by one (exit code 1), never decoded to garbage.
    """
    _codec_job("decompress", source, out, weights, device, workers, max_pixels, min_side, overwrite, address, quiet,
               adapters)


def report_summary(stage: str, summary) -> None:
    """One line of counts and timing, then the output. A sweep's metrics (per label, the confusion) are
    in ``_SUCCESS.json`` and on their own line; on this one they would run to pages."""
    from dataclasses import asdict

    data = asdict(summary)
    typer.echo(f"{stage} summary: " + ", ".join(f"{key}={value}" for key, value in data.items()
                                                if key not in ("source", "out", "metrics")))
    typer.echo(f"{stage} output: {data.get('out')}")


index_app = typer.Typer(help="Build and extend sharded FAISS indices from embedding Parquet.",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")

IndexSourcesArgument = Annotated[list[str], typer.Argument(
    help="Ingest outputs (DEST folders or s3:// prefixes), folders of embedding Parquet, or files.")]
IndexOutOption = Annotated[str, typer.Option("--out", help="Index folder or s3:// prefix.")]


@index_app.command("build", epilog=EPILOG)
def index_build(
    embeddings: IndexSourcesArgument,
    out: IndexOutOption,
    features: Annotated[str, typer.Option(
        help="default (self_description where the embeddings hold it, else 2lat), 2lat (the paper's), "
             "selected, all (every pooled tensor), self_description (the learned forensic descriptor, "
             "docs/descriptors.md), fingerprint (the hand-made one), residual_spectrum (the classical "
             "baseline), or a comma list of columns, e.g. fingerprint,self_description. " + COLUMNS_HELP)] = "default",
    index_type: Annotated[str, typer.Option(
        "--index-type", help="FAISS factory string: Flat (exact), IVF1024,Flat, IVF1024,PQ32, HNSW32, ...")] = "Flat",
    auto: Annotated[bool, typer.Option(help="Choose the index type from the vector count and --memory-budget.")] = False,
    memory_budget: Annotated[float, typer.Option(help="GiB the index may take in memory (for --auto).")] = 4.0,
    shards: Annotated[int, typer.Option(help="Index shards, built in parallel (at most one per input file).")] = 4,
    train_sample: Annotated[int, typer.Option(help="Vectors to train IVF/PQ types on.")] = 100_000,
    min_recall: Annotated[float, typer.Option(
        help="recall@10 (against exact search, on held-out vectors) an approximate index must reach: "
             "larger efSearch/nprobe are tried first; --auto refuses a type that stays below.")] = 0.9,
    open_set_target: Annotated[float, typer.Option(
        help="Calibrate the open-set threshold (stored in the manifest, used by sweeps) so that this share "
             "of the index's own references, each searched against the others, would be called unknown.")] = 0.05,
    allow_partial: AllowPartialOption = False,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Fit the scaler, build the shards with Ray tasks, write the manifest with checksums."""
    from latentsweep.index.build import IndexJob, build

    manifest = build(IndexJob(list(embeddings), out, features, index_type, auto, int(memory_budget * 2**30),
                              shards, train_sample, quiet, address, min_recall=min_recall,
                              open_set_target=open_set_target, allow_partial=allow_partial))

    typer.echo(f"index: {manifest.vectors} vectors, {manifest.dimension} dims, {len(manifest.shards)} shards, "
               f"type {manifest.index_spec}, labels {len(manifest.labels)} -> {out}")


@index_app.command("add", epilog=EPILOG)
def index_add(
    embeddings: IndexSourcesArgument,
    out: Annotated[str, typer.Option("--index", help="The index to extend.")],
    shards: Annotated[int, typer.Option(help="New shards to add.")] = 1,
    allow_partial: AllowPartialOption = False,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Append new reference embeddings as new shards; old shards and the scaler stay as they are."""
    from latentsweep.index.build import IndexJob, add

    manifest = add(IndexJob(list(embeddings), out, shards=shards, quiet=quiet, address=address,
                            allow_partial=allow_partial))
    typer.echo(f"index: now {manifest.vectors} vectors in {len(manifest.shards)} shards -> {out}")


EvidenceOption = Annotated[Optional[list[str]], typer.Option(
    "--evidence", help="Another index of the same references on other features (e.g. fingerprint beside "
                       "self_description); repeatable. A query is attributed only when every one votes the same "
                       "label; otherwise it is uncertain, and the row says which disagreed.")]
AttributeAtOption = Annotated[float, typer.Option(
    "--attribute-at", help="The calibrated confidence (P(label is right), fitted by the index at build) a vote "
                           "needs to be 'attributed'; below it the verdict is 'uncertain'.")]


@command()
def sweep(
    queries: Annotated[list[str], typer.Argument(
        help="Ingest outputs / embedding Parquet, or folders / s3:// prefixes of images (ingested first "
             "with the index's codec settings).")],
    index: Annotated[str, typer.Option("--index", help="The reference index (folder or s3:// prefix).")],
    out: Annotated[str, typer.Option("--out", help="Results root; parts land in OUT/date=YYYY-MM-DD/.")],
    date: Annotated[Optional[str], typer.Option(help="Partition date (default: today, UTC).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query (and votes).")] = 10,
    weighted: Annotated[bool, typer.Option(help="Neighbours vote with their similarity instead of 1.")] = False,
    open_set_threshold: Annotated[Optional[float], typer.Option(
        help="Label a query 'unknown' when its best cosine similarity is below this (default: the threshold "
             "the index calibrated at build, see index build --open-set-target; -1 labels every query).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Query actors (default: one per GPU, or from the CPUs).")] = None,
    index_parts: Annotated[int, typer.Option(
        help="Spread the index shards over this many actors (for indices larger than one worker's memory); "
             "every query batch is searched on all parts and merged.")] = 1,
    weights: WeightsOption = None,
    adapters: Annotated[Optional[str], typer.Option(
        "--adapters", help="SFMA adapters to embed image queries with (a .pt); default: none.")] = None,
    evidence: EvidenceOption = None,
    attribute_at: AttributeAtOption = ATTRIBUTE_AT,
    overwrite: Annotated[bool, typer.Option(help="Redo the whole partition.")] = False,
    allow_partial: AllowPartialOption = False,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Attribute every query to a generator by k-NN vote and write the results, partitioned by date."""
    from latentsweep.query.sweep import SweepJob, check, sweep as run_sweep

    job = SweepJob(list(queries), index, out, k=k, weighted=weighted, open_set_threshold=open_set_threshold,
                   workers=workers, index_parts=index_parts, overwrite=overwrite, quiet=quiet, address=address,
                   allow_partial=allow_partial, evidence=list(evidence or []), attribute_at=attribute_at)
    if date:
        job.date = date
    manifest = check(job)  # before the night's images are ingested
    job.queries = embeddings_for(job, weights, _adapters(adapters), manifest)
    summary = run_sweep(job)
    report_summary("sweep", summary)
    if summary.metrics and summary.labelled:  # only labelled queries are scored; none: no metrics line
        from latentsweep.query.metrics import headline

        typer.echo(f"sweep metrics ({summary.labelled} labelled queries, vote_acc = predicted_label, top1 = nearest "
                   f"neighbour, map_full truncated at k={k}): {headline(summary.metrics['overall'])}")


def embeddings_for(job, weights: Optional[str], adapters: Optional[str], manifest) -> list[str]:
    """The sweep's queries as embeddings: ingest outputs as they are; images are ingested first into
    OUT/_embeddings/date=D in the index's embedding space (:func:`~latentsweep.query.files.embed_settings`)."""
    from latentsweep.errors import UsageError
    from latentsweep.index import reader
    from latentsweep.ingest.run import IngestJob, run as run_ingest
    from latentsweep.query.files import embed_settings
    from latentsweep.storage import Location

    try:
        reader.embedding_files(job.queries, job.allow_partial)
        return job.queries
    except reader.IncompleteIngest:
        raise
    except UsageError:  # not embeddings: images to ingest first
        pass
    settings = embed_settings(manifest, weights, adapters)
    embedded = Location.parse(job.out).join("_embeddings", f"date={job.date}")
    outputs = [embedded.join(f"source-{number}").uri for number in range(len(job.queries))]
    for source, output in zip(job.queries, outputs):
        summary = run_ingest(IngestJob(source, output, settings, quiet=job.quiet, address=job.address,
                                       augment="none"))  # queries: copies would never query
        report_summary("ingest", summary)
    return outputs


@command()
def evaluate(
    index: Annotated[str, typer.Option("--index", help="The reference index.")],
    out: Annotated[str, typer.Option("--out", help="Folder or s3:// prefix for metrics.json, tables.md, confusion.csv.")],
    queries: Annotated[Optional[list[str]], typer.Option(
        "--queries", help="Labelled query embeddings (default: the index's own reference set, leave-one-out).")] = None,
    sample: Annotated[Optional[int], typer.Option(
        help="Evaluate this many labelled queries, a deterministic sample (0: all; default: all up to "
             "100,000, else 10,000).")] = None,
    index_parts: Annotated[int, typer.Option(
        help="Search through this many Ray actors, each holding every n-th shard (indices larger than one "
             "process).")] = 1,
    address: AddressOption = None,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Run the paper's protocol: Top-1, Precision@10, mAP@10, Top-1 Type (and mAP over the full ranking); by
    family and by label."""
    from latentsweep.query.evaluate import evaluate as run_evaluate, tables
    from latentsweep.query.metrics import headline

    result = run_evaluate(index, out, list(queries) if queries else None, sample=sample, index_parts=index_parts,
                          address=address)
    typer.echo(f"evaluate: {headline(result['overall'])}" if quiet else tables(result))
    typer.echo(f"evaluate: wrote metrics.json, tables.md, confusion.csv to {out}")


@command()
def attribute(
    files: Annotated[list[str], typer.Argument(help="Image files (paths or s3:// URIs).")],
    index: Annotated[str, typer.Option("--index", help="The reference index (folder or s3:// prefix).")],
    k: Annotated[int, typer.Option("-k", "--k", help="Neighbours per query (and votes).")] = 10,
    weighted: Annotated[bool, typer.Option(help="Neighbours vote with their similarity instead of 1.")] = False,
    open_set_threshold: Annotated[Optional[float], typer.Option(
        help="As in sweep (default: the index's calibrated threshold).")] = None,
    evidence: EvidenceOption = None,
    attribute_at: AttributeAtOption = ATTRIBUTE_AT,
    weights: WeightsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file, for scripts.")] = False,
    config: ConfigOption = None,
) -> None:
    """Attribute a few files now, in this process (no Ray, no cluster), with the sweep's code: the
    verdict, the evidence (each descriptor family's call, the neighbours) and what each file declares.
    Exit code 1 when a file could not be read or decoded."""
    import json

    from latentsweep.query.files import attribute as attribute_files
    from latentsweep.query.sweep import SweepJob, check

    check(SweepJob(list(files), index, "unused", k=k, open_set_threshold=open_set_threshold,
                   evidence=list(evidence or []), attribute_at=attribute_at))
    settings = {"k": k, "weighted": weighted, "open_set_threshold": open_set_threshold, "attribute_at": attribute_at}
    table, failed = attribute_files(list(files), index, settings, list(evidence or []), weights)
    for row in table.to_pylist():
        if as_json:
            typer.echo(json.dumps(row, default=str))
        else:
            typer.echo(_attribution_lines(row))
    for uri, reason in failed.items():
        typer.secho(f"error: {uri}: {reason}", fg="red", err=True)
    raise typer.Exit(EXIT_ITEMS_FAILED if failed else EXIT_OK)


def _attribution_lines(row: dict) -> str:
    """One file's answer for a person: the verdict first, then its evidence."""
    confidence = "-" if row["confidence"] is None else f"{row['confidence']:.2f}"
    lines = [f"{row['uri']}: {row['verdict'].upper()} {row['predicted_label']} (confidence {confidence}, "
             f"vote share {row['vote_share']:.2f}, top score {row['top_score']:.3f})"]
    if row["verdict_reason"]:
        lines.append(f"  why: {row['verdict_reason']}")
    for name, label, score in zip(row["evidence_features"], row["evidence_labels"], row["evidence_confidence"]):
        lines.append(f"  {name}: {label} ({'-' if score is None else f'{score:.2f}'})")
    if row["declared_by"]:
        said = ", ".join(filter(None, [row["declared_generator"], row["declared_source_type"]])) or "?"
        state = f", C2PA {row['c2pa_state']}, {'trusted' if row['c2pa_trusted'] else 'untrusted'}" \
            if row["declared_by"] == "c2pa" else ""
        lines.append(f"  declared: {said} ({row['declared_by']}{state})")
    if row["provenance_note"]:
        lines.append(f"  metadata: {row['provenance_note']}")
    if row["declared_conflict"]:
        lines.append(f"  CONFLICT: {row['declared_conflict']}")
    neighbours = ", ".join(f"{label} {score:.3f}" for label, score in
                           zip(row["neighbor_labels"][:5], row["neighbor_scores"][:5]))
    lines.append(f"  nearest: {neighbours}")
    return "\n".join(lines)


@command()
def pull(
    source: Annotated[str, typer.Argument(help="A sweep partition, e.g. s3://bucket/results/date=2026-11-23.")],
    dest: Annotated[Path, typer.Argument(help="Local folder.")],
    workers: Annotated[int, typer.Option(help="Parallel transfers.")] = 8,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Download a sweep's results, verify sizes and SHA-256, resume a partial pull."""
    from latentsweep.query.pull import pull as run_pull

    summary = run_pull(source, str(dest), workers, quiet)
    sweep_summary = summary.sweep
    typer.echo(f"pull: {summary.files} files ({summary.downloaded} downloaded, {summary.already_present} already "
               f"present and verified, {summary.bytes} bytes) -> {summary.out}")
    from latentsweep.query.metrics import headline

    typer.echo(f"sweep: {sweep_summary.get('queries')} queries, {sweep_summary.get('unknown')} unknown, "
               f"{sweep_summary.get('labelled', 0)} labelled"
               + (f"; metrics of the labelled: {headline(sweep_summary['metrics']['overall'])}"
                  if sweep_summary.get("metrics") and sweep_summary.get("labelled") else ""))
