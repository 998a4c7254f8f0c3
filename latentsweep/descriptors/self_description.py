"""The ``self_description`` descriptor: a small learned bank of prediction-error filters, then a
closed-form description of each filter's residual made from the image alone.

After Forensic Self-Descriptions (Nguyen, Azizpour and Stamm, CVPR 2025) and the resampling
statistics of Popescu and Farid (2005):

* **Learned filters** (shipped in ``weights/self-description.pt``): five constrained prediction-error
  filters on a 5x5 window, ``residual = prediction - centre``, with the centre tap fixed at -1 and the
  others summing to 1 (Bayar and Stamm's constraint). Each has its own support (the 3x3 box, the two
  axes to distance 2, the ring at distance 2, the full 5x5, the diagonals) and is symmetric under the
  square's eight symmetries; each is the least-squares predictor of a pixel from that support on real
  photos only (the codec's training photos, :mod:`.train`). Nothing about any class is learned: on a
  camera-like photo the residuals are close to white, and how a resizer formed the pixels shows as
  structure left in them.
* **Self-description** of each residual ``r``, per image:

  - the linear prediction coefficients of ``r`` from its own 24 neighbours in a 5x5 window (the
    least-squares solution, from ``r``'s autocorrelation: the Yule-Walker equations), one per pair of
    opposite neighbours (12 values): the interpolation kernel's correlations;
  - the 1-D power spectrum of ``r`` along rows and columns, averaged over Hann-windowed segments of 32
    and of 64 pixels (Welch), log, mean-free (17 + 33 values): the kernel's frequency response, at a
    resolution that does not depend on the image's size;
  - the 1-D power spectrum of ``|r|`` (the local prediction-error energy, mean-free per segment) the
    same way, without its DC bin (16 + 32 values): resampling makes the error energy periodic with the
    resampling period (Popescu and Farid's p-map), which this spectrum shows as peaks.

  Rows and columns are averaged, so the vector is invariant to transposes and flips. 103 values per
  filter, 515 in all. An index z-scores and ranks by cosine, like the other descriptors.

Computed from one image alone (batch invariant) in float32 on the image's device; the weights are
verified against their SHA-256 sidecar before use, and the column's version names their digest
(``schema.DESCRIPTORS``), so vectors made with other weights never share an index.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from latentsweep.descriptors.residual import LUMA

WEIGHTS = Path(__file__).parent / "weights" / "self-description.pt"
VERSION = "1"                     # of the computation; the column's version adds the weights' digest
DIGEST_CHARS = 16                 # hex characters of the weights' SHA-256 the column's version carries
WINDOW = 5                        # filter window; the centre tap is the predicted pixel
SUPPORTS = ("box3", "axis2", "ring2", "box5", "diag")
SEGMENTS = (32, 64)               # Welch segment lengths of the 1-D spectra
RADIUS = 2                        # the self-description's neighbourhood: a 5x5 window around the pixel
LAGS = 2 * RADIUS                 # autocorrelation lags the Yule-Walker equations need
RIDGE = 1e-3                      # relative ridge of the Yule-Walker solve (flat or periodic residuals)
EPSILON = 1e-4                    # absolute floor, 8-bit grey levels squared

NEIGHBOURS = [(dy, dx) for dy in range(-RADIUS, RADIUS + 1) for dx in range(-RADIUS, RADIUS + 1) if (dy, dx) != (0, 0)]
# the neighbours' orbits under the square's eight symmetries: (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)
ORBITS = sorted({tuple(sorted((abs(dy), abs(dx)))) for dy, dx in NEIGHBOURS})
COEFFICIENTS = len(ORBITS)
PER_FILTER = COEFFICIENTS + sum(segment // 2 + 1 for segment in SEGMENTS) + sum(segment // 2 for segment in SEGMENTS)
DIMENSIONS = len(SUPPORTS) * PER_FILTER


def support(name: str) -> list[tuple[int, int]]:
    """The window offsets (dy, dx) a filter predicts the centre from."""
    inside = {"box3": lambda y, x: max(abs(y), abs(x)) == 1,
              "axis2": lambda y, x: y == 0 or x == 0,
              "ring2": lambda y, x: max(abs(y), abs(x)) == 2,
              "box5": lambda y, x: True,
              "diag": lambda y, x: abs(y) == abs(x)}[name]
    half = WINDOW // 2
    return [(y, x) for y in range(-half, half + 1) for x in range(-half, half + 1) if (y, x) != (0, 0) and inside(y, x)]


def digest() -> str:
    """The shipped weights' SHA-256, checked against their sidecar."""
    return _weights()[1]


def column_version() -> str:
    """The column's version for the shipped weights: ``<VERSION>-w<digest[:16]>`` (as recorded in
    ``schema.DESCRIPTORS``, which loading checks)."""
    return f"{VERSION}-w{digest()[:DIGEST_CHARS]}"


def load(path: str | Path = WEIGHTS) -> tuple[torch.Tensor, str, dict]:
    """(filters float32 (K, 1, 5, 5), digest, card) of a verified weights file. Refuses a file without
    its sidecar, whose bytes differ from the sidecar's SHA-256, or that does not hold the filter bank."""
    from latentsweep.codec.weights import WeightsError, _verified

    path, data, sha256, record = _verified(Path(path))
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    filters = state.get("filters") if isinstance(state, dict) else None
    if not isinstance(filters, torch.Tensor) or tuple(filters.shape) != (len(SUPPORTS), 1, WINDOW, WINDOW):
        raise WeightsError(f"{path} does not hold a self_description filter bank of shape "
                           f"({len(SUPPORTS)}, 1, {WINDOW}, {WINDOW})")
    return filters.float(), sha256, record.get("meta", {})


@lru_cache(maxsize=1)
def _weights() -> tuple[torch.Tensor, str]:
    """The shipped filters, verified, and refused unless they are the ones the column's version names."""
    from latentsweep.codec.weights import WeightsError
    from latentsweep.schema import DESCRIPTORS

    filters, sha256, _ = load(WEIGHTS)
    expected = DESCRIPTORS["self_description"][1]
    if f"{VERSION}-w{sha256[:DIGEST_CHARS]}" != expected:
        raise WeightsError(f"{WEIGHTS.name} (sha256 {sha256[:DIGEST_CHARS]}...) is not the filter bank this latentsweep "
                           f"records as self_description version {expected}: retrained weights need the version "
                           f"in schema.DESCRIPTORS updated with them")
    return filters, sha256


@lru_cache(maxsize=8)
def _on(device: str) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: a plain tensor, which inference and autograd (training) can both use
        return _weights()[0].to(device).clone()


def describe(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (DIMENSIONS,), on ``rgb``'s device."""
    return describe_with(rgb, _on(str(rgb.device)))


def describe_with(rgb: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The descriptor with a given filter bank (K, 1, 5, 5) on ``rgb``'s device (training, tests)."""
    plane = _extend(rgb.float() @ torch.tensor(LUMA, dtype=torch.float32, device=rgb.device), max(SEGMENTS) + WINDOW)
    residuals = residual_bank(plane, filters)
    parts = [_coefficients(residuals)]
    for segment in SEGMENTS:
        parts.append(_axis_spectrum(residuals, segment, energy=False))
        parts.append(_axis_spectrum(residuals, segment, energy=True))
    return torch.cat(parts, dim=1).flatten()


def residual_bank(plane: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """(H, W) luma -> (K, H - 4, W - 4) prediction errors where the whole window lies in the image."""
    return F.conv2d(plane[None, None], filters)[0]


def _extend(plane: torch.Tensor, at_least: int) -> torch.Tensor:
    """Mirror sides shorter than ``at_least`` (tiny images still fill a segment)."""
    while min(plane.shape) < at_least:
        plane = torch.cat([plane, plane.flip(0)], 0) if plane.shape[0] < at_least else plane
        plane = torch.cat([plane, plane.flip(1)], 1) if plane.shape[1] < at_least else plane
    return plane


def _neighbour_index(device: torch.device) -> tuple[torch.Tensor, ...]:
    rows = torch.tensor([[LAGS + m[0] - n[0] for m in NEIGHBOURS] for n in NEIGHBOURS], device=device)
    cols = torch.tensor([[LAGS + m[1] - n[1] for m in NEIGHBOURS] for n in NEIGHBOURS], device=device)
    target_rows = torch.tensor([LAGS + n[0] for n in NEIGHBOURS], device=device)
    target_cols = torch.tensor([LAGS + n[1] for n in NEIGHBOURS], device=device)
    return rows, cols, target_rows, target_cols


def _coefficients(residuals: torch.Tensor) -> torch.Tensor:
    """(K, H, W) -> (K, COEFFICIENTS): each residual's least-squares prediction from its 24 neighbours,
    solved from its (biased, zero-padded) autocorrelation."""
    count, height, width = residuals.shape
    size = (height + LAGS, width + LAGS)
    spectrum = torch.fft.rfft2(residuals, s=size)
    autocorrelation = torch.fft.irfft2(spectrum.real.square() + spectrum.imag.square(), s=size)
    lags = torch.arange(-LAGS, LAGS + 1, device=residuals.device)
    autocorrelation = autocorrelation[:, lags % size[0]][:, :, lags % size[1]] / (height * width)
    rows, cols, target_rows, target_cols = _neighbour_index(residuals.device)
    energy = autocorrelation[:, LAGS, LAGS]
    system = autocorrelation[:, rows, cols]
    system = system + (RIDGE * energy + EPSILON)[:, None, None] * torch.eye(len(NEIGHBOURS), device=residuals.device)
    solution = torch.linalg.solve(system, autocorrelation[:, target_rows, target_cols])
    return solution @ _orbit_average(residuals.device)


@lru_cache(maxsize=8)
def _orbit_average_cached(device: str) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: a plain tensor (as :func:`_on`)
        average = torch.zeros(len(NEIGHBOURS), len(ORBITS))
        for i, (dy, dx) in enumerate(NEIGHBOURS):
            average[i, ORBITS.index(tuple(sorted((abs(dy), abs(dx)))))] = 1.0
        return (average / average.sum(0)).to(device)


def _orbit_average(device: torch.device) -> torch.Tensor:
    """(24, 5): the mean of the coefficients over each orbit (flips and transposes leave it unchanged)."""
    return _orbit_average_cached(str(device))


def _axis_spectrum(residuals: torch.Tensor, segment: int, energy: bool) -> torch.Tensor:
    """(K, H, W) -> (K, bins): the log power spectrum along rows and along columns (averaged), over
    Hann-windowed segments tiling each line from both ends; of ``|r|`` without its DC bin when
    ``energy``. Mean-free."""
    window = torch.hann_window(segment, periodic=False, dtype=residuals.dtype, device=residuals.device)
    total = 0.0
    for planes in (residuals, residuals.transpose(1, 2)):
        count, rows, cols = planes.shape
        used = cols // segment * segment
        pieces = planes[:, :, :used].reshape(count, -1, segment)
        if used < cols:  # tiled from both ends, so that a flip describes the same pixels
            pieces = torch.cat([pieces, planes[:, :, cols - used:].reshape(count, -1, segment)], 1)
        if energy:
            pieces = pieces.abs()
            pieces = pieces - pieces.mean(-1, keepdim=True)
        transform = torch.fft.rfft(pieces * window, dim=-1)
        total = total + (transform.real.square() + transform.imag.square()).mean(1)
    values = torch.log(total / 2 + EPSILON)
    if energy:
        values = values[:, 1:]
    return values - values.mean(1, keepdim=True)
