"""GPU check: every GPU path that is installed, against the CPU on the same inputs, in one run of at most
8 minutes, ending in one markdown table.

Runs from the source tree with only torch, numpy, pillow and pyarrow (``PYTHONPATH=. python3
benchmarks/gpu_check.py``: a GPU machine with a CUDA torch and nothing else) or from the project's
environment (``make gpu-check``: a production node with Ray and faiss-gpu). Sections, each with a time
budget (its loops stop starting new work once it is spent) and its elapsed time printed; a section still
running at :data:`HARD_SECONDS` is cut by a watchdog, which prints the table as it stands and exits 1.
Every timer synchronises CUDA on both ends and starts after a warm-up of each batch shape it times:

- ``encode``: the codec's analysis transforms, hyperprior and pooling (feature set ``all``, shipped
  weights, fp32) on CUDA against the CPU: max |diff| per pooled column, images/s of both.
- ``tf32``: the rounded integers (``z_hat``, ``residual_quant``) with TF32 allowed against the codec's
  setting (TF32 off, ``codec.embed.full_float32``), each against the CPU's.
- ``half``: ``--half`` (fp16 autocast) against fp32 on the same device: max |diff| per column.
- ``descriptors``: the pixel descriptors (``latentsweep.descriptors``) on CUDA against the CPU.
- ``bitstream``: the float64 scale levels, the hyper-decoder and latent prediction of ``.jai`` decoding
  on CUDA against the CPU; with ``constriction``, whole bitstream ingest (entropy decoding included) and
  whether CUDA and the CPU write the same file bytes.
- ``ray``: ingest through Ray (``num_gpus=1`` actors on a GPU node) against the bare loop (fetch,
  decode, encode in one process) on the same device, same images; its own local Ray.
- ``faiss``: Flat, IVF-Flat and IVF-PQ (8-bit codes) searched on the GPU (the CPU-built index copied
  there with the query actors' cloner options) and built there, against the CPU index: recall@10 (and
  for IVF, both sides' recall@10 against exact search), queries/s (the GPU's include copying queries in
  and results out), build seconds, and the placement ``latentsweep.index.placement.gpu_capable`` gives
  each type.
- ``sweep``: a sweep with GPU placement against bare faiss-gpu (skipped, with the reason).

Inputs (:data:`PROFILES`): with CUDA 16 crops of 256x256 and 16 of 512x512 of scikit-image's photos, FAISS
200,000 x 256 clustered vectors and 10,000 queries; the CPU half 8 + 4 crops, 20,000 vectors, 1,000 queries;
``--quick`` 2 + 2 crops of 64x64 and 128x128, 10,000 x 64 vectors, 100 queries. Shipped codec weights.

Without a CUDA device every section runs on the CPU against the CPU (the same code, smaller sizes) and
the run says "no CUDA device: CPU half only". What is not installed is skipped with a line saying so.
``--quick`` (or ``GPU_CHECK_QUICK=1``): tiny sizes, Ray skipped, for tests. Exit status 0, or 1 when a
section failed with an error (its row says which) or was cut at the hard limit; Ctrl-C ends the section
running, prints the table and exits 130.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the source tree, installed or not

TOTAL_SECONDS = 450  # the sections' share of the 8 minutes; the rest is start-up and model loading
HARD_SECONDS = 465   # a section still running then is cut: the table so far is printed and the run exits 1


@dataclass(frozen=True)
class Profile:
    name: str
    sizes: dict[int, int]     # image side -> how many images of it
    min_rate_seconds: float   # images/s measured over at least this long (repeating the images)
    vectors: int              # FAISS base vectors
    queries: int              # FAISS queries searched on the device
    cpu_queries: int          # of which the CPU searches the first (recall over these)
    dimension: int = 256
    ray_copies: int = 1       # the Ray rows ingest every image this many times (distinct files)
    budgets: dict[str, float] = field(default_factory=dict)


BUDGETS = {"encode": 60, "tf32": 25, "half": 25, "descriptors": 25, "bitstream": 60, "ray": 110, "faiss": 90,
           "sweep": 1}
PROFILES = {
    "gpu": Profile("gpu", {256: 16, 512: 16}, 3.0, 200_000, 10_000, 2_000, ray_copies=4, budgets=BUDGETS),
    "cpu": Profile("cpu", {256: 8, 512: 4}, 0.0, 20_000, 1_000, 1_000, budgets=BUDGETS),
    "quick": Profile("quick", {64: 2, 128: 2}, 0.0, 10_000, 100, 100, dimension=64,
                     budgets={name: 10 for name in BUDGETS}),
}
BATCH = 8  # images per forward pass, the Embedder's default max_batch


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def spent(self) -> bool:
        return self.left() <= 0


class Table:
    def __init__(self, device: str):
        self.header = ("section", "check", "value", device, "cpu", "s", "note")
        self.rows: list[list[str]] = []

    def add(self, section: str, check: str, value="", tested="", reference="", note="") -> None:
        self.rows.append([section, check, _cell(value), _cell(tested), _cell(reference), "", note])

    def seconds(self, section: str, elapsed: float) -> None:
        for row in self.rows:
            if row[0] == section:
                row[5] = f"{elapsed:.1f}"
                return
        self.rows.append([section, "(no rows)", "", "", "", f"{elapsed:.1f}", ""])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.3g}"
    return str(value)


def rate(count: int, seconds: float, unit: str = "img/s") -> str:
    return f"{count / seconds:,.1f} {unit}" if seconds > 0 and count else "-"


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def synchronize(device) -> None:
    """Wait until the device has run every kernel queued so far. CUDA kernels run asynchronously (torch's
    CUDA semantics notes, "Asynchronous execution"), so a clock read right after a call may stop before
    the work it times has run; every timer here reads the clock after this on both ends. The codec's and
    the descriptors' calls end in ``.cpu().numpy()``, which waits too; this keeps the rates right if one
    ever returns device tensors. No-op on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- inputs -----------------------------------------------------------------------------------------

CROP_PLACES = ((0.0, 0.0), (1.0, 1.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0))  # of the room left by the crop


def check_images(sizes: dict[int, int]) -> tuple[dict[int, list[np.ndarray]], str]:
    """``{side: [uint8 (side, side, 3)]}``: crops of scikit-image's bundled photos (synthetic textures
    when scikit-image is absent), deterministic."""
    if available("skimage"):
        from latentsweep_lab import photos

        sources = [photos.load(name) for name in photos.names("all")]
        out = {}
        for side, count in sizes.items():
            fitting = [image for image in sources if min(image.shape[:2]) >= side]
            crops = []
            for index in range(count):
                image = fitting[index % len(fitting)]
                row, col = CROP_PLACES[(index // len(fitting)) % len(CROP_PLACES)]  # another place per round
                top, left = int(row * (image.shape[0] - side)), int(col * (image.shape[1] - side))
                crops.append(np.ascontiguousarray(image[top:top + side, left:left + side]))
            out[side] = crops
        return out, "crops of scikit-image's bundled photos"
    rng = np.random.default_rng(0)
    out = {}
    for side, count in sizes.items():
        crops = []
        for _ in range(count):
            coarse = rng.random((side // 16 + 1, side // 16 + 1, 3))
            smooth = np.kron(coarse, np.ones((16, 16, 1)))[:side, :side]
            crops.append(np.ascontiguousarray((255 * np.clip(0.8 * smooth + 0.2 * rng.random((side, side, 3)), 0, 1))
                                              .astype(np.uint8)))
        out[side] = crops
    return out, "synthetic textures (scikit-image is not installed)"


def chunks_of(images: dict[int, list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Same-size batches of :data:`BATCH`, the sizes interleaved so a cut-short pass covers both."""
    per_size = [[group[i:i + BATCH] for i in range(0, len(group), BATCH)] for group in images.values()]
    out = []
    for position in range(max(len(c) for c in per_size)):
        out += [c[position] for c in per_size if position < len(c)]
    return out


# -- shared state -----------------------------------------------------------------------------------

class Context:
    def __init__(self, device: str, profile: Profile, images: dict[int, list[np.ndarray]], table: Table):
        self.device, self.profile, self.images, self.table = device, profile, images, table
        self.chunks = chunks_of(images)
        self.cuda = device == "cuda"
        self.vectors: dict[str, dict[str, np.ndarray]] = {}  # the encode section's results, reused
        self._embedders: dict = {}

    def embedder(self, device: str, role: str = "", **settings):
        """One Embedder per (device, role, settings): the CPU reference and the tested side are separate
        instances also when both are on the CPU."""
        from latentsweep.codec.embed import Embedder
        from latentsweep.codec.settings import EmbedSettings

        key = (device, role, tuple(sorted(settings.items())))
        if key not in self._embedders:
            options = {"feature_set": "all", "descriptors": False, "max_batch": BATCH, **settings}
            self._embedders[key] = Embedder(EmbedSettings(device=device, **options))
        return self._embedders[key]


def embed_pass(embedder, chunks, budget: Budget) -> tuple[dict[str, np.ndarray], int, float]:
    """One pass over ``chunks`` (stopping early when ``budget`` is spent): (vectors, images, seconds)."""
    parts, count = defaultdict(list), 0
    synchronize(embedder.device)
    started = time.perf_counter()
    for chunk in chunks:
        for name, values in embedder.embed(chunk).items():
            parts[name].append(values)
        count += len(chunk)
        if budget.spent():
            break
    synchronize(embedder.device)
    return {name: np.concatenate(values) for name, values in parts.items()}, count, time.perf_counter() - started


def throughput(embedder, chunks, budget: Budget, at_least: float, first: tuple[int, float]) -> tuple[int, float]:
    """Images and seconds of ``embedder.embed(chunk)`` over ``chunks``, repeated until ``at_least`` seconds
    (or the budget) after the ``first`` (images, seconds) already measured."""
    count, seconds = first
    while seconds < at_least and not budget.spent():
        synchronize(embedder.device)
        started = time.perf_counter()
        for chunk in chunks:
            embedder.embed(chunk)
            count += len(chunk)
            if budget.spent():
                break
        synchronize(embedder.device)
        seconds += time.perf_counter() - started
    return count, seconds


def warm(embedder, chunks) -> None:
    """One forward pass per distinct batch shape, before any timer: the CUDA context, cuDNN and cuBLAS
    handles, cuDNN's algorithm choice per shape (heuristics: ``cudnn.benchmark`` stays False, as in
    production, so nothing is autotuned later) and oneDNN's primitives on the CPU."""
    seen = set()
    for chunk in chunks:
        shape = (len(chunk), *chunk[0].shape)
        if shape not in seen:
            seen.add(shape)
            embedder.embed(chunk)
    synchronize(embedder.device)


def column_rows(ctx: Context, section: str, tested: dict, reference: dict, what: str, prefix: str = "") -> float:
    """One row per column: max |tested - reference| over the images both have; returns the largest."""
    worst = 0.0
    for name in reference:
        n = min(len(tested[name]), len(reference[name]))
        diff = float(np.abs(tested[name][:n].astype(np.float64) - reference[name][:n]).max()) if n else float("nan")
        scale = float(np.abs(reference[name][:n]).max()) if n else float("nan")
        ctx.table.add(section, f"{prefix}max abs diff {name}", diff, note=f"{what}, {n} images, largest value {scale:.3g}")
        worst = max(worst, diff) if not math.isnan(diff) else worst
    return worst


# -- sections ---------------------------------------------------------------------------------------

def section_encode(ctx: Context, budget: Budget) -> None:
    tested = ctx.embedder(ctx.device)
    reference = ctx.embedder("cpu", role="reference")
    for embedder in (tested, reference):
        warm(embedder, ctx.chunks)
    got, n_got, s_got = embed_pass(tested, ctx.chunks, Budget(budget.left() / 2))
    want, n_want, s_want = embed_pass(reference, ctx.chunks, Budget(budget.left() / 2))
    ctx.vectors["fp32"], ctx.vectors["cpu"] = got, want
    what = f"{ctx.device} vs cpu, fp32"
    worst = column_rows(ctx, "encode", got, want, what)
    at_least = ctx.profile.min_rate_seconds
    n_got, s_got = throughput(tested, ctx.chunks, Budget(min(budget.left() / 2, 2 * at_least)), at_least,
                              (n_got, s_got))
    n_want, s_want = throughput(reference, ctx.chunks, Budget(min(budget.left(), 2 * at_least)), at_least,
                                (n_want, s_want))
    ctx.table.add("encode", "images/s (encode + pool, batches of 8)", "", rate(n_got, s_got), rate(n_want, s_want),
                  f"worst column diff {_cell(worst)}; {len(got['y_luma'])} images compared")


def _tf32(on: bool) -> None:
    from latentsweep.codec.embed import full_float32

    full_float32(tf32=on)


def precision_flags() -> str:
    """torch's float32 switches as they stand: the legacy ones (``cudnn.allow_tf32``,
    ``cuda.matmul.allow_tf32``), then on torch 2.9+ the per-backend ``fp32_precision`` values that cuDNN
    convolutions and cuBLAS matmuls actually read, and ``cudnn.benchmark`` (autotuning, off by default).
    A legacy getter that refuses to read (torch 2.9+ raises when the two APIs were mixed) is reported,
    not raised; its deprecation warning on torch 2.9-2.11 is silenced."""
    import warnings

    import torch

    def read(getter) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return str(getter())
        except RuntimeError as error:
            return f"unreadable ({str(error).split(',')[0][:60]})"

    backends = torch.backends
    parts = [f"cudnn.allow_tf32={read(lambda: backends.cudnn.allow_tf32)}",
             f"matmul.allow_tf32={read(lambda: backends.cuda.matmul.allow_tf32)}"]
    conv = getattr(backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        parts.append("fp32_precision conv={}, rnn={}, matmul={}".format(
            read(lambda: backends.cudnn.conv.fp32_precision), read(lambda: backends.cudnn.rnn.fp32_precision),
            read(lambda: backends.cuda.matmul.fp32_precision)))
    parts.append(f"cudnn.benchmark={backends.cudnn.benchmark}")
    return ", ".join(parts)


ROUNDED = ("z_hat_luma", "z_hat_chroma", "residual_quant_luma", "residual_quant_chroma")


def _rounded(embedder, chunk) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        tensors, _ = embedder.exported(chunk)
        return {name: tensors[name].float().cpu().numpy() for name in ROUNDED}


def section_tf32(ctx: Context, budget: Budget) -> None:
    tested = ctx.embedder(ctx.device)
    reference = ctx.embedder("cpu", role="reference")
    flags = precision_flags()  # after the codec is built: what every section's tested side runs with
    first = {}
    for chunk in ctx.chunks:  # the first batch of each size
        first.setdefault(chunk[0].shape, chunk)
    counts = {key: [0, 0, 0.0] for key in ("on_cpu", "off_cpu", "on_off")}  # differing, total, max |diff|
    on_flags = ""
    for chunk in first.values():
        if budget.spent():
            break
        cpu = _rounded(reference, chunk)
        try:
            _tf32(True)
            on_flags = on_flags or precision_flags()
            on = _rounded(tested, chunk)
        finally:
            _tf32(False)
        off = _rounded(tested, chunk)
        for key, (a, b) in {"on_cpu": (on, cpu), "off_cpu": (off, cpu), "on_off": (on, off)}.items():
            for name in ROUNDED:
                diff = np.abs(a[name] - b[name])
                counts[key][0] += int((diff > 0).sum())
                counts[key][1] += diff.size
                counts[key][2] = max(counts[key][2], float(diff.max()))
    note = "" if ctx.cuda else "CPU: the TF32 switches have no effect there"
    labels = {"on_cpu": f"TF32 allowed ({ctx.device}) vs cpu", "off_cpu": f"TF32 off, the codec's setting ({ctx.device}) vs cpu",
              "on_off": f"TF32 allowed vs off ({ctx.device})"}
    for key, (differing, total, largest) in counts.items():
        share = f"{differing:,} of {total:,} integers differ ({differing / total:.2%})" if total else "nothing compared"
        if key == "on_cpu" and on_flags:
            share += f"; switches while allowed: {on_flags}"
        ctx.table.add("tf32", f"z_hat + residual_quant max abs diff, {labels[key]}", float(largest), note=share)
    ctx.table.add("tf32", "switches after the codec is built", flags, note=note)


def section_half(ctx: Context, budget: Budget) -> None:
    half = ctx.embedder(ctx.device, half=True)
    fp32 = ctx.vectors.get("fp32")
    if fp32 is None:
        fp32 = embed_pass(ctx.embedder(ctx.device), ctx.chunks, Budget(budget.left() / 2))[0]
    warm(half, ctx.chunks)
    got, n, seconds = embed_pass(half, ctx.chunks, budget)
    note = "fp16 autocast vs fp32" if ctx.cuda else "CPU: --half is CUDA-only, the Embedder runs fp32 on both sides"
    worst = column_rows(ctx, "half", got, fp32, note)
    n, seconds = throughput(half, ctx.chunks, Budget(min(budget.left(), 2 * ctx.profile.min_rate_seconds)),
                            ctx.profile.min_rate_seconds, (n, seconds))
    ctx.table.add("half", "images/s with --half", "", rate(n, seconds), "",
                  f"worst column diff {_cell(worst)} against fp32 on {ctx.device}")


def section_descriptors(ctx: Context, budget: Budget) -> None:
    from latentsweep.descriptors import describe

    images = [image for chunk in ctx.chunks for image in chunk]
    for shape in {image.shape for image in images}:  # warm-up: cuFFT plans, kernels
        sample = next(image for image in images if image.shape == shape)
        describe(sample, ctx.device), describe(sample, "cpu")
    results = {"tested": defaultdict(list), "reference": defaultdict(list)}
    seconds = {"tested": 0.0, "reference": 0.0}
    synchronize(ctx.device)
    for image in images:
        for side, device in (("tested", ctx.device), ("reference", "cpu")):
            started = time.perf_counter()
            described = describe(image, device)  # numpy, copied back from the device
            synchronize(device)
            seconds[side] += time.perf_counter() - started
            for name, values in described.items():
                results[side][name].append(values)
        if budget.spent():
            break
    got = {name: np.stack(values) for name, values in results["tested"].items()}
    want = {name: np.stack(values) for name, values in results["reference"].items()}
    column_rows(ctx, "descriptors", got, want, f"{ctx.device} vs cpu")
    count = len(next(iter(got.values())))
    ctx.table.add("descriptors", "images/s (both descriptors, one image at a time)", "",
                  rate(count, seconds["tested"]), rate(count, seconds["reference"]))


def section_bitstream(ctx: Context, budget: Budget) -> None:
    import torch

    from latentsweep.bitstream import codec as bitstream

    settings = {"feature_set": "selected"}  # columns a bitstream carries
    tested = bitstream.BitstreamCodec(ctx.embedder(ctx.device, **settings))
    reference = bitstream.BitstreamCodec(ctx.embedder("cpu", role="reference", **settings))
    # 1. symbols from the CPU's analysis -> scale levels and prediction on both devices (no entropy coding)
    same_levels = total_levels = 0
    decoded = {"tested": defaultdict(list), "reference": defaultdict(list)}
    for chunk in ctx.chunks:
        with torch.inference_mode():
            tensors, sizes = reference.embedder.exported(chunk)
        for branch in bitstream.BRANCHES:
            z_hat = tensors[f"z_hat_{branch}"]
            a, b = tested.levels(branch, z_hat.to(tested.device)), reference.levels(branch, z_hat)
            same_levels, total_levels = same_levels + int((a == b).sum()), total_levels + a.size
        for side, codec in (("tested", tested), ("reference", reference)):
            items = [{f"{name}_{branch}": tensors[f"{name}_{branch}"][i:i + 1].to(codec.device)
                      for name in ("z_hat", "residual_quant") for branch in bitstream.BRANCHES}
                     for i in range(len(chunk))]
            with torch.inference_mode():
                predicted = codec._predict(items)  # what latents_batch runs after entropy decoding
            for name, values in codec.embedder.pool(predicted, sizes).items():
                decoded[side][name].append(values)
        if budget.left() < budget.seconds / 2:
            break
    ctx.table.add("bitstream", "scale levels (float64, on the CPU for every device): identical",
                  f"{same_levels:,} of {total_levels:,}", note=f"{ctx.device} codec vs cpu codec")
    column_rows(ctx, "bitstream", {k: np.concatenate(v) for k, v in decoded["tested"].items()},
                {k: np.concatenate(v) for k, v in decoded["reference"].items()},
                f"hyper-decoder + prediction + pooling from the CPU's symbols, {ctx.device} vs cpu", "symbols: ")
    if not available("constriction"):
        ctx.table.add("bitstream", "skipped: entropy coding (compress, .jai ingest)", "",
                      note="constriction is not importable (the range coder of .jai files): pip install 'constriction>=0.5'")
        return
    # 2. whole files: compress on both devices, then ingest the CPU's files on both
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import Fetched
    from latentsweep.ingest.encode import Encoder

    files, same_bytes = [], 0
    for chunk in ctx.chunks:
        for image in chunk:
            # without the forensic field: the descriptors a GPU computes may differ from the CPU's in the
            # last bits, and what is compared here is the codec's integers and their entropy coding
            data, _ = reference.compress(image, "gpu-check", descriptors=False)
            same_bytes += tested.compress(image, "gpu-check", descriptors=False)[0] == data
            files.append((data, image.shape[:2]))
        if budget.left() < budget.seconds / 4:
            break
    ctx.table.add("bitstream", "compress: byte-identical files", f"{same_bytes} of {len(files)}",
                  note=f"{ctx.device} encoder vs cpu encoder (same z_hat and residual_quant integers)")
    groups = defaultdict(list)
    for index, (data, (height, width)) in enumerate(files):
        groups[(height, width)].append(Fetched(f"memory://{index}.jai", latents=data, source="bitstream",
                                               height=height, width=width))
    batches = [group[i:i + BATCH] for group in groups.values() for i in range(0, len(group), BATCH)]
    vectors, seconds = {}, {}
    for side, device in (("tested", ctx.device), ("reference", "cpu")):  # both ingest the CPU encoder's files
        encoder = Encoder(EmbedSettings(device=device, descriptors=False, max_batch=BATCH, **settings))
        for group in groups.values():  # warm-up, one batch of each size: entropy tables, kernels
            encoder.encode([Fetched(item.uri, latents=item.latents, source="bitstream", height=item.height,
                                    width=item.width) for item in group[:BATCH]])
        parts = defaultdict(list)
        synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            for name, values in encoder.encode(batch).items():
                parts[name].append(values)
        synchronize(device)
        seconds[side] = time.perf_counter() - started
        vectors[side] = {name: np.concatenate(values) for name, values in parts.items()}
        failed = [item.message for item in (i for b in batches for i in b) if item.error_type]
        if failed:
            raise RuntimeError(f"bitstream ingest on {device} refused files: {failed[0]}")
    column_rows(ctx, "bitstream", vectors["tested"], vectors["reference"], f".jai ingest (Encoder), {ctx.device} vs cpu",
                ".jai: ")
    ctx.table.add("bitstream", "files/s, .jai ingest (entropy decoding + prediction + pooling)", "",
                  rate(len(files), seconds["tested"], "files/s"), rate(len(files), seconds["reference"], "files/s"))


def section_ray(ctx: Context, budget: Budget) -> None:
    if ctx.profile.name == "quick":
        ctx.table.add("ray", "skipped: --quick", note="a local Ray's start alone takes several seconds")
        return
    if not available("ray"):
        ctx.table.add("ray", "skipped: Ray is not importable", note="production nodes: make gpu-check")
        return
    import pyarrow.parquet as pq
    from PIL import Image

    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import fetch
    from latentsweep.ingest.encode import Encoder
    from latentsweep.ingest.run import IngestJob, run as run_ingest

    # Its own local Ray, never a cluster's: ray.init() joins RAY_ADDRESS's cluster, or without it the
    # latest `ray start` instance on this machine (a production node runs one); cluster.connect passes
    # address="local" when neither --address nor RAY_ADDRESS names one, which always starts a new instance.
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = EmbedSettings(feature_set="all", device=ctx.device, descriptors=True, max_batch=BATCH)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        source, warm_source = scratch / "images", scratch / "warm"
        paths = []
        for copy in range(ctx.profile.ray_copies):
            for side, images in ctx.images.items():
                for index, image in enumerate(images):
                    folder = source / f"{side}"
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / f"{copy:02d}-{index:03d}.png"
                    Image.fromarray(image).save(path)
                    paths.append(path)
        warm_source.mkdir()
        shutil.copy(paths[0], warm_source / paths[0].name)
        import ray

        try:
            # a warm-up job starts Ray (not timed); then the timed job, actors and codec loading included
            warm_started = time.perf_counter()
            run_ingest(IngestJob(source=str(warm_source), out=str(scratch / "warm-out"), embed=settings, quiet=True))
            warm_seconds = time.perf_counter() - warm_started
            if budget.left() < warm_seconds:  # the timed job starts its actors again: it cannot end in time
                ctx.table.add("ray", "skipped: the timed Ray job", note=(
                    f"the warm-up job (Ray start, one actor, one image) took {warm_seconds:.0f} s and "
                    f"{max(budget.left(), 0):.0f} s of the section's budget are left"))
                return
            summary = run_ingest(IngestJob(source=str(source), out=str(scratch / "out"), embed=settings, quiet=True))
        finally:
            ray.shutdown()
        encoder = Encoder(settings)
        by_size = defaultdict(list)
        for path in paths:
            by_size[path.parent.name].append(path)
        for group in by_size.values():  # warm-up, one batch of each size: kernels, cuFFT plans of the descriptors
            encoder.encode([fetch(str(path)) for path in group[:BATCH]])
        bare = {}
        synchronize(ctx.device)
        started = time.perf_counter()
        for group in by_size.values():
            for start in range(0, len(group), BATCH):
                items = [fetch(str(path)) for path in group[start:start + BATCH]]
                for name, values in encoder.encode(items).items():
                    for item, row in zip(items, values):
                        bare.setdefault(_relative(item.uri, source), {})[name] = row
        synchronize(ctx.device)
        bare_seconds = time.perf_counter() - started
        table = pq.read_table(str(scratch / "out" / "embeddings"))
        uris = [_relative(uri, source) for uri in table.column("uri").to_pylist()]
        worst, worst_name = 0.0, ""
        for name in encoder.columns:
            rows = np.stack(table.column(name).to_numpy(zero_copy_only=False))
            diff = float(np.abs(rows - np.stack([bare[uri][name] for uri in uris])).max())
            if diff >= worst:
                worst, worst_name = diff, name
        ctx.table.add("ray", f"max abs diff over {len(encoder.columns)} columns (worst: {worst_name})", worst,
                      note=f"Ray ingest vs bare loop, {len(uris)} of {len(paths)} images, both on {summary.device}")
        bare_rate = len(paths) / bare_seconds
        ctx.table.add("ray", "images/s, Ray ingest / bare loop, same device",
                      f"{summary.images_per_second:,.1f} / {bare_rate:,.1f} = "
                      f"{summary.images_per_second / bare_rate:.2f}x", note=(
                          f"{summary.workers} actor(s) on {summary.device} (actor start, codec load and writes "
                          f"included); bare: fetch + decode + encode in this process on {ctx.device}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _relative(uri: str, root: Path) -> str:
    text = uri.removeprefix("file://")
    return str(Path(text).relative_to(root)) if text.startswith(str(root)) else Path(text).name


def _clustered(rng, count: int, dimension: int, centres: np.ndarray) -> np.ndarray:
    points = centres[rng.integers(len(centres), size=count)] + 0.35 * rng.standard_normal((count, dimension))
    points = points.astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def section_faiss(ctx: Context, budget: Budget) -> None:
    if not available("faiss"):
        ctx.table.add("faiss", "skipped: faiss is not importable", note="production nodes: FAISS_EXTRA=gpu make venv")
        return
    import faiss
    import torch

    from latentsweep.index import factory, placement

    faiss.omp_set_num_threads(torch.get_num_threads())  # the CPU side's threads: torch's (--threads)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    on_gpu = ctx.cuda and gpus > 0 and hasattr(faiss, "StandardGpuResources")
    if ctx.cuda and not on_gpu:
        ctx.table.add("faiss", "skipped: this faiss has no GPU", note="faiss-cpu is installed (or sees no GPU): "
                      "FAISS_EXTRA=gpu installs faiss-gpu")
        _placement_rows(ctx)
        return
    p = ctx.profile
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, p.dimension)).astype(np.float32)
    base = _clustered(rng, p.vectors, p.dimension, centres)
    queries = _clustered(rng, p.queries, p.dimension, centres)
    ids = np.arange(p.vectors, dtype=np.int64) * 7 + 3  # stable ids, not row positions
    nlist = min(factory.nlist_for(p.vectors), 2 ** int(math.log2(max(p.vectors // factory.POINTS_PER_CENTROID, 2))))
    resources = faiss.StandardGpuResources() if on_gpu else None  # one per device, as the query actors hold
    label = ctx.device if on_gpu else "cpu copy"

    def to_device(index, spec: str):
        """The copy the query actors make (index/shards.py): GpuClonerOptions with ``useFloat16`` (for IVF-PQ
        exactly ``useFloat16LookupTables``) only where placement asks for it, INDICES_64_BIT ids, cuVS off
        (faiss-gpu is built without it); device 0 of the devices this process sees."""
        if not on_gpu:
            return faiss.clone_index(index)
        options = faiss.GpuClonerOptions()
        options.useFloat16 = placement.float16_lookup_tables(spec)
        return faiss.index_cpu_to_gpu(resources, 0, index, options)

    def set_params(index, params: str):
        """nprobe on a GPU IVF index: GpuParameterSpace sets GpuIndexIVF.nprobe (index_cpu_to_gpu already
        copies the CPU index's nprobe, GpuIndexIVF::copyFrom); at most 2048 on GPUs, as k is."""
        if not params:
            return
        if on_gpu:
            faiss.GpuParameterSpace().set_index_parameters(index, params)
        else:
            factory.apply_search_params(index, params)

    def build(index, spec):
        started = time.perf_counter()
        if factory.needs_training(spec):
            train = base[:min(p.vectors, factory.min_train_points(spec) or p.vectors)]
            index.train(train)
        index.add_with_ids(base, ids)
        return time.perf_counter() - started

    k = 10
    assert k <= placement.GPU_MAX_K  # FAISS-GPU's top-k limit (GPU_MAX_SELECTION_K)

    def search(index, rows):
        """Queries from host memory, results back in host memory: a GPU index's search copies both ways
        and returns once its results are on the host, so the seconds include those transfers."""
        started = time.perf_counter()
        _, found = index.search(queries[:rows], k)
        return found, time.perf_counter() - started

    def recall(found, truth) -> float:
        """Share of ``truth``'s ids among ``found``'s, per query, over the queries both searched; -1 (fewer
        than k results) is no id and never matches."""
        n = min(len(found), len(truth))
        hits = [len((set(found[i].tolist()) & set(truth[i].tolist())) - {-1}) / max(int((truth[i] >= 0).sum()), 1)
                for i in range(n)]
        return float(np.mean(hits)) if hits else float("nan")

    pq = f"PQ{p.dimension // 8}"  # 8 dimensions per sub-quantizer, 8-bit codes (GPU IVF-PQ's limit)
    exact = None  # the CPU Flat index's results: exact search, the ground truth of the IVF rows' notes
    previous = 0.0  # seconds the previous kind took: the next one (a larger build) takes at least as long
    for kind, spec in (("Flat", "Flat"), ("IVF-Flat", f"IVF{nlist},Flat"), ("IVF-PQ", f"IVF{nlist},{pq}")):
        if budget.spent() or budget.left() < previous:
            ctx.table.add("faiss", f"skipped: {kind}", note=(
                "the section's time budget is spent" if budget.spent() else
                f"{budget.left():.0f} s of the section's budget left, the previous index type took {previous:.0f} s"))
            continue
        kind_started = time.perf_counter()
        params = factory.default_search_params(spec)
        cpu_index = factory.create(spec, p.dimension)
        cpu_build = build(cpu_index, spec)
        factory.apply_search_params(cpu_index, params)
        truth, cpu_seconds = search(cpu_index, p.cpu_queries)
        if spec == "Flat":
            exact = truth
        copied = to_device(cpu_index, spec)
        set_params(copied, params)
        search(copied, min(100, p.queries))  # warm-up: GPU resources' first use, kernels
        found, seconds = search(copied, p.queries)
        against_exact = "" if exact is None or spec == "Flat" else (
            f"; recall@10 vs exact search: {label} {_cell(recall(found, exact))}, CPU {_cell(recall(truth, exact))}")
        ctx.table.add("faiss", f"{kind} {spec}: recall@10 of the {label} vs the CPU index", recall(found, truth),
                      rate(p.queries, seconds, "q/s"), rate(p.cpu_queries, cpu_seconds, "q/s"),
                      f"{p.vectors:,} x {p.dimension} clustered, {params or 'exact'}, k={k}, the CPU-built index "
                      f"moved ({'index_cpu_to_gpu' if on_gpu else 'clone_index'})"
                      f"{'; its q/s include the transfers of queries and results' if on_gpu else ''}{against_exact}")
        del copied
        if budget.left() > cpu_build + 5:
            fresh = to_device(factory.create(spec, p.dimension), spec)  # untrained: copied as is, trained there
            device_build = build(fresh, spec)
            set_params(fresh, params)
            found, _ = search(fresh, p.cpu_queries)
            ctx.table.add("faiss", f"{kind}: built on the {label} (train + add), recall@10 vs the CPU index",
                          recall(found, truth), f"{device_build:.2f} s build", f"{cpu_build:.2f} s build",
                          "k-means on another device gives other centroids: IVF recall below 1 is expected"
                          if factory.needs_training(spec) else "")
            del fresh
        previous = time.perf_counter() - kind_started
    _placement_rows(ctx, nlist, p.dimension)
    ctx.table.add("faiss", f"GPUs faiss sees: {gpus}", "", note=f"faiss {getattr(faiss, '__version__', '?')}")


def _placement_rows(ctx: Context, nlist: int = 1024, dimension: int = 256) -> None:
    try:
        from latentsweep.index import placement

        function = placement.gpu_capable
    except Exception as error:  # noqa: BLE001 - reported, not fatal
        ctx.table.add("faiss", "placement: unavailable", note=f"{type(error).__name__}: {error}")
        return
    for spec in ("Flat", f"IVF{nlist},Flat", f"IVF{nlist},PQ{dimension // 8}", "HNSW32"):
        try:
            result = _call_with_known(function, spec=spec, dimension=dimension)
            capable, why = result if isinstance(result, tuple) and len(result) == 2 else (bool(result), str(result))
            ctx.table.add("faiss", f"placement of {spec}", "GPU" if capable else "CPU", note=str(why))
        except Exception as error:  # noqa: BLE001 - its signature may change: report, never fail the check
            ctx.table.add("faiss", f"placement of {spec}: gpu_capable failed", note=f"{type(error).__name__}: {error}")


def _call_with_known(function, **known):
    """``function`` called with the values of ``known`` its parameters name, in its order (``spec``,
    ``dimension`` or their usual aliases); a required parameter this check cannot fill is a TypeError."""
    import inspect

    aliases = {"index_spec": "spec", "factory": "spec", "d": "dimension", "dim": "dimension", "dimensions": "dimension"}
    args = []
    for name, parameter in inspect.signature(function).parameters.items():
        key = aliases.get(name, name)
        if key in known and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            args.append(known[key])
        elif parameter.default is parameter.empty and parameter.kind not in (parameter.VAR_POSITIONAL,
                                                                              parameter.VAR_KEYWORD):
            raise TypeError(f"gpu_capable needs {name!r}, which this check does not know")
        else:
            break
    return function(*args)


def section_sweep(ctx: Context, budget: Budget) -> None:
    ctx.table.add("sweep", "skipped: a sweep with GPU placement vs bare faiss-gpu",
                  note="needs an index built by the index stage and a query job on Ray, beyond this check's 8 "
                       "minutes; the faiss rows above measure the same index_cpu_to_gpu copy the query actors make. "
                       "End to end: benchmarks/bench_sweep.py on a GPU node")


SECTIONS = (("encode", section_encode), ("tf32", section_tf32), ("half", section_half),
            ("descriptors", section_descriptors), ("bitstream", section_bitstream), ("ray", section_ray),
            ("faiss", section_faiss), ("sweep", section_sweep))


# -- main -------------------------------------------------------------------------------------------

class Watchdog:
    """The hard end of the 8 minutes. A section's budget only stops its loops from starting new work; one
    call can outlast it (a FAISS build, a Ray job, a hung device). At ``deadline`` this thread adds a row
    naming the section still running, prints the table as it stands, stops a local Ray this process
    started (at most 10 s) and ends the process with exit status 1. It runs while the main thread is inside
    torch, FAISS or Ray calls, which release the GIL."""

    def __init__(self, table: Table, deadline: float):
        self.table, self.lock, self.printed = table, threading.Lock(), False
        self.section, self.section_started = "", 0.0
        self.timer = threading.Timer(max(deadline - time.perf_counter(), 0.0), self._expire)
        self.timer.daemon = True
        self.timer.start()

    def enter(self, name: str) -> None:
        self.section, self.section_started = name, time.perf_counter()

    def print_table(self) -> bool:
        """Print the table once (the main thread at the end, or the watchdog); False when already printed."""
        with self.lock:
            if self.printed:
                return False
            self.printed = True
            self.timer.cancel()
            print(self.table.markdown(), flush=True)
            return True

    def _expire(self) -> None:
        with self.lock:  # the main thread may be printing the table right now: then nothing is cut
            if self.printed:
                return
            self.printed = True
            name = self.section or "check"
            elapsed = time.perf_counter() - self.section_started if self.section else 0.0
            self.table.add(name, f"stopped: still running at {HARD_SECONDS} s, the check's hard limit",
                           note=f"{elapsed:.0f} s into the section; the sections after it did not run")
            self.table.seconds(name, elapsed)
            print(f"\n[{name}] stopped at the {HARD_SECONDS} s limit\n", flush=True)
            print(self.table.markdown(), flush=True)
        ray = sys.modules.get("ray")
        if ray is not None and getattr(ray, "is_initialized", lambda: False)():
            stopper = threading.Thread(target=ray.shutdown, daemon=True)
            stopper.start()
            stopper.join(10)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _load() -> str:
    """The 1-minute load average (other work on the machine moves every rate), where the OS has one."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("GPU_CHECK_QUICK", "") not in ("", "0"),
                        help="tiny sizes (64 and 128 px, 10,000 vectors of 64 dims), Ray skipped: seconds (env GPU_CHECK_QUICK=1)")
    parser.add_argument("--cpu", action="store_true", help="the CPU half even where CUDA is present")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own; 1 with --quick, which a shared machine's "
                             "thread barriers slow least)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import torch

    threads = args.threads or (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    profile = PROFILES["quick" if args.quick else "gpu" if cuda else "cpu"]
    table = Table(device)
    images, origin = check_images(profile.sizes)
    print(f"gpu-check: python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{torch.get_num_threads()} CPU threads, {os.cpu_count()} CPUs, load {_load()}", flush=True)
    if cuda:
        major, minor = torch.cuda.get_device_capability(0)
        print(f"device: {torch.cuda.get_device_name(0)}, compute capability {major}.{minor} "
              f"({'TF32 tensor cores' if major >= 8 else 'no TF32'}), cuDNN {torch.backends.cudnn.version()}", flush=True)
    else:
        print("no CUDA device: CPU half only" if not args.cpu else "--cpu: CPU half only", flush=True)
    sizes = ", ".join(f"{count} x {side}x{side}" for side, count in profile.sizes.items())
    print(f"profile {profile.name}: images {sizes} ({origin}); FAISS {profile.vectors:,} x {profile.dimension}, "
          f"{profile.queries:,} queries", flush=True)
    from latentsweep.codec import weights

    print(f"codec weights: shipped {weights.DEFAULT_WEIGHTS.name} (sha256 {weights.digest()[:16]}, weights_only=True)",
          flush=True)
    present = {name: available(name) for name in ("constriction", "ray", "faiss", "skimage")}
    print("installed: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in present.items()), flush=True)

    ctx = Context(device, profile, images, table)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    deadline = started + TOTAL_SECONDS
    watchdog = Watchdog(table, started + HARD_SECONDS)
    failed = interrupted = False
    for name, function in SECTIONS:
        if only and name not in only:
            continue
        allowed = min(profile.budgets[name], deadline - time.perf_counter())
        if allowed <= 0:
            table.add(name, "skipped: the check's time budget is spent")
            continue
        section_started = time.perf_counter()
        watchdog.enter(name)
        try:
            function(ctx, Budget(allowed))
        except BaseException as error:  # noqa: BLE001 - one failed section must not hide the others or the table
            failed = True
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            message = str(error).splitlines()[0] if str(error).strip() else ""
            table.add(name, f"error: {type(error).__name__}{': ' + message if message else ''}"[:300])
            traceback.print_exc()
        elapsed = time.perf_counter() - section_started
        table.seconds(name, elapsed)
        print(f"[{name}] {elapsed:.1f} s (budget {allowed:.0f} s)", flush=True)
        if interrupted:  # Ctrl-C (or an exit inside a section): the table of what ran, then stop
            break
    watchdog.timer.cancel()  # every section has returned: nothing left to cut
    print(f"\ntotal {time.perf_counter() - started:.1f} s, load {_load()}\n", flush=True)
    watchdog.print_table()
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
