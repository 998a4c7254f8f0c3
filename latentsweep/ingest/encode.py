"""Fetched inputs -> vectors: images through the codec and the pixel descriptors, exported latents
(``.pt``) pooled directly, bitstreams (``.jai``) entropy-decoded and through the hyperprior only, their
descriptors read from the file's forensic field (neither has pixels: a descriptor the input does not
carry at this latentsweep's version stays empty and is written as null). Loads the codec once; a bad
image never sinks its batch (the batch is retried one by one). Device faults are never an item's
error: out of memory halves the batch (and keeps it halved), down to one image; any other device
fault, or out of memory on one image, is raised as :class:`~latentsweep.accelerator.AcceleratorFault`
for the worker to end its process."""

from __future__ import annotations

import numpy as np

from latentsweep.accelerator import AcceleratorFault, is_fault, out_of_memory
from latentsweep.codec.settings import EmbedSettings
from latentsweep.descriptors import columns as descriptor_columns, describe
from latentsweep.ingest.decode import Fetched


class Encoder:
    def __init__(self, settings: EmbedSettings, torch_threads: int | None = None):
        import torch

        from latentsweep.codec.embed import Embedder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.embedder = Embedder(settings)
        self.descriptors = descriptor_columns() if settings.descriptors else {}
        self.columns = {**self.embedder.columns, **self.descriptors}
        self.bitstreams = None  # the entropy decoder (codec.bitstream), made at the first .jai input
        self.fits = settings.max_batch  # images per codec call; halved by each out-of-memory

    def encode(self, items: list[Fetched]) -> dict[str, np.ndarray]:
        """``{column: float32 (n, dim)}`` for ``items``; items that fail here get their
        ``error_type`` and ``message`` set (their vector rows stay zero and are not written)."""
        vectors = {name: np.zeros((len(items), dim), np.float32) for name, dim in self.columns.items()}
        for name in self.descriptors:  # NaN until computed from pixels: written as NULL (ingest/write.py)
            vectors[name][:] = np.nan
        images = [i for i, item in enumerate(items) if not item.error_type and item.source == "image"]
        if images:
            try:
                pooled = self._embed([items[i].image for i in images])
                for name, values in pooled.items():
                    vectors[name][images] = values
                for i in images:
                    self._describe(items[i], i, vectors)
            except Exception as error:  # one bad image must not sink its batch: retry one by one
                _raise_fault(error)
                for i in images:
                    self._embed_one(items[i], i, vectors)
        for i, item in enumerate(items):
            if not item.error_type and item.source == "latents":
                self._pool_latents(item, i, vectors)
        bitstreams = [i for i, item in enumerate(items) if not item.error_type and item.source == "bitstream"]
        if bitstreams:
            self._pool_bitstreams([items[i] for i in bitstreams], bitstreams, vectors)
        return vectors

    def _embed(self, images: list) -> dict[str, np.ndarray]:
        """The codec's pooled columns of ``images``, at most :attr:`fits` a call; out of memory halves
        :attr:`fits` and retries, and is a fault once a single image does not fit."""
        start, parts = 0, []
        while start < len(images):
            try:
                parts.append(self.embedder.embed(images[start:start + self.fits]))
                start += self.fits
            except Exception as error:
                if not out_of_memory(error) or self.fits == 1:
                    raise
                self.fits //= 2
                _free_device_memory()
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _describe(self, item: Fetched, i: int, vectors: dict) -> None:
        if self.descriptors:
            for name, values in describe(item.image, self.embedder.device).items():
                vectors[name][i] = values

    def _embed_one(self, item: Fetched, i: int, vectors: dict) -> None:
        try:
            for name, values in self.embedder.embed([item.image]).items():
                vectors[name][i] = values[0]
            self._describe(item, i, vectors)
        except Exception as error:
            _raise_fault(error)
            item.error_type, item.message = "encode_failed", f"{type(error).__name__}: {error}"

    def _pool_latents(self, item: Fetched, i: int, vectors: dict) -> None:
        from latentsweep.codec import pooling, reference

        try:
            tensors = reference.read(item.latents)
            missing = [name for name in self.embedder.columns if name not in tensors]
            if missing:
                raise reference.LatentFileError(
                    f"the file lacks {', '.join(missing)} needed by feature set "
                    f"{self.embedder.settings.feature_set!r}")
            for name in self.embedder.columns:
                tensor = tensors[name]
                vectors[name][i] = pooling.pool(tensor, [tuple(tensor.shape[2:])],
                                                self.embedder.settings.pooling)[0].numpy()
        except reference.LatentFileError as error:
            item.error_type, item.message = "bad_latents", str(error)

    def _pool_bitstreams(self, items: list[Fetched], rows: list[int], vectors: dict) -> None:
        """``.jai`` bitstreams: entropy decoding, the hyper-decoder and the latent prediction only (no
        analysis, no synthesis), same-size files as one batch; pooled over each image's valid area as an
        image's latents are. The pixel descriptors come from the file's forensic field, as compress
        quantised them from the original pixels."""
        from latentsweep.bitstream.codec import BitstreamCodec
        from latentsweep.bitstream.space import missing_columns, missing_columns_reason
        from latentsweep.bitstream.container import BitstreamError

        missing = missing_columns(self.embedder.columns)
        if missing:  # a source of bitstreams only is refused before the job (ingest/run.py); mixed ones get rows
            for item in items:
                item.error_type = "bad_bitstream"
                item.message = missing_columns_reason(self.embedder.settings.feature_set, missing)
            return
        if self.bitstreams is None:
            self.bitstreams = BitstreamCodec(self.embedder)
        try:
            results = self.bitstreams.latents_batch([item.latents for item in items])
        except Exception as error:  # one odd file must not sink its batch: retry one by one
            _raise_fault(error)
            results = [self._latents_one(item) for item in items]
        for item, i, result in zip(items, rows, results):
            _raise_fault(result)
            if isinstance(result, BitstreamError):
                item.error_type, item.message = result.error_type, str(result)
            elif isinstance(result, Exception):
                item.error_type, item.message = "encode_failed", f"{type(result).__name__}: {result}"
            else:
                self._pool_decoded(*result, i, vectors)

    def _latents_one(self, item: Fetched):
        """The item's (tensors, header), or the exception that stopped it."""
        try:
            return self.bitstreams.latents(item.latents)
        except Exception as error:
            return error

    def _pool_decoded(self, tensors: dict, header, i: int, vectors: dict) -> None:
        from latentsweep.bitstream.forensic import carried

        for name, values in self.embedder.pool(tensors, [(header.height, header.width)]).items():
            vectors[name][i] = values[0]
        for name, values in carried(header, self.descriptors).items():
            vectors[name][i] = values


def _raise_fault(error) -> None:
    """Raise ``error`` as an :class:`AcceleratorFault` when it is the device's, not the input's."""
    if isinstance(error, BaseException) and is_fault(error):
        raise AcceleratorFault(f"{type(error).__name__}: {error}") from error


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
