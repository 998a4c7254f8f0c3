"""Deterministic entropy models for the bitstream, coded with ``constriction``'s range coder.

The coder needs the very same distributions in the encoder and in every decoder, on any machine.
So no distribution is made from a raw float of a network:

- **residual_quant**: zero-mean Gaussians of the residual, as the rate model (``entropy.py``) assumes,
  but at one of :data:`SCALE_LEVELS` fixed scales, log-spaced from :data:`SCALE_MIN` (the rate
  model's floor) to :data:`SCALE_MAX` (as CompressAI's ``GaussianConditional`` with its scale table).
  Each position's level is its scale's nearest level in the log domain, computed from ``z_hat``
  (integers, from the stream) by a float64 copy of the hyper- and scale decoders: a position whose
  log-scale lies within float64 noise (~1e-15) of a level boundary is the only way two machines
  could disagree, and the stream's symbol CRC turns even that into a refusal, never wrong latents.
  Each level's table covers ``[-R, R]`` with ``R = ceil(TAIL * scale)`` plus two escape symbols
  (below, above); escaped magnitudes follow in the same stream, Elias-gamma style with uniform models.
- **z_hat**: per channel, the rate model's discretised logistic over the whole int8 range
  (``[-127, 127]``, tails folded into the ends) from the checkpoint's ``log_scale``.

Every table is rounded to integer frequencies (``round(p * 2**20)``, at least 1) in float64 here
once; those integers, exactly representable, are what ``constriction`` sees. Their SHA-256
(:attr:`EntropyModels.digest`) goes into each file, and a decoder whose tables differ (another
version, a platform whose ``erfc`` differs) refuses the file instead of decoding garbage.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from latentsweep.bitstream.container import BitstreamError
from latentsweep.codec.entropy import SCALE_FLOOR
from latentsweep.codec.hyperprior import Z_LIMIT

SCALE_MIN = SCALE_FLOOR
SCALE_MAX = 256.0
SCALE_LEVELS = 64
TAIL = 6.5          # table half-width in scales: beyond it a value is escaped (mass < 1e-10)
FREQUENCY_BITS = 20
MAX_MAGNITUDE = (1 << 24) - 1  # of a quantised residual beyond its table (constriction's Uniform < 2**24)
ESCAPE_LENGTH_SYMBOLS = 25  # bit lengths 0..24 of an escaped magnitude
_LOG_MIN, _LOG_MAX = math.log(SCALE_MIN), math.log(SCALE_MAX)
_LOG_STEP = (_LOG_MAX - _LOG_MIN) / (SCALE_LEVELS - 1)


def scale_levels() -> np.ndarray:
    return np.exp(_LOG_MIN + _LOG_STEP * np.arange(SCALE_LEVELS))


def level_of(log_scale: "np.ndarray") -> np.ndarray:
    """Nearest level of each float64 log-scale; scales below the floor take level 0. uint8: numpy's stable
    sort of 8-bit keys (``_groups``) is a radix sort, 15x faster than on int32."""
    index = np.rint((np.asarray(log_scale, np.float64) - _LOG_MIN) / _LOG_STEP)
    return np.clip(np.nan_to_num(index, nan=0.0), 0, SCALE_LEVELS - 1).astype(np.uint8)


def _frequencies(probabilities: list[float]) -> np.ndarray:
    total = float(1 << FREQUENCY_BITS)
    return np.array([max(1, int(round(p * total))) for p in probabilities], np.int64)


def _gaussian_table(scale: float) -> np.ndarray:
    """Frequencies of symbols 0 (below -R), 1..2R+1 (values -R..R), 2R+2 (above R)."""
    reach = int(math.ceil(TAIL * scale))
    half = 1.0 / (math.sqrt(2.0) * scale)
    cdf = [0.5 * math.erfc(-(value + 0.5) * half) for value in range(-reach - 1, reach + 1)]
    inner = [cdf[i + 1] - cdf[i] for i in range(len(cdf) - 1)]
    return _frequencies([cdf[0]] + inner + [1.0 - cdf[-1]])


def _logistic_table(scale: float) -> np.ndarray:
    def cdf(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x / scale)) if x / scale > -700 else 0.0

    edges = [cdf(value + 0.5) for value in range(-Z_LIMIT, Z_LIMIT)]
    upper = edges + [1.0]
    lower = [0.0] + edges
    return _frequencies([u - l for u, l in zip(upper, lower)])


def _categorical(frequencies: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(frequencies.astype(np.float64), perfect=False)


@dataclass
class EntropyModels:
    """The integer tables of one checkpoint: residual levels (shared) and z_hat per branch and channel."""

    residual: list[np.ndarray]
    z: dict[str, list[np.ndarray]]
    digest: str

    @classmethod
    def build(cls, z_log_scales: dict[str, np.ndarray]) -> "EntropyModels":
        residual = [_gaussian_table(float(scale)) for scale in scale_levels()]
        z = {branch: [_logistic_table(math.exp(float(value))) for value in np.asarray(values, np.float64)]
             for branch, values in z_log_scales.items()}
        sha = hashlib.sha256(f"levels={SCALE_LEVELS},min={SCALE_MIN!r},max={SCALE_MAX!r},tail={TAIL!r},"
                             f"bits={FREQUENCY_BITS}".encode())
        for table in residual + [t for branch in sorted(z) for t in z[branch]]:
            sha.update(len(table).to_bytes(4, "little"))
            sha.update(table.astype("<i8").tobytes())
        return cls(residual, z, sha.hexdigest()[:32])

    def reach(self, level: int) -> int:
        return (len(self.residual[level]) - 3) // 2

    @cached_property
    def residual_coders(self) -> list:
        """``constriction`` models of :attr:`residual`, made once, not for every stream (~300 a file)."""
        return [_categorical(table) for table in self.residual]

    @cached_property
    def z_coders(self) -> dict[str, list]:
        return {branch: [_categorical(table) for table in tables] for branch, tables in self.z.items()}


# -- z_hat: one categorical per channel ------------------------------------------------------------

def encode_z(models: EntropyModels, branch: str, z_hat: np.ndarray) -> np.ndarray:
    """``z_hat`` int (C, h, w) -> compressed words."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    for channel, coder in enumerate(models.z_coders[branch]):
        symbols = z_hat[channel].reshape(-1).astype(np.int32) + Z_LIMIT
        if symbols.size:
            encoder.encode(symbols, coder)
    return encoder.get_compressed()


def decode_z(models: EntropyModels, branch: str, words: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    channels, height, width = shape
    decoder = _decoder(words)
    out = np.empty((channels, height * width), np.int32)
    for channel, coder in enumerate(models.z_coders[branch]):
        out[channel] = _decode(decoder, coder, height * width)
    return (out - Z_LIMIT).reshape(shape)


# -- residual_quant: Gaussians at fixed levels, grouped by level -----------------------------------

def _groups(levels: np.ndarray):
    """(level, positions in C order) of every level present: one stable sort, not a scan per level."""
    order = np.argsort(levels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(levels, minlength=SCALE_LEVELS))])
    for level in np.flatnonzero(bounds[1:] > bounds[:-1]):
        yield int(level), order[bounds[level]:bounds[level + 1]]


def encode_residual(models: EntropyModels, values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``values`` int (any shape) with one level each -> compressed words. Symbols go level by level
    (in C order within a level), then the escaped magnitudes in the same order."""
    import constriction

    values, levels = values.reshape(-1).astype(np.int64), levels.reshape(-1)
    if np.abs(values).max(initial=0) > MAX_MAGNITUDE:
        raise ValueError(f"a quantised residual exceeds {MAX_MAGNITUDE}: the latents are out of range")
    encoder = constriction.stream.queue.RangeEncoder()
    escaped = []
    for level, where in _groups(levels):
        chosen = values[where]
        reach = models.reach(level)
        symbols = np.clip(chosen, -reach - 1, reach + 1) + reach + 1
        encoder.encode(symbols.astype(np.int32), models.residual_coders[level])
        escaped.append(np.abs(chosen[np.abs(chosen) > reach]) - reach - 1)
    magnitudes = np.concatenate(escaped) if escaped else np.zeros(0, np.int64)
    if magnitudes.size:  # bit lengths, then the bits below each leading 1
        lengths = np.frexp(magnitudes.astype(np.float64))[1].astype(np.int32)
        encoder.encode(lengths, constriction.stream.model.Uniform(ESCAPE_LENGTH_SYMBOLS))
        long = lengths > 1
        if long.any():
            sizes = (1 << (lengths[long] - 1)).astype(np.int32)
            encoder.encode((magnitudes[long] - sizes).astype(np.int32), constriction.stream.model.Uniform(), sizes)
    return encoder.get_compressed()


def decode_residual(models: EntropyModels, words: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_residual`. The symbols of every level are decoded first, then mapped to
    values and their escapes resolved in whole arrays: per level, only the range decoder runs."""
    import constriction

    groups = list(_groups(levels.reshape(-1)))
    out = np.zeros(levels.size, np.int64)
    if not groups:
        return out.reshape(levels.shape)
    decoder = _decoder(words)
    symbols = np.concatenate([_decode(decoder, models.residual_coders[level], where.size) for level, where in groups])
    reach = np.repeat([models.reach(level) for level, _ in groups], [where.size for _, where in groups])
    values = symbols - reach - 1
    outside = np.flatnonzero((symbols == 0) | (symbols == 2 * reach + 2))
    if outside.size:
        lengths = _decode(decoder, constriction.stream.model.Uniform(ESCAPE_LENGTH_SYMBOLS), outside.size)
        magnitudes = np.where(lengths > 0, 1, 0).astype(np.int64)
        long = lengths > 1
        if long.any():
            sizes = (1 << (lengths[long].astype(np.int64) - 1))
            magnitudes[long] = sizes + _decode(decoder, constriction.stream.model.Uniform(), sizes.astype(np.int32))
        values[outside] = np.where(symbols[outside] == 0, -1, 1) * (reach[outside] + 1 + magnitudes)
    out[np.concatenate([where for _, where in groups])] = values
    return out.reshape(levels.shape)


def _decoder(words: np.ndarray):
    import constriction

    try:
        return constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, np.uint32))
    except BaseException as error:  # pyo3 panics are BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(f"corrupt bitstream: the range decoder refused a stream ({error})") from None


def _decode(decoder, model, amount):
    """``amount`` i.i.d. symbols (an int), or one symbol per parameter (an array)."""
    try:
        return np.asarray(decoder.decode(model, amount), np.int64)
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(f"corrupt bitstream: range decoding failed ({error})") from None
