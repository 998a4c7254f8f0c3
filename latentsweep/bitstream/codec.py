"""Real bitstreams of the codec: image -> ``.jai`` bytes -> latents (no synthesis) or pixels.

:class:`BitstreamCodec` holds a loaded codec and its deterministic entropy models
(``codec/coding.py``), and does three things:

- :meth:`~BitstreamCodec.compress`: the analysis transforms and the hyperprior, exactly as ingest runs
  them (:class:`~latentsweep.codec.embed.Embedder`), then ``z_hat`` and ``residual_quant`` of both
  branches range-coded into the container (``codec/container.py``), with the original pixels'
  descriptors in its forensic field (``forensic.py``).
- :meth:`~BitstreamCodec.latents` (:meth:`~BitstreamCodec.latents_batch` for many): the paper's
  "decoding-free" path. Entropy decoding, the hyper-decoder and the latent prediction give ``z_hat``,
  ``psi``, ``mu``, ``scale``, ``residual_quant``, ``residual`` and ``y_hat``; neither the analysis nor
  the synthesis transform runs, and ``y`` and ``z`` do not exist (they are never coded).
- :meth:`~BitstreamCodec.decompress`: :meth:`latents`, then the synthesis transforms -> RGB uint8.

The scale level of each residual is computed from ``z_hat`` by float64 copies of the hyper- and scale
decoders (``coding.level_of``), so encoder and decoder agree on every machine; the exported float32
tensors come from the model's own modules, run over same-size files at once, and equal the encoder's to
the bit whatever else is in the batch (:func:`_in_batch_of_two`). The decoder tries the levels of those
float32 tensors first, which it computes anyway, and runs the float64 copies only for a file whose
symbols fail their checksum at them (:meth:`BitstreamCodec._decode_residuals`).

The float64 copies always run on the CPU (:data:`LEVELS_DEVICE`), also when the codec runs on a GPU:
``z_hat`` holds small integers, so moving it is exact, and the levels are then one function of the file on
every machine (a GPU's float64 convolutions sum in another order than the CPU's, and a position near a
level boundary would get another level, and so a file that another device's decoder refuses by its
CRC). It also keeps float64 off GPUs that run it at 1/32-1/64 of their float32 rate (L4, A10G, T4).
On the CPU this is the very computation it always was: same modules, same dtype, same threads.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch

from latentsweep.bitstream import coding, container, forensic
from latentsweep.codec import colour
from latentsweep.bitstream.container import Bitstream, BitstreamError, Stream, digest_id, symbols_crc
from latentsweep.bitstream.space import DECODED_TENSORS, provenance_mismatch
from latentsweep.codec.layout import CODEC_NAME, TENSOR_STRIDES

BRANCHES = ("luma", "chroma")
STREAMS = (("z", "luma"), ("z", "chroma"), ("r", "luma"), ("r", "chroma"))  # the container's order
LEVELS_DEVICE = torch.device("cpu")  # where the float64 scale levels run, whatever the codec's device
PREDICTION_BATCH = 8  # files of one size per hyper-decoder pass; below 16, where torch would switch a
# single-threaded 1x1 convolution's kernel and so its last bits


class BitstreamCodec:
    def __init__(self, embedder):
        """``embedder``: a loaded :class:`~latentsweep.codec.embed.Embedder` (model, device, digest)."""
        self.embedder = embedder
        self.model = embedder.model
        self.device = embedder.device
        self.weights_digest = embedder.base_digest  # the weights every decoder shares; adapters come on top
        parts = embedder.adapters.parts if embedder.adapters is not None else ()
        # the encoder adapters that made a file's latents (b"": none), and what makes decoded pixels (PNG provenance)
        self.adapters_id = digest_id(embedder.adapters_digest) if "encoder" in parts else b""
        self.decoder_digest = embedder.weights_digest if "decoder" in parts else embedder.base_digest
        self.models = coding.EntropyModels.build({
            branch: getattr(self.model, f"{branch}_z_density").log_scale.detach().double().cpu().numpy()
            for branch in BRANCHES})
        self.entropy_id = bytes.fromhex(self.models.digest)[:8]
        self._levels = {}
        for branch in BRANCHES:
            predictor = getattr(self.model, f"{branch}_predictor")
            modules = torch.nn.Sequential(copy.deepcopy(predictor.hyper_decoder),
                                          copy.deepcopy(predictor.scale_decoder))
            self._levels[branch] = modules.to(LEVELS_DEVICE, torch.float64,
                                              memory_format=torch.contiguous_format).eval()

    # -- encoder ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def compress(self, image: np.ndarray, source_version: str | None = None,
                 descriptors: bool = True) -> tuple[bytes, dict]:
        """uint8 RGB (H, W, 3) -> (file bytes, the model's tensors of this image, for checks).
        ``source_version``: the input's ETag or mtime, recorded (as an 8-byte id) for resume.
        ``descriptors``: the pixel descriptors go into the forensic field (False: a file without one). The hyperprior
        runs again on the analysis' ``y`` as the decoder runs it (:func:`_in_batch_of_two`), so the
        decoder's tensors equal these to the bit."""
        tensors, _ = self.embedder.exported([image])
        for branch in BRANCHES:
            predictor = getattr(self.model, f"{branch}_predictor")
            predicted = _in_batch_of_two(predictor, tensors[f"y_{branch}"].float())
            tensors.update({f"{name}_{branch}": value for name, value in predicted.items()})
        height, width = image.shape[:2]
        streams = []
        for branch in BRANCHES:
            z_hat = _integers(tensors[f"z_hat_{branch}"][0])
            streams.append(Stream(symbols_crc(z_hat), coding.encode_z(self.models, branch, z_hat).tobytes()))
        for branch in BRANCHES:
            residual = _integers(tensors[f"residual_quant_{branch}"][0])
            levels = self.levels(branch, tensors[f"z_hat_{branch}"])[0]
            words = coding.encode_residual(self.models, residual, levels)
            streams.append(Stream(symbols_crc(residual), words.tobytes()))
        field = forensic.describe(image, self.device) if descriptors else {}
        data = container.pack(Bitstream(height, width, CODEC_NAME, digest_id(self.weights_digest), self.entropy_id,
                                        self.adapters_id, container.source_id(source_version), streams, field))
        return data, tensors

    @torch.inference_mode()
    def levels(self, branch: str, z_hat: torch.Tensor) -> np.ndarray:
        """Scale level of every residual position (B, C, h, w), from ``z_hat`` (B, C, h/4, w/4) in float64, on
        the CPU (:data:`LEVELS_DEVICE`) wherever ``z_hat`` lives: its integers move exactly."""
        log_scale = _in_batch_of_two(self._levels[branch], z_hat.to(LEVELS_DEVICE, torch.float64).contiguous())
        return coding.level_of(log_scale.numpy())

    # -- decoder ---------------------------------------------------------------------------------

    def check(self, bitstream: Bitstream, any_adapters: bool = False) -> None:
        """Refuse a file this codec cannot decode, saying why. Any decoder, with decoder adapters or without,
        decodes a file of any encoder adapters to pixels (``any_adapters``: adapters never touch the entropy
        coding); latents must come from the loaded encoder adapters, or rows of two embedding spaces would mix."""
        if bitstream.codec != CODEC_NAME:
            raise BitstreamError(f"coded by codec {bitstream.codec!r}; this latentsweep decodes {CODEC_NAME!r}")
        mismatch = provenance_mismatch(bitstream, self.weights_digest, self.adapters_id, any_adapters)
        if mismatch:
            raise BitstreamError(mismatch)
        if bitstream.entropy_id != self.entropy_id:
            raise BitstreamError(f"coded with entropy tables {bitstream.entropy_id.hex()}; this decoder builds "
                                 f"{self.entropy_id.hex()} (another latentsweep version or platform)")
        if len(bitstream.streams) != len(STREAMS):
            raise BitstreamError(f"corrupt bitstream: {len(bitstream.streams)} streams, expected {len(STREAMS)} "
                                 f"({', '.join(container.STREAM_NAMES)})")
        forensic.check(bitstream)

    @torch.inference_mode()
    def latents(self, data: bytes | Bitstream, max_pixels: int | None = None,
                any_adapters: bool = False) -> tuple[dict[str, torch.Tensor], Bitstream]:
        """File bytes -> ``{"z_hat_luma": (1, C, h, w), ...}`` at the padded size, and the parsed file."""
        [result] = self.latents_batch([data], max_pixels, any_adapters)
        if isinstance(result, BitstreamError):
            raise result
        return result

    @torch.inference_mode()
    def latents_batch(self, files: list[bytes | Bitstream], max_pixels: int | None = None, any_adapters: bool = False
                      ) -> list[tuple[dict[str, torch.Tensor], Bitstream] | BitstreamError]:
        """:meth:`latents` of many files, in their order; a file this codec refuses is its
        :class:`BitstreamError`, in its place. Files of one padded size run the hyper-decoder, the scale levels
        and the latent prediction as one batch (~20 small convolutions that dominated one-file decoding); a
        file's tensors are the same bits alone or in any batch."""
        results: list = [None] * len(files)
        parsed = {}  # index -> (parsed file, its z_hat per branch)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, data in enumerate(files):
            try:
                parsed[index] = self._decode_z(data, max_pixels, any_adapters)
            except BitstreamError as error:
                results[index] = error
                continue
            by_size[colour.padded_size(parsed[index][0].height, parsed[index][0].width)].append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), PREDICTION_BATCH):
                chunk = indices[start:start + PREDICTION_BATCH]
                hyper = self._hyper([parsed[index][1] for index in chunk])
                symbols = {}
                for index, item in zip(chunk, self._decode_residuals([parsed[index] for index in chunk], hyper)):
                    if isinstance(item, BitstreamError):
                        results[index] = item
                    else:
                        symbols[index] = item
                if symbols:  # the hyper-decoders' output serves the batch it was run on, not a part of it
                    tensors = self._predict(list(symbols.values()), hyper if len(symbols) == len(chunk) else None)
                    for position, index in enumerate(symbols):
                        results[index] = ({name: value[position:position + 1] for name, value in tensors.items()},
                                          parsed[index][0])
        return results

    def _decode_z(self, data: bytes | Bitstream, max_pixels: int | None,
                  any_adapters: bool) -> tuple[Bitstream, dict[str, torch.Tensor]]:
        """One file -> (the parsed file, ``{"luma": z_hat (1, C, h, w) float32, "chroma": ...}``)."""
        bitstream = data if isinstance(data, Bitstream) else container.unpack(data, max_pixels)
        self.check(bitstream, any_adapters)
        height, width = colour.padded_size(bitstream.height, bitstream.width)
        z_hats = {}
        for branch in BRANCHES:
            channels = getattr(self.model, f"{branch}_z_density").log_scale.numel()
            z_shape = (channels, height // TENSOR_STRIDES["z_hat"], width // TENSOR_STRIDES["z_hat"])
            stream = bitstream.streams[STREAMS.index(("z", branch))]
            z_hat = coding.decode_z(self.models, branch, _words(stream), z_shape)
            _verify(stream, z_hat, f"z_hat {branch}")
            z_hats[branch] = torch.from_numpy(z_hat).float()[None].to(self.device)
        return bitstream, z_hats

    def _hyper(self, z_hats: list[dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
        """Same-size files' ``z_hat`` -> ``{branch: {"psi": ..., "log_scale": ...}}`` of the batch, float32, by the
        model's own modules (:meth:`LatentPredictor.hyper`), as the prediction takes them."""
        return {branch: _in_batch_of_two(getattr(self.model, f"{branch}_predictor").hyper,
                                         _batch([item[branch] for item in z_hats]))
                for branch in BRANCHES}

    def _decode_residuals(self, files: list[tuple[Bitstream, dict[str, torch.Tensor]]],
                          hyper: dict[str, dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor] | BitstreamError]:
        """Same-size files' z_hat -> each file's ``{"z_hat_luma": ..., "residual_quant_luma": ...}``, or the
        error that refused it. The residuals are decoded first at the levels of the float32 log-scales of
        ``hyper`` (:meth:`_hyper`), which the prediction needs anyway: they differ from the float64 levels
        the encoder used by ~1e-5 in the log-scale, so they agree but where a position lies that close to a
        level boundary (in ~5% of 128x128 files, one position). A file whose symbols then fail their
        checksum, or the range decoder, is decoded again at the float64 levels (:meth:`levels`, one batch
        for all such files), and only that verdict counts: a file decodes to the very symbols, or the
        very refusal, of the float64 levels alone, at ~1/6 of their cost."""
        rough = {branch: coding.level_of(hyper[branch]["log_scale"].to(LEVELS_DEVICE, torch.float64).numpy())
                 for branch in BRANCHES}
        out = [self._decode_residual(item, {branch: rough[branch][position] for branch in BRANCHES})
               for position, item in enumerate(files)]
        again = [position for position, item in enumerate(out) if isinstance(item, BitstreamError)]
        if again:
            exact = {branch: self.levels(branch, torch.cat([files[position][1][branch] for position in again]))
                     for branch in BRANCHES}
            for row, position in enumerate(again):
                levels = {branch: exact[branch][row] for branch in BRANCHES}
                out[position] = self._decode_residual(files[position], levels)
        return out

    def _decode_residual(self, file: tuple[Bitstream, dict[str, torch.Tensor]], levels: dict[str, np.ndarray]
                         ) -> dict[str, torch.Tensor] | BitstreamError:
        """One file's residuals at ``levels`` (C, h, w) per branch, checked against their symbol CRCs."""
        bitstream, z_hats = file
        symbols = {}
        try:
            for branch in BRANCHES:
                stream = bitstream.streams[STREAMS.index(("r", branch))]
                residual_quant = coding.decode_residual(self.models, _words(stream), levels[branch])
                _verify(stream, residual_quant, f"residual_quant {branch}")
                symbols[f"z_hat_{branch}"] = z_hats[branch]
                symbols[f"residual_quant_{branch}"] = torch.from_numpy(residual_quant).float()[None].to(self.device)
        except BitstreamError as error:
            return error
        return symbols

    def _predict(self, items: list[dict[str, torch.Tensor]], hyper: dict[str, dict[str, torch.Tensor]] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Same-size files' symbols -> every decoded tensor, (B, C, h, w), by the model's own modules;
        ``hyper``: :meth:`_hyper` of these very files, when it has run."""
        out: dict[str, torch.Tensor] = {}
        for branch in BRANCHES:
            z_hat, residual_quant = (_batch([item[f"{name}_{branch}"] for item in items])
                                     for name in ("z_hat", "residual_quant"))
            given = () if hyper is None else (hyper[branch]["psi"], hyper[branch]["log_scale"])
            decoded = _in_batch_of_two(getattr(self.model, f"{branch}_predictor").decode, z_hat, residual_quant, *given)
            out.update({f"{name}_{branch}": decoded[name] for name in DECODED_TENSORS})
        return out

    @torch.inference_mode()
    def decompress(self, data: bytes | Bitstream, max_pixels: int | None = None) -> np.ndarray:
        """File bytes -> uint8 RGB (H, W, 3): the synthesis transforms (with the loaded decoder adapters) on the
        decoded ``y_hat``."""
        tensors, bitstream = self.latents(data, max_pixels, any_adapters=True)
        return self.model.pixels(tensors, bitstream.height, bitstream.width)


def _in_batch_of_two(function, *batch: torch.Tensor):
    """``function(*batch)`` (a tensor or a dict of them), a batch of one run as two (itself twice). For the
    hyperprior's small tensors torch takes oneDNN's float32 convolutions for batches above one and its own
    for one; its own float64 convolution gives each image of a batch one thread, a lone image all of them.
    Their sums differ in the last bits. Above one, an image's bits do not depend on its batch (tested): so
    encoder and decoder agree, alone or batched."""
    if batch[0].shape[0] > 1:
        return function(*batch)
    doubled = function(*(torch.cat([tensor, tensor]) for tensor in batch))
    return doubled[:1] if isinstance(doubled, torch.Tensor) else {name: value[:1] for name, value in doubled.items()}


def _batch(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One batch of same-size tensors, channels-last as the Embedder runs the model."""
    return torch.cat(tensors).contiguous(memory_format=torch.channels_last)


def bits_per_pixel(data: bytes, height: int, width: int) -> float:
    return 8 * len(data) / (height * width)


def _integers(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy().astype(np.int64)


def _words(stream: Stream) -> np.ndarray:
    return np.frombuffer(stream.payload, "<u4").astype(np.uint32)


def _verify(stream: Stream, symbols: np.ndarray, name: str) -> None:
    if symbols_crc(symbols) != stream.crc:
        raise BitstreamError(f"corrupt bitstream: the {name} stream decodes to symbols that fail "
                             "their checksum (the file was altered, or this decoder's distributions differ "
                             "from the encoder's)")
