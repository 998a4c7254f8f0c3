"""Batched inference: images -> exported latents -> pooled descriptors, on CPU or GPU.

Images of different sizes are bucketed by their padded size, so every forward pass sees one shape
and an image's vectors never depend on what else is in its batch.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from latentsweep.codec import colour, pooling, weights
from latentsweep.codec.layout import CODEC_NAME, TENSOR_STRIDES, column_dims
from latentsweep.codec.settings import EmbedSettings
from latentsweep.errors import UsageError


_TF32_WARNING = ".*(new API settings|TF32).*"  # torch 2.9-2.11 warn on the legacy setters used below


def full_float32(tf32: bool = False) -> None:
    """TF32 off for CUDA convolutions (cuDNN) and matmuls (cuBLAS), process-wide: one embedding space
    on every device. torch allows TF32 in cuDNN convolutions by default (``cudnn.allow_tf32`` is True),
    so on Ampere and newer GPUs the analysis transforms would read 10-bit mantissas and round ``z_hat``
    and ``residual_quant`` (integers: a whole step apart) differently from the CPU, and rows ingested on
    a GPU would drift from those of CPU nodes in the same index. The legacy switches are set first (the
    only ones torch 2.2-2.8 have, and what ``torch.backends.cudnn.allow_tf32`` reads back without
    complaint on 2.9+, which refuses to read it after a mix of the two APIs); on 2.9+ cuDNN's conv and
    RNN precisions are then pinned to ``"ieee"`` too: the legacy setter leaves them ``"none"`` (inherit),
    through which a process-wide ``torch.backends.fp32_precision = "tf32"`` would reach the codec. No
    effect on the CPU (bit-identical there). Called by :class:`Embedder`, which ingest, queries,
    compress and decompress all build. ``tf32=True`` turns it back on, for ``make gpu-check`` to show
    what it would change."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TF32_WARNING, category=UserWarning)
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            torch.backends.cudnn.conv.fp32_precision = "tf32" if tf32 else "ieee"
            torch.backends.cudnn.rnn.fp32_precision = "tf32" if tf32 else "ieee"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(device)


class Embedder:
    """Loads the codec once; :meth:`embed` turns uint8 RGB images into pooled vectors."""

    def __init__(self, settings: EmbedSettings = EmbedSettings()):
        self.settings = settings
        full_float32()  # before any convolution runs: TF32 would move GPU rows out of the CPU's space
        self.columns = column_dims(settings.feature_set, settings.pooling)
        self.device = resolve_device(settings.device)
        model, self.base_digest, self.meta = weights.load(settings.weights)
        # adapters (codec/adapters.py): their digest joins the codec's in every row's weights digest (the jobs
        # that embed refuse a set without encoder adapters, weights.adapters_digest)
        self.adapters, self.adapters_digest, self.adapters_meta = weights.load_adapters(settings.adapters,
                                                                                        self.base_digest)
        if self.adapters is not None:
            self.adapters.attach(model)
            model.adapters = self.adapters  # moved to the device and memory format with the model
        self.weights_digest = weights.combined_digest(self.base_digest, self.adapters_digest)
        # NHWC: oneDNN's and cuDNN's preferred convolution layout (1.1-1.2x on CPU, benchmarks/bench_bounds.py)
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.half = settings.half and self.device.type == "cuda"
        self.codec = CODEC_NAME

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        """``images[i]``: uint8 (H, W, 3). Returns ``{column: float32 (N, dim)}``."""
        out = {name: np.zeros((len(images), dim), np.float32) for name, dim in self.columns.items()}
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            buckets[colour.padded_size(*image.shape[:2])].append(index)
        for indices in buckets.values():
            for start in range(0, len(indices), self.settings.max_batch):
                chunk = indices[start:start + self.settings.max_batch]
                pooled = self._embed_bucket([images[i] for i in chunk])
                for name, values in pooled.items():
                    out[name][chunk] = values
        return out

    def exported(self, images: list[np.ndarray]) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """Raw latent tensors of same-bucket images (padded) and their (H, W) sizes."""
        height, width = colour.padded_size(*images[0].shape[:2])
        batch = torch.stack([
            colour.pad(torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None],
                       height, width)[0]
            for image in images]).to(self.device, non_blocking=True).float().div_(255.0)
        batch = batch.contiguous(memory_format=torch.channels_last)
        sizes = [image.shape[:2] for image in images]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            tensors = self.model.export(batch)
        return tensors, sizes

    @torch.inference_mode()
    def round_trip(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> the codec's reconstruction of it (analysis, quantisation, synthesis), uint8."""
        tensors, [(height, width)] = self.exported([image])
        return self.model.pixels(tensors, height, width)

    def _embed_bucket(self, images: list[np.ndarray]) -> dict[str, np.ndarray]:
        return self.pool(*self.exported(images))

    def pool(self, tensors: dict[str, torch.Tensor], sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The columns of padded tensors (B, C, h, w) pooled over each image's valid area, ``sizes``
        its (height, width) in pixels: images and decoded bitstreams alike."""
        result = {}
        for column in self.columns:
            stride = TENSOR_STRIDES[column.rsplit("_", 1)[0]]
            valid = [pooling.valid_latent_size(h, w, stride) for h, w in sizes]
            result[column] = pooling.pool(tensors[column], valid, self.settings.pooling).cpu().numpy()
        return result
