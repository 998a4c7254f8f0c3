"""Latents exported by the JPEG AI reference software, read so they index like images do.

Two layouts are accepted (``docs/jpegai-bop.md``):
- a tensor ``[1, 256, h, w]``: concatenated y_hat, channels 0..159 luma, 160..255 chroma;
- a decision dict ``{"model_y": {...}, "model_uv": {...}}`` holding some of ``y``, ``z``, ``z_hat``,
  ``psi``, ``scale_log``, ``residual_quant``, ``residual``, ``y_hat`` per branch; ``mu`` is derived
  as ``y_hat - residual`` when both are present.
Files load with ``weights_only=True``: a pickled object is refused, never executed.
"""

from __future__ import annotations

import io

import torch

from latentsweep.codec.layout import CHROMA_CHANNELS, LUMA_CHANNELS
from latentsweep.errors import UsageError

BRANCH_KEYS = {"model_y": "luma", "model_uv": "chroma"}
DICT_TENSORS = ("y", "z", "z_hat", "psi", "scale_log", "residual_quant", "residual", "y_hat")


class LatentFileError(UsageError):
    """A .pt file that is not a latent export this project understands."""


def _as_4d(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise LatentFileError(f"{where} is a {type(value).__name__}, not a tensor")
    if value.ndim == 3:
        value = value[None]
    if value.ndim != 4 or value.shape[0] != 1 or min(value.shape[2:]) < 1:
        raise LatentFileError(f"{where} has shape {tuple(value.shape)}, expected [1, C, h, w]")
    return value.float()


def read(data: bytes) -> dict[str, torch.Tensor]:
    """Parse one exported file's bytes into ``{"y_hat_luma": [1, C, h, w], ...}``."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LatentFileError(f"not a plain tensor file (weights_only load refused it): {first_line}") from None
    if isinstance(obj, torch.Tensor):
        y_hat = _as_4d(obj, "the tensor")
        if y_hat.shape[1] != LUMA_CHANNELS + CHROMA_CHANNELS:
            raise LatentFileError(f"concatenated y_hat has {y_hat.shape[1]} channels, expected "
                                  f"{LUMA_CHANNELS + CHROMA_CHANNELS} (160 luma + 96 chroma)")
        return {"y_hat_luma": y_hat[:, :LUMA_CHANNELS], "y_hat_chroma": y_hat[:, LUMA_CHANNELS:]}
    if isinstance(obj, dict) and set(obj) & set(BRANCH_KEYS):
        return _read_decisions(obj)
    raise LatentFileError(f"a {type(obj).__name__} is neither a [1, 256, h, w] y_hat tensor nor a "
                          f"decision dict with keys {', '.join(BRANCH_KEYS)}")


def _read_decisions(obj: dict) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, branch in BRANCH_KEYS.items():
        decisions = obj.get(key)
        if decisions is None:
            continue
        if not isinstance(decisions, dict):
            raise LatentFileError(f"{key} is a {type(decisions).__name__}, expected a dict of tensors")
        expected = LUMA_CHANNELS if branch == "luma" else CHROMA_CHANNELS
        for name in DICT_TENSORS:
            if name in decisions:
                tensor = _as_4d(decisions[name], f"{key}[{name!r}]")
                channels = expected * (4 if name == "psi" else 1)
                if tensor.shape[1] != channels:
                    raise LatentFileError(f"{key}[{name!r}] has {tensor.shape[1]} channels, expected {channels}")
                out[f"{name}_{branch}"] = tensor
        if f"y_hat_{branch}" in out and f"residual_{branch}" in out:
            out[f"mu_{branch}"] = out[f"y_hat_{branch}"] - out[f"residual_{branch}"]
    if not out:
        raise LatentFileError("the decision dict holds none of the known tensors")
    return out
