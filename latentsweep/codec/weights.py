"""Codec checkpoints: save with a SHA-256 sidecar, verify before loading, load ``weights_only``.

A checkpoint is ``name.pt`` (a state dict, fp16 to keep the shipped file small) plus ``name.json``
(``{"sha256": ..., "meta": {...}}``). Loading refuses a file whose digest does not match its sidecar.
:func:`load_reference` maps a user's JPEG AI reference checkpoint onto the analysis transforms.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from latentsweep.errors import UsageError

if TYPE_CHECKING:
    from latentsweep.codec.model import BopCodec

# torch and the model are imported where a checkpoint is read, written or built: checking and hashing
# one (digest, adapters_digest: what planning asks, e.g. `ingest --dry-run`) needs neither

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "bop-default.pt"
UNTRAINED = "untrained"  # a seeded random initialisation: the baseline the trained weights must beat


class WeightsError(UsageError):
    """Weights are missing, corrupt, or do not fit the architecture."""


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save(model: BopCodec, path: str | Path, meta: dict) -> str:
    """Write the checkpoint (fp16) and its sidecar; return the digest."""
    return write_checkpoint({name: value.half() if value.is_floating_point() else value
                              for name, value in model.state_dict().items()}, path, meta)


def write_checkpoint(state: dict, path: str | Path, meta: dict) -> str:
    """``state`` saved to ``path`` with its sidecar (sha256 and the training card); returns the digest."""
    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sidecar(path).write_text(json.dumps({"sha256": digest, "meta": meta}, indent=2) + "\n")
    return digest


def untrained(seed: int = 0) -> BopCodec:
    import torch

    from latentsweep.codec.model import BopCodec

    torch.manual_seed(seed)
    return BopCodec()


def _verified(path: str | Path | None) -> tuple[Path, bytes, str, dict]:
    """(path, bytes, digest, sidecar record) of a checkpoint whose bytes match its sidecar."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.exists():
        raise WeightsError(f"codec weights not found: {path}")
    if not sidecar(path).exists():
        raise WeightsError(f"{path} has no checksum file {sidecar(path).name}: refusing unverified weights")
    record = json.loads(sidecar(path).read_text())
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.get("sha256"):
        raise WeightsError(f"checksum mismatch for {path}: file {digest[:12]}..., "
                           f"expected {str(record.get('sha256'))[:12]}...: the file is corrupt or replaced")
    return path, data, digest, record


def digest(path: str | Path | None = None, adapters: str | Path | None = None, part: str | None = "encoder") -> str:
    """The digest :func:`load` would give, checked but without building the model (for planning);
    with ``adapters``, the digest of codec and adapters together (:func:`combined_digest`)."""
    base = f"{UNTRAINED}-seed0" if str(path) == UNTRAINED else _verified(path)[2]
    return combined_digest(base, adapters_digest(adapters, part))


def load(path: str | Path | None = None) -> tuple[BopCodec, str, dict]:
    """(model in eval mode, digest, meta). ``None`` = the shipped default; ``"untrained"`` = seed 0."""
    if str(path) == UNTRAINED:
        return untrained().eval(), digest(path), {"trained": False}
    import torch

    from latentsweep.codec.model import BopCodec

    path, data, digest_, record = _verified(path)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = BopCodec()
    try:
        model.load_state_dict({name: value.float() if value.is_floating_point() else value
                               for name, value in state.items()})
    except RuntimeError as error:
        raise WeightsError(f"{path} does not fit the BOP architecture: {error}") from None
    return model.eval(), digest_, record.get("meta", {})


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def describe(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}: {', '.join(items[:12])}" + (" ..." if len(items) > 12 else ""))
        return "; ".join(parts)


def load_reference(model: BopCodec, checkpoint: str | Path | dict, luma_prefix: str | None = None,
                   chroma_prefix: str | None = None, strict: bool = True) -> LoadReport:
    """Copy a JPEG AI reference checkpoint's analysis weights into ``model``.

    The reference names the layers as this project does (``conv1.weight``, ``act1.conv.weight``,
    ...); ``luma_prefix`` / ``chroma_prefix`` are what stands before them in the checkpoint for the
    luma (EncoderBOPPrim) and chroma (EncoderBOPSec) encoders. ``None`` skips that branch.
    """
    import torch

    state = checkpoint if isinstance(checkpoint, dict) else torch.load(
        checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    report = LoadReport()
    used: set[str] = set()
    pending = []
    for prefix, module in ((luma_prefix, model.luma_analysis), (chroma_prefix, model.chroma_analysis)):
        if prefix is None:
            continue
        own = module.state_dict()
        update = {}
        for name, target in own.items():
            key = prefix + name
            if key not in state:
                report.missing.append(key)
            elif tuple(state[key].shape) != tuple(target.shape):
                report.mismatched.append(f"{key} {tuple(state[key].shape)} != {tuple(target.shape)}")
            else:
                update[name] = state[key].to(target.dtype)
                report.loaded.append(key)
            used.add(key)
        pending.append((module, {**own, **update}))
        report.unexpected += sorted(k for k in state if k.startswith(prefix) and k not in used)
    if strict and not report.ok:
        raise WeightsError("reference checkpoint does not fit: " + report.describe())
    for module, new_state in pending:
        module.load_state_dict(new_state)
    return report


# -- adapters (codec/adapters.py): their own checkpoint and sidecar, verified the same way --------

def adapters_path(spec: str | Path | None) -> Path | None:
    """``None`` (or ""): no adapters; else an adapter checkpoint's path. None ship with latentsweep."""
    return None if spec is None or str(spec) == "" else Path(spec)


def save_adapters(adapters, path: str | Path, meta: dict) -> str:
    """Write an adapter checkpoint (fp32: it is small) and its sidecar; return the digest."""
    return write_checkpoint({name: value.detach().float().cpu() for name, value in adapters.state_dict().items()},
                             path, meta)


def _verified_adapters(spec: str | Path | None, part: str | None = None) -> tuple[Path, bytes, str, dict] | None:
    """:func:`_verified` of the adapters ``spec`` names, or ``None`` without adapters. Only SFMA adapters
    are: a card without ``sfma`` or with a trace writer (``trace_code``) names a model latentsweep no
    longer runs, and the digest it would give (:func:`combined_digest`) says ``sfma``. ``part``: the job
    needs adapters in the ``encoder`` (latents: ingest, compress) or the ``decoder`` (decompress); a set
    without that part would change nothing there, which is refused rather than silently ignored."""
    path = adapters_path(spec)
    if path is None:
        return None
    if not path.exists():
        raise WeightsError(f"adapters not found: {path}")
    verified = _verified(path)
    meta = verified[3].get("meta", {})
    if not meta.get("sfma", True) or meta.get("trace_code", 0):
        raise WeightsError(f"{path.name} is no SFMA adapter set (its card: sfma {meta.get('sfma', True)}, trace_code "
                           f"{meta.get('trace_code', 0)}): a trace writer, which latentsweep no longer runs (a .jai "
                           "carries the original pixels' descriptors in its forensic field instead); pass SFMA "
                           "adapters, or none")
    parts = adapter_parts(meta)
    if part is not None and part not in parts:
        use = "decompress --adapters" if part == "encoder" else "compress, ingest and sweep --adapters"
        raise WeightsError(f"{path.name} holds {' and '.join(parts)} adapters only: they change nothing in the "
                           f"{part} this command runs; pass them to {use}")
    return verified


def adapter_parts(meta: dict) -> tuple[str, ...]:
    """The parts of the codec an adapter card's set adapts (cards written before decoder adapters existed:
    the encoder)."""
    return tuple(meta.get("parts", ("encoder",)))


def adapters_digest(spec: str | Path | None, part: str | None = "encoder") -> str | None:
    """The adapters' SHA-256 (checked against their sidecar), or ``None`` without adapters; ``part``: what
    the caller runs (:func:`_verified_adapters`)."""
    verified = _verified_adapters(spec, part)
    return verified[2] if verified else None


def combined_digest(weights_digest: str, adapters: str | None) -> str:
    """The embedding space's weights digest: the codec's alone, or ``<codec>+sfma-<adapters[:16]>``
    (every loadable adapter set is SFMA, :func:`_verified_adapters`), so vectors made with and without
    adapters (or with other adapters) never share an index."""
    return weights_digest if adapters is None else f"{weights_digest}+sfma-{adapters[:16]}"


def load_adapters(spec: str | Path | None, weights_digest: str | None = None):
    """(AdapterSet in eval mode, digest, meta) or ``(None, None, {})`` without adapters. Refuses
    adapters trained on other codec weights than ``weights_digest`` (when given)."""
    import torch

    from latentsweep.codec.adapters import AdapterSet

    verified = _verified_adapters(spec)
    if verified is None:
        return None, None, {}
    path, data, digest_, record = verified
    meta = record.get("meta", {})
    base = meta.get("base_weights_sha256")
    if weights_digest is not None and base and base != weights_digest:
        raise WeightsError(f"adapters {path.name} were trained on codec weights {base[:12]}..., not the loaded "
                           f"{weights_digest[:12]}...: pass the --weights they were trained with")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    try:
        adapters = AdapterSet(int(meta.get("bottleneck", 16)), adapter_parts(meta))
        adapters.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise WeightsError(f"{path} does not fit the adapter architecture: {error}") from None
    return adapters.eval(), digest_, meta
