"""The research commands (``train-codec``, ``train-adapters``, ``make-corpus``, ``experiment``, ``demo``),
added to the ``latentsweep`` command line through its plugin entry point where this package is
installed; a production install has none of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from latentsweep.cli import EPILOG, EXIT_ITEMS_FAILED, EXIT_OK, ConfigOption, WeightsOption

PANEL = "Research and demo"


def train_codec(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (a .json checksum file goes beside it).")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    batch_size: Annotated[int, typer.Option(help="Random crops per step.")] = 4,
    crop: Annotated[int, typer.Option(help="Crop side in pixels (a multiple of 64).")] = 128,
    lmbda: Annotated[float, typer.Option(help="Rate-distortion trade-off: loss = bpp + lmbda*255^2*MSE.")] = 0.013,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate (cosine-annealed).")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and crops.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    init: Annotated[Optional[Path], typer.Option(help="Fine-tune from this checkpoint (e.g. larger crops).")] = None,
    config: ConfigOption = None,
) -> None:
    """Train codec weights on the photos bundled with scikit-image (offline) and report held-out
    PSNR and rate against the same network untrained."""
    from latentsweep_lab.training.codec import TrainSettings, train

    if crop % 64:
        raise typer.BadParameter("--crop must be a multiple of 64")
    meta = train(TrainSettings(steps, batch_size, crop, lmbda, learning_rate, seed, device,
                               init=str(init) if init else None), str(out),
                 progress=typer.echo)
    before, after = meta["held_out_untrained"], meta["held_out_trained"]
    typer.echo(f"wrote {out} (sha256 {meta['sha256'][:16]}...)\n"
               f"held-out photos: untrained {before['psnr_db']:.2f} dB at {before['bpp']:.3f} bpp -> "
               f"trained {after['psnr_db']:.2f} dB at {after['bpp']:.3f} bpp")


def train_adapters(
    out: Annotated[Path, typer.Option(help="Adapter checkpoint to write (a .json checksum file goes beside it).")],
    stage: Annotated[str, typer.Option(
        help="decoder: adapters in the synthesis transforms, encoder frozen (rate unchanged); both: in the "
             "analysis and synthesis transforms under a rate guard (start it from a decoder set with --init).")] = "decoder",
    steps: Annotated[int, typer.Option(help="Adam steps (cosine schedule).")] = 400,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 8,
    crops: Annotated[int, typer.Option(help="Training crops, each through its own random formation recipe.")] = 192,
    crop: Annotated[int, typer.Option(help="Crop side in pixels (a multiple of 64).")] = 64,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate (cosine-annealed).")] = 1e-3,
    pixel: Annotated[float, typer.Option(help="Weight of the pixel term against the feature matching.")] = 0.1,
    init: Annotated[Optional[Path], typer.Option(help="--stage both: start the decoder adapters from this set.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, recipes and crops.")] = 0,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop training after this long.")] = None,
    weights: WeightsOption = None,
    config: ConfigOption = None,
) -> None:
    """Train SFMA adapters on the frozen codec (CPU) so that decoded images keep the original's forensic
    descriptors (feature matching on crops of the training photos through random formation recipes);
    reports rate and PSNR on the held-out photos with and without them."""
    from latentsweep_lab.training.adapters import STAGES, AdapterTrainSettings, train

    if stage not in STAGES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(STAGES)}")
    if crop % 64:
        raise typer.BadParameter("--crop must be a multiple of 64")
    if steps < 1:
        raise typer.BadParameter("nothing to train: give --steps above 0")
    if batch_size < 1 or crops < batch_size:
        raise typer.BadParameter("--crops must be at least --batch-size, and both above 0")
    if init is not None and stage != "both":
        raise typer.BadParameter("--init starts stage two (--stage both) from a decoder set")
    meta = train(AdapterTrainSettings(stage, steps, batch_size, crops, crop, learning_rate, pixel, seed=seed,
                                      weights=str(weights) if weights else None, init=str(init) if init else None,
                                      max_seconds=60 * max_minutes if max_minutes else None),
                 str(out), progress=typer.echo)
    typer.echo(f"wrote {out} (sha256 {meta['sha256'][:16]}...)")


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's corpus and outputs.")] = Path("demo-output"),
    per_generator: Annotated[int, typer.Option(help="Reference images per synthetic generator.")] = 24,
    queries_per_generator: Annotated[int, typer.Option(help="Held-out query images per generator.")] = 8,
    config: ConfigOption = None,
) -> None:
    """The main job on the embedded default: zoo corpus -> ingest (local Ray) -> index -> sweep -> tables."""
    from latentsweep_lab import demo as demo_job

    failed = demo_job.run(out, per_generator, queries_per_generator, log=typer.echo)
    raise typer.Exit(EXIT_ITEMS_FAILED if failed else EXIT_OK)


def experiment(
    out: Annotated[Path, typer.Option(help="Working folder: corpora, embeddings, indices, evaluations.")] = Path("experiment"),
    docs: Annotated[Optional[Path], typer.Option(help="Also copy results.md here (e.g. docs/results.md).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Image side of both corpora.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Semantic corpus images per photo class (Table 1).")] = None,
    per_generator: Annotated[Optional[int], typer.Option(help="Zoo reference images per generator.")] = None,
    queries_per_generator: Annotated[Optional[int], typer.Option(help="Held-out zoo queries per generator.")] = None,
    habit: Annotated[Optional[float], typer.Option(
        help="Strength of the zoo generators' colour habits (0: spectral traces only).")] = None,
    jpeg_quality: Annotated[Optional[int], typer.Option(help="JPEG quality of the re-compressed query variant.")] = None,
    main_features: Annotated[Optional[str], typer.Option(help="Feature set of the full Tables 2 and 3.")] = None,
    software_size: Annotated[Optional[int], typer.Option(
        help="Image side of the real-software corpus (a multiple of 24).")] = None,
    software_per_class: Annotated[Optional[int], typer.Option(help="Real-software references per class.")] = None,
    software_queries_per_class: Annotated[Optional[int], typer.Option(
        help="Held-out real-software queries per class.")] = None,
    quick: Annotated[bool, typer.Option(
        help="Tiny sizes for a first look (sizes given above still apply); use its own --out.")] = False,
    config: ConfigOption = None,
) -> None:
    """The latent-retrieval paper's experiments end to end (Table 1, Tables 2 and 3, pixel baseline) and attribution
    where content is controlled (zoo with shared content, real-software corpus) -> results.md."""
    options = dict(locals())  # the options above, by the names ExperimentSettings' fields have
    import dataclasses
    import shutil

    from latentsweep_lab import experiment as runner
    from latentsweep.errors import UsageError

    given = {field.name: options[field.name] for field in dataclasses.fields(runner.ExperimentSettings)
             if options.get(field.name) is not None}  # the rest: ExperimentSettings' defaults (--quick: tiny)
    base = runner.ExperimentSettings.quick() if quick else runner.ExperimentSettings()
    settings = dataclasses.replace(base, **given)
    if settings.software_size <= 0 or settings.software_size % 24:
        raise UsageError("--software-size must be a positive multiple of 24")
    runner.run(out, settings, log=typer.echo)
    if docs:
        docs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "results.md", docs)
        typer.echo(f"experiment: copied results.md to {docs}")


def make_corpus(
    out: Annotated[Path, typer.Argument(help="Folder for root/<class>/*.png and manifest.csv.")],
    kind: Annotated[str, typer.Option(
        help="zoo: the SYNTHETIC generator zoo; software: real photos resized by real libraries "
             "(Pillow, torch, scikit-image, scipy), one class per resampling chain.")] = "zoo",
    per_generator: Annotated[int, typer.Option(help="Images per generator (per class with --kind software).")] = 24,
    size: Annotated[Optional[int], typer.Option(
        help="Image side in pixels (default 128 for zoo, 192 for software; software: a multiple of 24).")] = None,
    seed: Annotated[int, typer.Option(help="Content seed (another seed = new content, e.g. for queries).")] = 0,
    jpeg_quality: Annotated[Optional[int], typer.Option(help="zoo: re-compress every image as JPEG at this quality.")] = None,
    resize: Annotated[Optional[float], typer.Option(help="zoo: rescale every image by this factor.")] = None,
    habit: Annotated[float, typer.Option(help="zoo: strength of the generators' colour habits (0: spectral traces only).")] = 1.0,
    shared_content: Annotated[bool, typer.Option(
        help="zoo: image i of every generator renders the same content (use with --habit 0).")] = False,
    split: Annotated[str, typer.Option(
        help="software: tuning (Pillow, torch; training photos) or held-out (scikit-image, scipy; "
             "held-out photos; never tune on it).")] = "tuning",
    jpeg_range: Annotated[Optional[str], typer.Option(
        help="software: save every image as JPEG at a quality drawn per image in LOW-HIGH, e.g. 80-95.")] = None,
    config: ConfigOption = None,
) -> None:
    """Write an attribution corpus: the SYNTHETIC generator zoo (7 fixed random generators, 4 GAN-like, 3
    diffusion-like) or, with --kind software, real photos whose classes are real libraries' resizers."""
    from latentsweep.errors import UsageError

    if kind == "zoo":
        if split != "tuning" or jpeg_range:
            raise UsageError("--split and --jpeg-range are for --kind software")
        from latentsweep_lab.zoo.corpus import CorpusSettings, make_corpus as write

        count = write(out, CorpusSettings(per_generator, size or 128, seed, jpeg_quality, resize, habit,
                                          shared_content=shared_content))
        typer.echo(f"make-corpus: {count} synthetic images in {out} (manifest: {out / 'manifest.csv'})")
        return
    if kind != "software":
        raise UsageError("--kind must be zoo or software")
    if jpeg_quality is not None or resize is not None or shared_content or habit != 1.0:
        raise UsageError("--jpeg-quality, --resize, --habit and --shared-content are for --kind zoo "
                         "(software: --jpeg-range)")
    from latentsweep_lab.zoo.software import SoftwareSettings, make_software_corpus

    quality = None
    if jpeg_range:
        try:
            low, high = (int(part) for part in jpeg_range.split("-"))
        except ValueError:
            raise UsageError("--jpeg-range must be LOW-HIGH, e.g. 80-95") from None
        quality = (low, high)
    try:
        count = make_software_corpus(out, SoftwareSettings(split, per_generator, size or 192, seed, quality))
    except ValueError as error:
        raise UsageError(str(error)) from None
    typer.echo(f"make-corpus: {count} real-software images ({split} split) in {out} "
               f"(manifest: {out / 'manifest.csv'})")


COMMANDS = {
    "demo": demo,
    "make-corpus": make_corpus,
    "experiment": experiment,
    "train-codec": train_codec,
    "train-adapters": train_adapters,
}


def register(app: typer.Typer) -> None:
    """Add the research commands to ``app``, under their own heading of ``--help``."""
    for name, function in COMMANDS.items():
        app.command(name, epilog=EPILOG, rich_help_panel=PANEL)(function)
