"""What decides an embedding's space, as plain data: the driver plans and checks with it without torch,
workers build their :class:`~latentsweep.codec.embed.Embedder` from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbedSettings:
    """An embedding run's settings. The weights (adapters and ``half`` included: both enter the rows'
    weights digest), the feature set and the pooling decide the embedding space, and rows of different
    spaces are never mixed; ``device`` and ``max_batch`` only decide where and how fast it runs."""

    weights: str | None = None  # None = shipped default, "untrained", or a checkpoint path
    feature_set: str = "all"
    pooling: str = "gap"
    device: str = "auto"
    half: bool = False
    max_batch: int = 8
    descriptors: bool = True  # also describe the decoded pixels (latentsweep.descriptors), same pass
    adapters: str | None = None  # SFMA adapters (codec/adapters.py): None or a checkpoint path
