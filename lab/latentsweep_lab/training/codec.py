"""Rate-distortion training of the default weights on the photos bundled with scikit-image.

loss = bpp + lambda * 255^2 * MSE(RGB), with straight-through rounding. These are the project's own
weights of the BOP architecture, not the JPEG AI reference weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from latentsweep_lab import photos
from latentsweep.codec import colour, weights
from latentsweep.codec.model import BopCodec


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 4
    crop: int = 128
    lmbda: float = 0.013
    learning_rate: float = 5e-4
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    init: str | None = None  # fine-tune from this checkpoint instead of a random initialisation


def random_crops(images: list[np.ndarray], count: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random crops (with flips) as float RGB in [0, 1], (count, 3, size, size)."""
    crops = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        top = rng.integers(image.shape[0] - size + 1)
        left = rng.integers(image.shape[1] - size + 1)
        crop = image[top:top + size, left:left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.ascontiguousarray(crop))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def rate_distortion(model: BopCodec, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits per pixel, RGB MSE in [0, 1] units) for a batch whose size is a multiple of 64."""
    exported = model.export(rgb)
    reconstruction = colour.yuv_to_rgb(model.reconstruct(exported))
    bpp = model.bits(exported).mean() / (rgb.shape[-1] * rgb.shape[-2])
    return bpp, (reconstruction - rgb).square().mean()


@torch.no_grad()
def evaluate(model: BopCodec, names: list[str], device: torch.device) -> dict[str, float]:
    """Mean PSNR (dB, RGB, valid area) and estimated bpp over whole held-out photos, through whatever
    adapters are attached to ``model``."""
    model.eval()
    psnrs, rates = [], []
    for name in names:
        image = photos.load(name)
        height, width = image.shape[:2]
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255.0).to(device)
        padded = colour.pad(rgb, *colour.padded_size(height, width))
        exported = model.export(padded)
        reconstruction = colour.yuv_to_rgb(model.reconstruct(exported))[..., :height, :width]
        mse = (reconstruction.clamp(0, 1) - rgb).square().mean().item()
        psnrs.append(10 * math.log10(1.0 / max(mse, 1e-12)))
        rates.append(model.bits(exported).item() / (height * width))
    return {"psnr_db": float(np.mean(psnrs)), "bpp": float(np.mean(rates))}


def train(settings: TrainSettings, out: str, progress=print) -> dict:
    from latentsweep.codec.embed import resolve_device

    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    held_out = photos.names("held_out")
    before = evaluate(weights.untrained(settings.seed).to(device), held_out, device)
    model, history = weights.untrained(settings.seed), []
    if settings.init:
        model, _, init_meta = weights.load(settings.init)
        history = init_meta.get("history", []) + [init_meta.get("training", {})]
    model = model.to(device)
    training_images = [image for image in (photos.load(name) for name in photos.names("train"))
                       if min(image.shape[:2]) >= settings.crop]
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    started = time.monotonic()
    for step in range(1, settings.steps + 1):
        model.train()
        batch = random_crops(training_images, settings.batch_size, settings.crop, rng).to(device)
        bpp, mse = rate_distortion(model, batch)
        loss = bpp + settings.lmbda * 255**2 * mse
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % settings.log_every == 0 or step == settings.steps:
            psnr = 10 * math.log10(1.0 / max(mse.item(), 1e-12))
            progress(f"step {step}/{settings.steps}  loss {loss.item():.3f}  bpp {bpp.item():.3f}  "
                     f"psnr {psnr:.2f} dB  {time.monotonic() - started:.0f} s")
    after = evaluate(model, held_out, device)
    meta = {"trained": True, "architecture": "JPEG AI BOP analysis + project hyperprior/synthesis",
            "not_reference_weights": True, "training": asdict(settings),
            "history": history, "held_out_photos": held_out,
            "training_photos": [n for n in photos.names("train") if min(photos.load(n).shape[:2]) >= settings.crop],
            "held_out_untrained": before, "held_out_trained": after,
            "train_seconds": round(time.monotonic() - started, 1), "torch": torch.__version__}
    meta["sha256"] = weights.save(model.cpu(), out, meta)
    return meta
