"""The codec's tensor layout, without torch: channels per branch, each tensor's stride, and the pooled
columns a feature set makes. Planning and the dry run check settings against it on the driver, which
never loads the model."""

from __future__ import annotations

from latentsweep.errors import UsageError
from latentsweep.schema import FEATURE_SETS

CODEC_NAME = "jpegai-bop"
LUMA_CHANNELS = 160
CHROMA_CHANNELS = 96
CHANNELS = {"luma": LUMA_CHANNELS, "chroma": CHROMA_CHANNELS}
# Spatial stride of each tensor relative to the input image (for pooling over the valid area).
TENSOR_STRIDES = {"y": 16, "z": 64, "z_hat": 64, "psi": 32, "mu": 16, "scale": 16,
                  "residual_quant": 16, "residual": 16, "y_hat": 16}
POOLINGS = ("gap", "gap+std")


def tensor_channels(tensor: str, branch: str) -> int:
    return CHANNELS[branch] * (4 if tensor == "psi" else 1)


def feature_columns(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise UsageError(f"unknown feature set {feature_set!r}: choose one of {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def pooled_dim(column: str, pooling: str) -> int:
    tensor, branch = column.rsplit("_", 1)
    return tensor_channels(tensor, branch) * (2 if pooling == "gap+std" else 1)


def column_dims(feature_set: str, pooling: str) -> dict[str, int]:
    if pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    return {column: pooled_dim(column, pooling) for column in feature_columns(feature_set)}
