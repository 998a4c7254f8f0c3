"""Training of the SFMA adapters (``codec/adapters.py``) as the second seed trains them: so that the
DECODED image keeps what a forensic detector reads in the original.

Two stages, each on a frozen codec:

- **Stage one, ``decoder``**: adapters in the synthesis transforms only. The encoder is frozen, so every
  training crop's ``y_hat`` is computed once and cached; the rate is the base codec's by construction.
- **Stage two, ``both``**: adapters in the analysis and the synthesis transforms (the decoder's start from
  stage one's when ``init`` names them), under a rate guard that keeps the estimated rate within
  ``rate_margin`` of the base codec's; :func:`calibrate` then shrinks the encoder adapters' outputs until
  larger crops stay within 5%.

Loss, per crop (the seed's perceptual term with our detectors' features, plus a small pixel term)::

    feature matching + pixel * MSE(decoded, original) / MSE(base decode, original) [+ guard * rate excess]

feature matching: for each descriptor of :data:`MATCHED` (the residual spectrum, the fingerprint's block
spectrum, the learned ``self_description``), the mean square difference between the decoded and the
original crop's descriptor, each dimension divided by its spread over the training crops' originals (the
z-scoring an index applies). The decoded crop is rounded to 8 bits with a straight-through gradient, as a
decoder's PNG is.

Training data: random crops of the codec's TRAINING photos through random formation recipes
(``training/formation.py``: resampling with random kernels, transposed convolutions, blurs, noise, and the
untouched crop). No evaluation corpus's software, generator or photo is used; but the recipes share
mechanisms with the real-software held-out classes (B-spline and Gaussian resampling), so results there are
held-out software and photos, not held-out mechanisms.

PSNR is given up on purpose where detectability needs it (the seed does the same) and is reported on the
held-out photos in the card.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from latentsweep.codec import colour, weights
from latentsweep.codec.adapters import BOTTLENECK, AdapterSet, parameter_count
from latentsweep.codec.layers import round_ste
from latentsweep.descriptors import fingerprint, residual_spectrum, self_description
from latentsweep_lab import photos
from latentsweep_lab.training import formation

STAGES = {"decoder": ("decoder",), "both": ("encoder", "decoder")}


# the pixel descriptors whose values the decoded image must keep, each (H, W, 3) in [0, 255] -> (D,)
MATCHED = {"residual_spectrum": residual_spectrum.describe, "fingerprint": fingerprint.block_spectrum,
           "self_description": self_description.describe}
RATE_LIMIT = 0.05  # stage two: the rate parity the calibration enforces on larger crops


@dataclass
class AdapterTrainSettings:
    stage: str = "decoder"    # decoder (stage one) | both (stage two)
    steps: int = 400
    batch_size: int = 8
    crops: int = 192          # training crops, rendered once through random formation recipes
    crop: int = 64
    learning_rate: float = 1e-3
    pixel: float = 0.1        # weight of the pixel term (MSE relative to the base decode's)
    guard: float = 20.0       # stage two: weight of the rate beyond the margin
    rate_margin: float = 0.02
    bottleneck: int = BOTTLENECK
    seed: int = 0
    weights: str | None = None  # the frozen codec (None: the shipped weights)
    init: str | None = None     # stage two: start the decoder adapters from these (stage one's checkpoint)
    log_every: int = 50
    evaluate: bool = True       # calibrate and measure the held-out photos (the card); off in tests
    max_seconds: float | None = None  # stop training early after this long (the card records the steps done)


def training_crops(settings: AdapterTrainSettings, rng: np.random.Generator) -> torch.Tensor:
    """``settings.crops`` crops of the training photos, each through its own random recipe, (N, 3, s, s) in [0, 1]."""
    sources = [image for image in (photos.load(name) for name in photos.names("train"))
               if min(image.shape[:2]) >= 4 * settings.crop]
    images = [formation.render(formation.random_recipe(rng), sources[rng.integers(len(sources))], settings.crop, rng)
              for _ in range(settings.crops)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)


def descriptors(rgb: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, 3, H, W) in [0, 1] -> ``{name: (B, D)}`` of every :data:`MATCHED` descriptor, differentiable."""
    images = (rgb * 255.0).permute(0, 2, 3, 1)
    return {name: torch.stack([describe(image).float() for image in images]) for name, describe in MATCHED.items()}


def feature_matching(decoded: torch.Tensor, targets: dict[str, torch.Tensor], spread: dict[str, torch.Tensor]
                     ) -> torch.Tensor:
    """Per crop: the mean over :data:`MATCHED` of the mean square z-scored difference of the descriptors."""
    found = descriptors(decoded)
    return torch.stack([((found[name] - targets[name]) / spread[name]).square().mean(1) for name in MATCHED]).mean(0)


def decode(model, exported: dict[str, torch.Tensor]) -> torch.Tensor:
    """``y_hat`` -> RGB in [0, 1] rounded to 8 bits (straight-through), as a decoded PNG holds it."""
    return round_ste(colour.yuv_to_rgb(model.reconstruct(exported)).clamp(0, 1) * 255.0) / 255.0


def latents(model, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors the synthesis and the rate need: ``y_hat`` and the rate terms of both branches."""
    exported = model.export(rgb)
    return {name: value for name, value in exported.items()
            if name.startswith(("y_hat", "z_hat", "residual_quant", "scale"))}


def rate(model, exported: dict[str, torch.Tensor], pixels: int) -> torch.Tensor:
    return model.bits(exported) / pixels


def train_stage(model, adapters: AdapterSet, settings: AdapterTrainSettings, crops: torch.Tensor,
                rng: np.random.Generator, progress=print) -> list[tuple[float, float, float]]:
    """The loss of the module docstring, ``settings.steps`` Adam steps; returns (feature matching, MSE ratio,
    rate ratio) a step."""
    pixels = crops.shape[2] * crops.shape[3]
    adapters.enabled = False
    with torch.no_grad():  # what the base codec gives: targets, the cached y_hat (stage one), base MSE and rate
        targets = descriptors(crops)
        spread = {name: value.std(0).clamp_min(1e-3) for name, value in targets.items()}
        cached = [latents(model, crops[start:start + 16]) for start in range(0, len(crops), 16)]
        cached = {name: torch.cat([part[name] for part in cached]) for name in cached[0]}
        base_mse = (decode(model, cached) - crops).square().mean(dim=(1, 2, 3)).clamp_min(1e-7)
        base_rate = rate(model, cached, pixels)
    adapters.enabled = True
    trained = [parameter for parameter in adapters.parameters() if parameter.requires_grad]
    optimiser = torch.optim.Adam(trained, lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    encoder = "encoder" in adapters.parts
    started, history = time.monotonic(), []
    for step in range(1, settings.steps + 1):
        adapters.train()
        chosen = torch.from_numpy(rng.choice(len(crops), settings.batch_size, replace=False))
        exported = latents(model, crops[chosen]) if encoder else {name: value[chosen] for name, value in cached.items()}
        decoded = decode(model, exported)
        matching = feature_matching(decoded, {name: value[chosen] for name, value in targets.items()}, spread)
        mse_ratio = (decoded - crops[chosen]).square().mean(dim=(1, 2, 3)) / base_mse[chosen]
        rate_ratio = rate(model, exported, pixels) / base_rate[chosen]
        loss = (matching + settings.pixel * mse_ratio).mean()
        if encoder:
            loss = loss + settings.guard * torch.relu(rate_ratio - 1 - settings.rate_margin).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        history.append((matching.mean().item(), mse_ratio.mean().item(), rate_ratio.mean().item()))
        out_of_time = settings.max_seconds is not None and time.monotonic() - started > settings.max_seconds
        if step % settings.log_every == 0 or step == settings.steps or out_of_time:
            recent = np.mean(history[-settings.log_every:], axis=0)
            progress(f"{settings.stage} step {step}/{settings.steps}  feature matching {recent[0]:.3f}  "
                     f"mse x{recent[1]:.3f}  rate x{recent[2]:.3f}  {time.monotonic() - started:.0f} s")
        if out_of_time:
            break
    adapters.eval()
    return history


def photo_crops(side: int) -> torch.Tensor:
    """Corner and centre ``side``-pixel crops of every TRAINING photo at least that large, (N, 3, side, side)
    in [0, 1]. The held-out photos are never used."""
    crops = []
    for name in photos.names("train"):
        image = photos.load(name)
        if min(image.shape[:2]) < side:
            continue
        for top, left in ((0, 0), ((image.shape[0] - side) // 2, (image.shape[1] - side) // 2),
                          (image.shape[0] - side, image.shape[1] - side)):
            crops.append(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0)


# what scales the encoder adapters' contribution (all start at zero): SFMA's last layers
OUTPUT_LAYERS = ("spatial.out.weight", "spatial.out.bias", "frequency.linear.weight", "frequency.linear.bias")
SHRINK = (1.0, 0.75, 0.5, 0.3, 0.2, 0.1, 0.0)


@torch.no_grad()
def calibrate(model, adapters: AdapterSet, side: int = 256, progress=print) -> dict:
    """Stage two: the largest factor of :data:`SHRINK` on the encoder adapters' outputs whose estimated rate on
    ``side``-pixel crops of the TRAINING photos stays within :data:`RATE_LIMIT` of the base codec's (64-pixel
    training crops under-state what the adapters cost on larger images). Factor 0 is the base encoder."""
    crops = photo_crops(side)

    def measure() -> float:
        return float(np.mean([rate(model, model.export(crops[i:i + 1]), side * side).item() for i in range(len(crops))]))

    outputs = {name: tensor for name, tensor in adapters.encoder.state_dict(keep_vars=True).items()
               if name.endswith(OUTPUT_LAYERS)}
    original = {name: tensor.detach().clone() for name, tensor in outputs.items()}
    adapters.enabled = False
    base = measure()
    adapters.enabled = True
    tried = []
    for factor in SHRINK:
        for name, tensor in outputs.items():
            tensor.data = original[name] * factor
        ratio = measure() / base
        tried.append({"factor": factor, "rate_ratio": round(ratio, 4)})
        progress(f"calibration: encoder outputs x{factor}: rate x{ratio:.3f}")
        if ratio - 1 <= RATE_LIMIT:
            break
    return {"factor": factor, "crops": len(crops), "side": side, "tried": tried}


@torch.no_grad()
def held_out_quality(model, adapters: AdapterSet) -> dict:
    """PSNR and estimated bpp on the held-out photos with and without the adapters."""
    from latentsweep_lab.training.codec import evaluate

    adapters.enabled = False
    base = evaluate(model, photos.names("held_out"), torch.device("cpu"))
    adapters.enabled = True
    adapted = evaluate(model, photos.names("held_out"), torch.device("cpu"))
    return {"base": base, "adapted": adapted, "psnr_delta_db": adapted["psnr_db"] - base["psnr_db"],
            "rate_ratio": adapted["bpp"] / base["bpp"]}


def train(settings: AdapterTrainSettings, out: str, progress=print) -> dict:
    """Train one stage and write its checkpoint with a card (parts, training, held-out quality)."""
    if settings.stage not in STAGES:
        raise ValueError(f"unknown stage {settings.stage!r}: choose one of {', '.join(STAGES)}")
    if settings.steps <= 0:
        raise ValueError("nothing to train: give SFMA steps above 0")
    if settings.batch_size > settings.crops:
        raise ValueError(f"a batch of {settings.batch_size} needs at least as many training crops, not {settings.crops}")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model, base_digest, _ = weights.load(settings.weights)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = AdapterSet(settings.bottleneck, STAGES[settings.stage])
    init_digest = None
    if settings.init:
        start, init_digest, start_meta = weights.load_adapters(settings.init, base_digest)
        if "decoder" not in start.parts or start_meta.get("bottleneck", BOTTLENECK) != settings.bottleneck:
            raise ValueError(f"--init {settings.init} holds no decoder adapters of bottleneck {settings.bottleneck}")
        adapters.decoder.load_state_dict(start.decoder.state_dict())
    adapters.attach(model)
    started = time.monotonic()
    crops = training_crops(settings, rng)
    history = train_stage(model, adapters, settings, crops, rng, progress)
    seconds = round(time.monotonic() - started, 1)
    calibration = calibrate(model, adapters, progress=progress) if settings.evaluate and settings.stage == "both" else None
    held_out = held_out_quality(model, adapters) if settings.evaluate else None
    if held_out:
        progress(f"held-out photos: {held_out['base']['psnr_db']:.2f} dB / {held_out['base']['bpp']:.3f} bpp "
                 f"without, {held_out['adapted']['psnr_db']:.2f} dB / {held_out['adapted']['bpp']:.3f} bpp with adapters")
    meta = {"kind": "sfma-adapters", "sfma": True, "parts": list(adapters.parts), "stage": settings.stage,
            "base_weights_sha256": base_digest, "bottleneck": settings.bottleneck,
            "parameters": parameter_count(adapters), "training": asdict(settings),
            "loss": "feature matching of " + ", ".join(MATCHED) + " between decoded and original crops, plus the "
                    "pixel term" + (", under the rate guard" if settings.stage == "both" else ""),
            "training_data": "crops of photos.names('train') through random formation recipes "
                             "(lab/latentsweep_lab/training/formation.py); no evaluation corpus's software, generator "
                             "or photo; the recipes share resampling mechanisms with the real-software held-out classes",
            "init": init_digest,
            "calibration": calibration, "held_out": held_out, "train_seconds": seconds,
            "steps_done": len(history), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loss_last": [float(v) for v in np.mean(history[-settings.log_every:], axis=0)]}
    meta["sha256"] = weights.save_adapters(adapters, out, meta)
    return meta
