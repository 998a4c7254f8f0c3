"""What a bitstream's latents can give an embedding space, decided from the file's header alone: whose
space they belong to and which columns they can fill. Without torch, so that planning a job of bitstreams
(``ingest/run.py``) decides it before any model is imported."""

from __future__ import annotations

from latentsweep.bitstream.container import Bitstream, describe_id, digest_id

DECODED_TENSORS = ("z_hat", "psi", "mu", "scale", "residual_quant", "residual", "y_hat")


def provenance_mismatch(bitstream: Bitstream, weights_digest: str, adapters_id: bytes,
                        any_adapters: bool = False) -> str | None:
    """Why latents of ``bitstream`` do not belong to the space of the codec ``weights_digest`` with the
    adapters ``adapters_id`` (b"": none), or None; ``any_adapters``: pixels only, any adapters will do."""
    if not any_adapters and bitstream.adapters_id != adapters_id:
        made = f"adapters {describe_id(bitstream.adapters_id)}" if bitstream.adapters_id else "no adapters"
        loaded = f"adapters {describe_id(adapters_id)}" if adapters_id else "none"
        return (f"coded with {made}; the loaded adapters are {loaded}: pass the --adapters it was coded with "
                "(the latents of other adapters live in another space)")
    if bitstream.weights_id != digest_id(weights_digest):
        return (f"coded with codec weights {describe_id(bitstream.weights_id)}, not the loaded "
                f"{weights_digest[:32]}: pass --weights with the checkpoint it was coded with")
    return None


def missing_columns(columns) -> list[str]:
    """The columns a bitstream cannot give: ``y`` and ``z`` exist before quantisation only, never coded."""
    return [name for name in columns if name.rsplit("_", 1)[0] not in DECODED_TENSORS]


def missing_columns_reason(feature_set: str, missing: list[str]) -> str:
    return (f"feature set {feature_set!r} needs {', '.join(missing)}, which a bitstream does not carry (only the "
            "analysis transform makes y and z; the file holds z_hat and residual_quant): ingest bitstreams with "
            "--feature-set selected or 2lat, or ingest the original images")
