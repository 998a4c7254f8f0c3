"""Training of the SFMA adapters (``codec/adapters.py``) on a frozen codec.

Only the adapters learn, from random crops of the codec's training photos rendered through random
formation recipes (``training/formation.py``: resampling kernels and factors, transposed convolutions,
blurs, noise; none of them an evaluation corpus's software or generator). They train ``steps`` steps of
``recipes`` x ``per_recipe`` crops on

    forensic + guard * (relu(rate / base_rate - 1 - rate_margin) + relu(mse / base_mse - 1 - mse_margin))

forensic: the supervised contrastive loss over the pooled ``y_hat`` (the ``2lat`` vector, z-scored by
running statistics and L2-normalised, as the index sees it): crops made by the same recipe attract,
others repel. The guard compares, image by image on ``guard_images`` images of the batch, the estimated
rate and the RGB MSE of the unchanged decoder's reconstruction with and without the adapters; inside
the margins it costs nothing, beyond them it dominates.

Then :func:`calibrate` shrinks what the adapters add until larger crops of the training photos stay
within the limits, and the rate and PSNR on the held-out photos are measured and written to the card.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentsweep.codec import weights
from latentsweep.codec.adapters import BOTTLENECK, AdapterSet, parameter_count
from latentsweep_lab import photos
from latentsweep_lab.training import formation
from latentsweep_lab.training.trace import pooled, quality


@dataclass
class AdapterTrainSettings:
    steps: int = 300          # the length of the runs in docs/research.md (under the guard they learned nothing)
    recipes: int = 8          # formation recipes a batch
    per_recipe: int = 3       # crops per recipe (the positives)
    crop: int = 64
    learning_rate: float = 1e-3
    temperature: float = 0.1
    guard: float = 20.0
    rate_margin: float = 0.02
    mse_margin: float = 0.06  # 0.25 dB
    guard_images: int = 8
    bottleneck: int = BOTTLENECK
    seed: int = 0
    weights: str | None = None  # the frozen codec (None: the shipped weights)
    log_every: int = 50
    evaluate: bool = True       # calibrate and measure the held-out photos (the card); off in tests
    max_seconds: float | None = None  # stop training early after this long (the card records the steps done)


def batch(settings: AdapterTrainSettings, sources: list[np.ndarray], rng: np.random.Generator):
    images, labels = [], []
    for label in range(settings.recipes):
        recipe = formation.random_recipe(rng)
        for _ in range(settings.per_recipe):
            photo = sources[rng.integers(len(sources))]
            images.append(formation.render(recipe, photo, settings.crop, rng))
            labels.append(label)
    rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)
    return rgb, torch.tensor(labels)


def _rate_mse(model, exported: dict, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from latentsweep.codec import colour

    reconstruction = colour.yuv_to_rgb(model.reconstruct(exported))
    return model.bits(exported) / (rgb.shape[-1] * rgb.shape[-2]), (reconstruction - rgb).square().mean(dim=(1, 2, 3))


def photo_crops(side: int) -> list[torch.Tensor]:
    """Three ``side``-pixel crops (corners and centre) of every TRAINING photo at least that large, each
    (1, 3, side, side) in [0, 1]. The held-out photos are never used."""
    crops = []
    for name in photos.names("train"):
        image = photos.load(name)
        if min(image.shape[:2]) < side:
            continue
        for top, left in ((0, 0), ((image.shape[0] - side) // 2, (image.shape[1] - side) // 2),
                          (image.shape[0] - side, image.shape[1] - side)):
            crops.append(torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side]))
                         .permute(2, 0, 1)[None].float().div(255.0))
    return crops


def supervised_contrastive(vectors: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors of -log(sum over positives / sum over all others) of exp(cos / t) (Khosla et
    al. 2020), on L2-normalised ``vectors``."""
    logits = vectors @ vectors.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=vectors.device)
    logits = logits.masked_fill(eye, -1e9)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob * positives).sum(1).div(positives.sum(1).clamp_min(1)).mean()


# what scales the adapters' contribution (all start at zero): SFMA's last layers
OUTPUT_LAYERS = ("spatial.out.weight", "spatial.out.bias", "frequency.linear.weight", "frequency.linear.bias")
SHRINK = (1.0, 0.75, 0.6, 0.5, 0.4, 0.3, 0.2)


def outputs(adapters: AdapterSet) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in adapters.state_dict(keep_vars=True).items() if name.endswith(OUTPUT_LAYERS)}


def shrink(adapters: AdapterSet, factor: float, original: dict[str, torch.Tensor]) -> None:
    """Scale the adapters' outputs (:data:`OUTPUT_LAYERS`) to ``factor`` of ``original``."""
    for name, tensor in outputs(adapters).items():
        tensor.data = original[name] * factor


@torch.no_grad()
def calibrate(model, adapters: AdapterSet, rate_limit: float = 0.04, psnr_limit: float = 0.35,
              side: int = 256, progress=print) -> dict:
    """Shrink the adapters' outputs to the largest factor of :data:`SHRINK` whose rate and PSNR on
    ``side``-pixel crops (three per photo) of the codec's TRAINING photos stay within the limits
    (training crops of 64 pixels under-state what the adapters cost on larger images). The held-out
    photos are never used here."""
    crops = photo_crops(side)

    def measure() -> tuple[float, float]:
        psnrs, rates = zip(*(quality(model, rgb) for rgb in crops))
        return torch.cat(psnrs).mean().item(), torch.cat(rates).mean().item()

    original = {name: tensor.detach().clone() for name, tensor in outputs(adapters).items()}
    adapters.enabled = False
    base_psnr, base_rate = measure()
    adapters.enabled = True
    tried = []
    for factor in SHRINK:
        shrink(adapters, factor, original)
        psnr, rate = measure()
        tried.append({"factor": factor, "psnr_delta_db": psnr - base_psnr, "rate_ratio": rate / base_rate})
        progress(f"calibration: outputs x{factor}: {psnr - base_psnr:+.2f} dB, rate x{rate / base_rate:.3f}")
        if rate / base_rate - 1 <= rate_limit and base_psnr - psnr <= psnr_limit:
            break
    return {"factor": factor, "crops": len(crops), "side": side, "tried": tried}


@torch.no_grad()
def held_out_quality(model, adapters: AdapterSet) -> dict:
    """PSNR and estimated bpp on the held-out photos with and without the adapters."""
    from latentsweep_lab.training.codec import evaluate

    was = adapters.enabled
    adapters.enabled = False
    base = evaluate(model, photos.names("held_out"), torch.device("cpu"))
    adapters.enabled = True
    adapted = evaluate(model, photos.names("held_out"), torch.device("cpu"))
    adapters.enabled = was
    return {"base": base, "adapted": adapted, "psnr_delta_db": adapted["psnr_db"] - base["psnr_db"],
            "rate_ratio": adapted["bpp"] / base["bpp"]}


def train_sfma(model, adapters: AdapterSet, settings: AdapterTrainSettings, sources: list[np.ndarray],
               rng: np.random.Generator, progress=print) -> list[tuple[float, float, float]]:
    """The SFMA's guarded metric learning (module docstring); returns (forensic, rate ratio, MSE ratio) a step."""
    sources = [image for image in sources if min(image.shape[:2]) >= 4 * settings.crop]
    trained = list(adapters.parameters())
    optimiser = torch.optim.Adam(trained, lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    mean = std = None
    started, history = time.monotonic(), []
    for step in range(1, settings.steps + 1):
        adapters.train()
        rgb, labels = batch(settings, sources, rng)
        exported = model.export(rgb)
        vectors = pooled(exported)
        with torch.no_grad():  # running z-score statistics (detached), as the index z-scores
            if mean is None:
                mean, std = vectors.mean(0), vectors.std(0)
            mean = 0.9 * mean + 0.1 * vectors.mean(0)
            std = 0.9 * std + 0.1 * vectors.std(0)
        forensic = supervised_contrastive(F.normalize((vectors - mean) / (std + 1e-6), dim=1), labels,
                                          settings.temperature)
        guard_at = torch.linspace(0, len(labels) - 1, settings.guard_images).round().long()
        subset = {name: value[guard_at] for name, value in exported.items()}
        rate, mse = _rate_mse(model, subset, rgb[guard_at])
        with torch.no_grad():
            adapters.enabled = False
            base_rate, base_mse = _rate_mse(model, model.export(rgb[guard_at]), rgb[guard_at])
            adapters.enabled = True
        # per image: a clean image's small MSE must not hide behind a busy image's large one
        penalty = (F.relu(rate / base_rate - 1 - settings.rate_margin)
                   + F.relu(mse / base_mse.clamp_min(1e-7) - 1 - settings.mse_margin)).mean()
        loss = forensic + settings.guard * penalty
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        history.append((forensic.item(), (rate / base_rate).mean().item(), (mse / base_mse).mean().item()))
        out_of_time = settings.max_seconds is not None and time.monotonic() - started > settings.max_seconds
        if step % settings.log_every == 0 or step == settings.steps or out_of_time:
            recent = np.mean(history[-settings.log_every:], axis=0)
            progress(f"step {step}/{settings.steps}  supcon {recent[0]:.3f}  rate x{recent[1]:.3f}  "
                     f"mse x{recent[2]:.3f}  {time.monotonic() - started:.0f} s")
        if out_of_time:
            break
    return history


def train(settings: AdapterTrainSettings, out: str, progress=print) -> dict:
    if settings.steps <= 0:
        raise ValueError("nothing to train: give SFMA steps above 0")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model, base_digest, _ = weights.load(settings.weights)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = AdapterSet(settings.bottleneck)
    adapters.attach(model)
    sources = [photos.load(name) for name in photos.names("train")]
    started = time.monotonic()
    history = train_sfma(model, adapters, settings, sources, rng, progress)
    seconds = round(time.monotonic() - started, 1)
    adapters.eval()
    calibration = calibrate(model, adapters, progress=progress) if settings.evaluate else None
    held_out = held_out_quality(model, adapters) if settings.evaluate else None
    if held_out:
        progress(f"held-out photos: {held_out['base']['psnr_db']:.2f} dB / {held_out['base']['bpp']:.3f} bpp "
                 f"without, {held_out['adapted']['psnr_db']:.2f} dB / {held_out['adapted']['bpp']:.3f} bpp with adapters")
    meta = {"kind": "sfma-adapters", "base_weights_sha256": base_digest, "bottleneck": settings.bottleneck,
            "sfma": True, "points": "SFMA after act1, act2, act3 of the luma and chroma analysis transforms",
            "parameters": parameter_count(adapters), "training": asdict(settings),
            "training_data": "random crops of photos.names('train') through random formation recipes "
                             "(lab/latentsweep_lab/training/formation.py); no evaluation corpus's software or generator",
            "calibration": calibration, "held_out": held_out, "train_seconds": seconds,
            "steps_done": len(history), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loss_last": [float(v) for v in np.mean(history[-settings.log_every:], axis=0)]}
    meta["sha256"] = weights.save_adapters(adapters, out, meta)
    return meta
