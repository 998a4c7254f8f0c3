"""The ``compress`` and ``decompress`` jobs: a corpus to ``.jai`` bitstreams and back to PNGs, on Ray.

Both take a SOURCE as ingest does (a folder, an ``s3://`` prefix or a manifest; listed by
``ingest/sources.list_source``) and write one file per input under ``--out``, keeping the input's
path relative to SOURCE (a manifest's folder for a manifest; inputs elsewhere go under
``_external/``) and its stem: ``photos/a/b.png`` -> ``DIR/a/b.jai`` -> ``PNG/a/b.png``. So results
join back to the originals, and ``DIR`` is itself an ingest SOURCE.

The driver lists and maps names (two inputs with one output name: the second is an error
``name_clash``) and hands chunks of items to a pool of :class:`CodecWorker` actors, each holding the
codec once; workers read, code and write their items and send back counts. Resume is per item: an
existing output whose recorded source id (the input's ETag or mtime), codec weights and forensic field
(the descriptors and their versions this run writes) match is kept; every write is atomic
(``storage.write_bytes``), so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import os
import posixpath
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from latentsweep import lock, storage
from latentsweep.bitstream import container, forensic
from latentsweep.errors import UsageError
from latentsweep.ingest.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DecodeError

MODES = {"compress": container.SUFFIX, "decompress": ".png"}
PNG_SOURCE_KEY = "latentsweep.source"   # PNG text chunks of a decompressed image: the bitstream's
PNG_WEIGHTS_KEY = "latentsweep.weights"  # version id and the weights and adapters that decoded it (provenance, resume)
CHUNK = 8  # items a worker call
MAX_ERROR_LINES = 100  # failed inputs named on stderr; the summary counts them all
EXTERNAL = "_external"


@dataclass
class CodecJob:
    mode: str  # compress | decompress
    source: str
    out: str
    weights: str | None = None
    device: str = "auto"
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    overwrite: bool = False
    quiet: bool = False
    address: str | None = None
    adapters: str | None = None  # SFMA adapters (a checkpoint path): compress runs their encoder part, decompress their decoder part
    descriptors: bool = True  # compress: the original pixels' descriptors in each file's forensic field


@dataclass
class CodecSummary:
    mode: str
    source: str
    out: str
    inputs: int = 0
    written: int = 0
    already_done: int = 0
    skipped_unsupported: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    bitstream_bytes: int = 0  # of every output (compress) or input (decompress) bitstream, done ones included
    pixels: int = 0
    bits_per_pixel: float = 0.0
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def check(job: CodecJob) -> None:
    from latentsweep.codec import weights
    from latentsweep.resources import DEVICES

    if job.mode not in MODES:
        raise UsageError(f"unknown mode {job.mode!r}")
    if job.device not in DEVICES:
        raise UsageError(f"unknown --device {job.device!r}: choose one of {', '.join(DEVICES)}")
    for name in ("max_pixels", "min_side"):
        if getattr(job, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(job, name)}")
    if job.workers is not None and job.workers < 1:
        raise UsageError("--workers must be at least 1")
    # a missing or corrupt checkpoint, or adapters without the part this mode runs, is refused before Ray starts
    weights.digest(job.weights, job.adapters, part="encoder" if job.mode == "compress" else "decoder")


def input_suffixes(mode: str) -> tuple[str, ...]:
    from latentsweep.ingest.sources import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES if mode == "compress" else (container.SUFFIX,)


def output_name(root: storage.Location, uri: str, suffix: str) -> str:
    """The output's path below ``--out``: the input's path relative to ``root``, stem kept, suffix
    replaced; an input outside ``root`` (a manifest's absolute entry) goes under ``_external/``."""
    location = storage.Location.parse(uri)
    base = root.key.rstrip("/")
    inside = location.scheme == root.scheme and location.bucket == root.bucket and (
        not base or location.key.startswith(base + ("/" if location.is_s3 else os.sep)))
    if inside:
        relative = location.key[len(base):].lstrip("/").replace(os.sep, "/")
    else:
        relative = posixpath.join(EXTERNAL, location.bucket or "", location.key.replace(os.sep, "/").lstrip("/"))
    folder, name = posixpath.split(relative)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    parts = [part for part in folder.split("/") if part and part != "."]
    if ".." in parts:
        parts = [EXTERNAL] + [part for part in parts if part != ".."]
    return posixpath.join(*parts, stem + suffix)


def _listing_batches(listing):
    """The listing's record batches (the listing streams batches; an older one held a table)."""
    batches = getattr(listing, "batches", None)
    return batches if batches is not None else listing.table.to_batches()


def plan(job: CodecJob) -> tuple[list[tuple[str, str, str]], list[dict], int]:
    """(items to do as (input URI, input version, output URI), clashes as result records, skipped)."""
    from latentsweep.ingest.sources import is_manifest, list_source

    source = storage.Location.parse(job.source)
    root = source
    if is_manifest(job.source):
        root = storage.Location(source.scheme, source.bucket,
                                posixpath.dirname(source.key) if source.is_s3 else os.path.dirname(source.key))
    out = storage.Location.parse(job.out)
    suffixes = input_suffixes(job.mode)
    listing = list_source(job.source)
    items, clashes, skipped, taken = [], [], 0, {}
    for batch in _listing_batches(listing):
        for uri, version in zip(batch.column("uri").to_pylist(), batch.column("version").to_pylist()):
            if not uri.lower().endswith(suffixes):
                skipped += 1
                continue
            target = out.join(*output_name(root, uri, MODES[job.mode]).split("/")).uri
            if target in taken:
                clashes.append({"uri": uri, "status": "error", "error_type": "name_clash",
                                "message": f"{uri} and {taken[target]} both map to {target}"})
                continue
            taken[target] = uri
            items.append((uri, version or "", target))
    return items, clashes, skipped + getattr(listing, "skipped", 0)


def run(job: CodecJob, log=None) -> CodecSummary:
    from latentsweep.console import stage_log

    log = log or stage_log(job.quiet)
    started = time.monotonic()
    check(job)
    summary = CodecSummary(job.mode, job.source, storage.Location.parse(job.out).uri)
    items, results, summary.skipped_unsupported = plan(job)
    summary.inputs = len(items) + len(results)
    if not summary.inputs:
        kind = "images" if job.mode == "compress" else "bitstreams (.jai)"
        raise UsageError(f"no {kind} found in {job.source}")
    choice = _join(job, log) if items else None
    with lock.hold(storage.Location.parse(job.out), job.mode) as held:
        if items:
            results += _process(job, items, summary, log, held, choice)
    errors: Counter = Counter()
    for result in results:
        if result["status"] == "error":  # no error table here: failed inputs are named, even with -q
            errors[result["error_type"]] += 1
            if sum(errors.values()) <= MAX_ERROR_LINES:
                print(f"{job.mode}: {result['uri']}: {result['error_type']}: {result['message']}", file=sys.stderr)
        else:
            summary.written += result["status"] == "written"
            summary.already_done += result["status"] == "done"
            summary.bitstream_bytes += result["bitstream_bytes"]
            summary.pixels += result["pixels"]
    summary.errors = dict(sorted(errors.items()))
    if summary.failed > MAX_ERROR_LINES:
        print(f"{job.mode}: ... and {summary.failed - MAX_ERROR_LINES} more failed inputs", file=sys.stderr)
    summary.bits_per_pixel = round(8 * summary.bitstream_bytes / summary.pixels, 4) if summary.pixels else 0.0
    summary.seconds = round(time.monotonic() - started, 2)
    summary.images_per_second = round(summary.written / summary.seconds, 2) if summary.seconds else 0.0
    return summary


def _join(job: CodecJob, log):
    """Join (or start) Ray, decide the device and check that every node sees local paths, before the
    output is claimed (as ingest does)."""
    from latentsweep.cluster import connect, device_choice, require_shared_io

    connect(job.address, quiet=job.quiet)
    choice = device_choice(job.device)
    log(f"{job.mode}: {choice.reason}")
    out = storage.Location.parse(job.out)
    require_shared_io(job.source, out)
    return choice


def _process(job: CodecJob, items: list, summary: CodecSummary, log, held, choice) -> list[dict]:
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from latentsweep.cluster import MAX_GPU_REQUEST, WAIT_FOR_GPUS_SECONDS, encoder_pool, release_request

    chunks = [items[start:start + CHUNK] for start in range(0, len(items), CHUNK)]
    layout = encoder_pool(choice, job.workers, min(len(chunks), MAX_GPU_REQUEST), WAIT_FOR_GPUS_SECONDS, log)
    if layout["device"] == "cuda":
        release_request()
    size = min(layout["size"], len(chunks))
    summary.workers = size
    worker = ray.remote(CodecWorker).options(num_cpus=layout["num_cpus"], num_gpus=layout["num_gpus"])
    settings = {"mode": job.mode, "weights": job.weights, "device": layout["device"], "threads": layout["threads"],
                "max_pixels": job.max_pixels, "min_side": job.min_side, "overwrite": job.overwrite,
                "adapters": job.adapters, "descriptors": job.descriptors}
    pool = ActorPool([worker.remote(**settings) for _ in range(size)])
    log(f"{job.mode}: {len(items)} items on {size} workers")
    results = []
    with tqdm(total=len(items), unit="img", desc=job.mode, disable=job.quiet, file=sys.stderr) as bar:
        for chunk_results in pool.map_unordered(lambda actor, chunk: actor.process.remote(chunk), chunks):
            held.check()
            results += chunk_results
            bar.update(len(chunk_results))
    return results


class CodecWorker:
    """One actor of the pool: the codec loaded once; :meth:`process` codes a chunk of items."""

    def __init__(self, mode: str, weights: str | None, device: str, threads: int | None, max_pixels: int,
                 min_side: int, overwrite: bool, adapters: str | None = None, descriptors: bool = True):
        import torch

        from latentsweep.bitstream.codec import BitstreamCodec
        from latentsweep.codec.embed import Embedder
        from latentsweep.codec.settings import EmbedSettings

        from latentsweep.accelerator import compute_device

        if threads:
            torch.set_num_threads(threads)
        device = compute_device(device)
        self.mode, self.max_pixels, self.min_side, self.overwrite = mode, max_pixels, min_side, overwrite
        self.field = forensic.current_versions() if descriptors else {}  # what a compressed file's field holds
        self.codec = BitstreamCodec(Embedder(EmbedSettings(weights=weights, device=device, descriptors=False,
                                                           adapters=adapters)))

    def process(self, chunk: list[tuple[str, str, str]]) -> list[dict]:
        return [self.one(*item) for item in chunk]

    def one(self, uri: str, version: str, target: str) -> dict:
        result = {"uri": uri, "status": "written", "bitstream_bytes": 0, "pixels": 0}
        try:
            version = version or storage.info(uri).version
            done = None if self.overwrite else self._existing(uri, target, version)
            if done is not None:
                return {**result, **done, "status": "done"}
            data = storage.read_bytes(uri)
            if self.mode == "compress":
                from latentsweep.ingest.decode import decode_image

                image = decode_image(data, self.max_pixels, self.min_side)
                bits, _ = self.codec.compress(image, version, bool(self.field))
                storage.write_bytes(target, bits)
                return {**result, "bitstream_bytes": len(bits), "pixels": image.shape[0] * image.shape[1]}
            bitstream = container.unpack(data, self.max_pixels)
            image = self.codec.decompress(bitstream)
            storage.write_bytes(target, self._png(image, version))
            return {**result, "bitstream_bytes": len(data), "pixels": bitstream.height * bitstream.width}
        except (DecodeError, container.BitstreamError) as error:
            return {**result, "status": "error", "error_type": error.error_type, "message": str(error)}
        except storage.StorageError as error:
            if error.systemic:
                raise
            return {**result, "status": "error", "error_type": "unreadable", "message": str(error)}
        except OSError as error:  # vanished files, permissions
            return {**result, "status": "error", "error_type": "unreadable",
                    "message": storage.redact(f"{type(error).__name__}: {error}")}
        except Exception as error:  # one odd input must not stop the job
            failed = "encode_failed" if self.mode == "compress" else "decode_failed"
            return {**result, "status": "error", "error_type": failed,
                    "message": storage.redact(f"{type(error).__name__}: {error}")}

    def _existing(self, uri: str, target: str, version: str) -> dict | None:
        """The counts of a valid output of this input version made with these weights, else None."""
        if not storage.exists(target):
            return None
        try:
            data = storage.read_bytes(target)
            if self.mode == "compress":
                bitstream = container.unpack(data)
                self.codec.check(bitstream)
                if bitstream.source_id != container.source_id(version) or forensic.versions(bitstream) != self.field:
                    return None
                return {"bitstream_bytes": len(data), "pixels": bitstream.height * bitstream.width}
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                text = getattr(image, "text", {})
                if (text.get(PNG_SOURCE_KEY) != container.source_id(version).hex()
                        or text.get(PNG_WEIGHTS_KEY) != self.codec.decoder_digest):
                    return None
                image.load()  # a truncated PNG is redone
                return {"bitstream_bytes": storage.info(uri).size, "pixels": image.width * image.height}
        except Exception:  # an unreadable or foreign file where the output goes: it is redone
            return None

    def _png(self, image, version: str) -> bytes:
        import io

        from PIL import Image, PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_text(PNG_SOURCE_KEY, container.source_id(version).hex())
        info.add_text(PNG_WEIGHTS_KEY, self.codec.decoder_digest)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()
