"""Training of the ``self_description`` filter bank on real photos only.

Each filter is the constrained least-squares predictor of a pixel's luma from its support (see
:func:`latentsweep.descriptors.self_description.support`) on the codec's training photos
(``photos.names("train")``: the 14 photos bundled with scikit-image that the codec was trained on),
whole images, no augmentation, no formation, no re-encoding: the filters know real photos and nothing
else. The taps are tied under the square's eight symmetries (one weight per orbit of offsets), the
centre tap is -1 and the others sum to 1 (Bayar and Stamm's constraint: the filter's output is a
prediction error and ignores the image's mean). The solution is exact: the normal equations of every
photo summed, one solve per filter with a Lagrange multiplier for the constraint (in float64), so
training is deterministic and takes seconds. The held-out photos (``photos.HELD_OUT``) report each
filter's prediction gain on photos it never saw.

    python -m latentsweep_lab.training.descriptor --out latentsweep/descriptors/weights/self-description.pt
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from latentsweep_lab import photos
from latentsweep.descriptors import self_description as sd
from latentsweep.descriptors.residual import LUMA

RIDGE = 1e-6  # relative to the mean diagonal of the normal equations: keeps an exactly flat photo solvable


def _luma(name: str) -> np.ndarray:
    return photos.load(name).astype(np.float64) @ np.asarray(LUMA)


def _orbit(offset: tuple[int, int]) -> tuple[int, int]:
    return tuple(sorted((abs(offset[0]), abs(offset[1]))))


def _design(plane: np.ndarray, offsets: list[tuple[int, int]], orbits: list) -> tuple[np.ndarray, np.ndarray]:
    """(N, orbits) sums of the plane at each orbit's offsets, and the (N,) centres, over the interior."""
    half = sd.WINDOW // 2
    height, width = plane.shape
    centre = plane[half:height - half, half:width - half]
    columns = []
    for orbit in orbits:
        total = np.zeros_like(centre)
        for dy, dx in offsets:
            if _orbit((dy, dx)) == orbit:
                total += plane[half + dy:height - half + dy, half + dx:width - half + dx]
        columns.append(total.ravel())
    return np.stack(columns, 1), centre.ravel()


def fit(name: str, planes: list[np.ndarray]) -> np.ndarray:
    """The (5, 5) prediction-error filter of support ``name`` fitted on ``planes``."""
    offsets = sd.support(name)
    orbits = sorted({_orbit(offset) for offset in offsets})
    gram, moment = np.zeros((len(orbits), len(orbits))), np.zeros(len(orbits))
    for plane in planes:
        design, centre = _design(plane, offsets, orbits)
        gram += design.T @ design
        moment += design.T @ centre
    gram += RIDGE * np.trace(gram) / len(orbits) * np.eye(len(orbits))
    taps = np.array([sum(_orbit(offset) == orbit for offset in offsets) for orbit in orbits], float)
    # minimise |centre - design w|^2 subject to taps . w = 1 (the prediction's weights sum to 1)
    system = np.block([[2 * gram, taps[:, None]], [taps[None, :], np.zeros((1, 1))]])
    weights = np.linalg.solve(system, np.concatenate([2 * moment, [1.0]]))[:-1]
    kernel = np.zeros((sd.WINDOW, sd.WINDOW))
    half = sd.WINDOW // 2
    for dy, dx in offsets:
        kernel[half + dy, half + dx] = weights[orbits.index(_orbit((dy, dx)))]
    kernel[half, half] = -1.0
    return kernel


def prediction_gain(kernel: np.ndarray, planes: list[np.ndarray]) -> float:
    """10 log10(variance of the luma / mean square prediction error) in dB over ``planes``."""
    filters = torch.from_numpy(kernel)[None, None]
    signal = error = 0.0
    for plane in planes:
        tensor = torch.from_numpy(plane)
        residual = torch.nn.functional.conv2d(tensor[None, None], filters)[0, 0]
        signal += float(tensor.var()) * residual.numel()
        error += float(residual.square().sum())
    return round(10 * np.log10(signal / max(error, 1e-12)), 3)


def train(out: str, progress=print) -> dict:
    from latentsweep.codec.weights import write_checkpoint

    started = time.monotonic()
    training = photos.names("train")
    planes = [_luma(name) for name in training]
    held_out = [_luma(name) for name in photos.names("held_out")]
    kernels = [fit(name, planes) for name in sd.SUPPORTS]
    seconds = round(time.monotonic() - started, 2)
    gains = {name: {"training_photos_db": prediction_gain(kernel, planes),
                    "held_out_photos_db": prediction_gain(kernel, held_out)}
             for name, kernel in zip(sd.SUPPORTS, kernels)}
    for name, gain in gains.items():
        progress(f"filter {name}: prediction gain {gain['training_photos_db']} dB on the training photos, "
                 f"{gain['held_out_photos_db']} dB on the held-out photos")
    filters = torch.from_numpy(np.stack(kernels)).float()[:, None]
    meta = {"kind": "self-description-filters", "descriptor_version": sd.VERSION,
            "supports": list(sd.SUPPORTS), "window": sd.WINDOW,
            "training_data": "whole photos of photos.names('train') (the codec's training photos, bundled with "
                             "scikit-image), luma (BT.601), 8-bit scale; no augmentation, no formation, no "
                             "re-encoding, no evaluation class or software",
            "training_photos": training, "held_out_photos": photos.names("held_out"),
            "method": "per filter: constrained least squares (taps tied under the square's 8 symmetries, centre -1, "
                      "others summing to 1), the normal equations of all photos summed and solved once (float64)",
            "steps": 1, "ridge": RIDGE, "train_seconds": seconds, "threads": torch.get_num_threads(),
            "prediction_gain": gains, "torch": torch.__version__}
    meta["sha256"] = write_checkpoint({"filters": filters}, out, meta)
    progress(f"wrote {out} (sha256 {meta['sha256'][:16]}...) in {seconds} s")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(sd.WEIGHTS), help="where to write the filters (.pt) and card (.json)")
    train(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
