"""Training of the formation-trace writer (``adapters.TraceWriter``) on a frozen codec.

1. **Spectra.** ``trace_recipes`` random formation recipes (``codec/formation.py``), each rendering
   ``trace_crops`` random crops of the codec's training photos at ``trace_side`` pixels; the frozen luma
   encoder's first-stage tile spectra of every crop (what the writer reads).
2. **Detector.** Linear on the spectra z-scored by their mean and spread, trained with the supervised
   contrastive loss (temperature ``trace_temperature``) on its ``tanh`` codes: crops of one recipe
   attract, crops of others repel, in batches of ``trace_batch`` recipes x 4 crops. Every recipe is drawn
   from a continuous family, so the detector learns formation traces in general; no evaluation corpus's
   software or generator is used.
3. **Channels.** Each channel of ``y`` is offset alone by its spread (the standard deviation of GAP(y)
   over ``probe_side``-pixel crops of the training photos) on ``probe`` of those crops, and priced by the
   unchanged decoder's PSNR drop and rate rise against the guard (``drop / 0.5 dB + rise / 5%``); it is
   also measured how much of the offset reaches GAP(y_hat) through the quantiser. The ``trace_code``
   channels that carry the most per unit of cost carry the code, at ``trace_amplitude`` x their spread,
   and the writer pulls their GAP(y) ``trace_pull`` of the way to its mean over those crops.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from latentsweep_lab import photos
from latentsweep_lab.training import formation
from latentsweep.codec.adapters import BRANCHES, Y_CHANNELS, AdapterSet, TraceWriter, add_to_y

CROPS_PER_RECIPE_IN_A_BATCH = 4


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


@contextmanager
def y_offset(model, offsets: torch.Tensor):
    """Add ``offsets`` (B, Y_CHANNELS: luma then chroma) to ``y`` of both branches inside the block."""
    def adding(branch: str):
        def hook(module, inputs, output):
            return add_to_y(output, offsets, branch)
        return hook

    handles = [getattr(model, f"{branch}_analysis").register_forward_hook(adding(branch)) for branch in BRANCHES]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def quality(model, rgb: torch.Tensor, exported: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR (dB) and estimated bits per pixel of the unchanged decoder, image by image (of ``exported``,
    ``rgb``'s latents, when given)."""
    from latentsweep.codec import colour

    exported = model.export(rgb) if exported is None else exported
    decoded = colour.yuv_to_rgb(model.reconstruct(exported)).clamp(0, 1)
    psnr = -10 * torch.log10((decoded - rgb).square().mean(dim=(1, 2, 3)).clamp_min(1e-12))
    return psnr, model.bits(exported) / (rgb.shape[2] * rgb.shape[3])


@torch.no_grad()
def channel_costs(model, rgb: torch.Tensor, spread: torch.Tensor, images_a_pass: int = 64) -> np.ndarray:
    """(Y_CHANNELS, 3) when one channel of ``y`` is offset by ``spread[channel]`` on the batch ``rgb``: the
    mean PSNR drop (dB), rate rise (fraction), and the share of the offset that reaches GAP(y_hat) through
    the quantiser (``survival``); several channels a pass, each on its own copy of the batch."""
    base = model.export(rgb)
    base_psnr, base_rate = (value.mean().item() for value in quality(model, rgb, base))
    base_pooled = pooled(base)
    costs = np.zeros((Y_CHANNELS, 3))
    per_pass = max(1, images_a_pass // len(rgb))
    for first in range(0, Y_CHANNELS, per_pass):
        channels = list(range(first, min(first + per_pass, Y_CHANNELS)))
        offsets = torch.zeros(len(channels), len(rgb), Y_CHANNELS)
        for block, channel in enumerate(channels):
            offsets[block, :, channel] = spread[channel]
        copies = rgb.repeat(len(channels), 1, 1, 1)
        with y_offset(model, offsets.flatten(0, 1)):
            exported = model.export(copies)
        psnr, rate = quality(model, copies, exported)
        moved = pooled(exported).reshape(len(channels), len(rgb), Y_CHANNELS) - base_pooled
        rows = slice(first, first + len(channels))
        costs[rows, 0] = base_psnr - psnr.reshape(len(channels), -1).mean(1).numpy()
        costs[rows, 1] = rate.reshape(len(channels), -1).mean(1).numpy() / base_rate - 1
        costs[rows, 2] = (moved[torch.arange(len(channels)), :, channels].mean(1) / spread[channels]).numpy()
    return costs


def guard_cost(costs: np.ndarray) -> np.ndarray:
    """A channel's price against the guard (0.5 dB, 5% rate): ``drop / 0.5 dB + max(rise, 0) / 5%``."""
    return costs[:, 0] / 0.5 + np.maximum(costs[:, 1], 0) / 0.05


def cheapest(costs: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` channels that cost least against the guard."""
    return np.argsort(guard_cost(costs), kind="stable")[:count]


def carriers(costs: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` channels that carry the most offset through the quantiser per unit of guard cost
    (the cost floored at 0.02, so channels that cost nothing rank by what they carry). The cheapest alone
    are often cheap because the quantiser drops the offset, and ``2lat`` never sees it."""
    return np.argsort(-costs[:, 2] / np.maximum(guard_cost(costs), 0.02), kind="stable")[:count]


def pooled(exported: dict[str, torch.Tensor], tensor: str = "y_hat") -> torch.Tensor:
    """GAP of ``tensor`` of both branches (B, Y_CHANNELS), luma then chroma: for ``y_hat`` the ``2lat``
    vector, for ``y`` where the writer's offsets land."""
    return torch.cat([exported[f"{tensor}_luma"].mean(dim=(2, 3)), exported[f"{tensor}_chroma"].mean(dim=(2, 3))], 1)


@torch.no_grad()
def spectra(model, images: list[np.ndarray], batch: int = 16) -> torch.Tensor:
    """The trace writer's input for uint8 RGB images of one size: (N, TRACE_FEATURES)."""
    out = []
    for start in range(0, len(images), batch):
        rgb = torch.from_numpy(np.stack(images[start:start + batch])).permute(0, 3, 1, 2).float() / 255.0
        out.append(TraceWriter.spectra(model.luma_analysis.first_stage(model.branch_inputs(rgb)[0])))
    return torch.cat(out)


def supervised_contrastive(vectors: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over anchors of -log(sum over positives / sum over all others) of exp(cos / t) (Khosla et
    al. 2020), on L2-normalised ``vectors``."""
    logits = vectors @ vectors.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=vectors.device)
    logits = logits.masked_fill(eye, -1e9)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(log_prob * positives).sum(1).div(positives.sum(1).clamp_min(1)).mean()


def train_trace(model, adapters: AdapterSet, settings, sources: list[np.ndarray], rng: np.random.Generator,
                progress=print) -> dict:
    """Fit ``adapters.trace`` (detector, channels, amplitude) on the frozen ``model``; returns its card."""
    trace, was = adapters.trace, adapters.enabled
    adapters.enabled = False  # every measurement below is of the frozen codec
    usable = [image for image in sources if min(image.shape[:2]) >= 2 * settings.trace_side]
    features, labels = [], []
    for label in range(settings.trace_recipes):
        recipe = formation.random_recipe(rng)
        crops = [formation.render(recipe, usable[rng.integers(len(usable))], settings.trace_side, rng)
                 for _ in range(settings.trace_crops)]
        features.append(spectra(model, crops))
        labels += [label] * settings.trace_crops
        if (label + 1) % 250 == 0:
            progress(f"trace spectra: {label + 1}/{settings.trace_recipes} recipes")
    features, labels = torch.cat(features), torch.tensor(labels)
    trace.mean.copy_(features.mean(0))
    trace.std.copy_(features.std(0) + 1e-6)

    optimiser = torch.optim.Adam(trace.detector.parameters(), lr=1e-3, weight_decay=1e-4)
    by_recipe = labels.reshape(settings.trace_recipes, settings.trace_crops)
    recent = []
    for step in range(1, settings.trace_steps + 1):
        recipes = torch.from_numpy(rng.choice(settings.trace_recipes, settings.trace_batch, replace=False))
        picks = torch.from_numpy(rng.permuted(np.tile(np.arange(settings.trace_crops), (len(recipes), 1)),
                                              axis=1)[:, :CROPS_PER_RECIPE_IN_A_BATCH])
        rows = (recipes[:, None] * settings.trace_crops + picks).flatten()
        with torch.enable_grad():
            loss = supervised_contrastive(F.normalize(trace.code(features[rows]), dim=1), by_recipe.flatten()[rows],
                                          settings.trace_temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        recent.append(loss.item())
        if step % 500 == 0 or step == settings.trace_steps:
            progress(f"trace detector: step {step}/{settings.trace_steps}  supcon {np.mean(recent[-500:]):.3f}")

    rgb = torch.cat(photo_crops(settings.probe_side))
    content = torch.cat([pooled(model.export(rgb[start:start + 8]), "y") for start in range(0, len(rgb), 8)])
    spread = content.std(0)
    probe = rgb[np.linspace(0, len(rgb) - 1, settings.probe).round().astype(int)]
    progress(f"trace channels: pricing {Y_CHANNELS} channels of y on {len(probe)} crops of the training photos")
    costs = channel_costs(model, probe, spread)
    chosen = torch.from_numpy(carriers(costs, len(trace.channels)))
    trace.channels.copy_(chosen)
    trace.amplitude.copy_(settings.trace_amplitude * spread[chosen])
    trace.centre.copy_(content.mean(0)[chosen])
    trace.pull.fill_(settings.trace_pull)
    adapters.enabled = was
    picked = costs[chosen.numpy()]
    return {"spectra": len(features), "detector_loss_last": float(np.mean(recent[-500:])),
            "loss_at_chance": math.log(settings.trace_batch * CROPS_PER_RECIPE_IN_A_BATCH - 1),
            "channels": chosen.tolist(), "amplitude_x_spread": settings.trace_amplitude, "pull": settings.trace_pull,
            "channel_psnr_drop_db_sum": float(picked[:, 0].sum()), "channel_rate_rise_sum": float(picked[:, 1].sum()),
            "channel_survival_mean": float(picked[:, 2].mean()), "all_channels_survival_mean": float(costs[:, 2].mean())}
