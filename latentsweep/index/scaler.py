"""The paper's normalisation: z-score per dimension (fitted on the reference set), then L2.

The scaler is fitted in a streaming pass with float64 accumulators (Chan's parallel update), so
partial scalers from Ray tasks merge exactly and the reference set never sits in memory at once.
Like scikit-learn's StandardScaler, the variance is the population variance and a zero variance
scales by 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Scaler:
    count: int
    mean: np.ndarray  # float64 (d,)
    m2: np.ndarray    # float64 (d,): sum of squared deviations from the mean

    @classmethod
    def empty(cls, dimension: int) -> "Scaler":
        return cls(0, np.zeros(dimension), np.zeros(dimension))

    @classmethod
    def fit(cls, vectors: np.ndarray) -> "Scaler":
        data = np.asarray(vectors, dtype=np.float64)
        mean = data.mean(axis=0) if len(data) else np.zeros(data.shape[1])
        return cls(len(data), mean, ((data - mean) ** 2).sum(axis=0))

    def merge(self, other: "Scaler") -> "Scaler":
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        return Scaler(total, mean, m2)

    @property
    def scale(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.count, 1))
        return np.where(std > 0, std, 1.0)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """z-score, then L2-normalise each row (float32, ready for inner-product search)."""
        z = (np.asarray(vectors, dtype=np.float64) - self.mean) / self.scale
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return np.ascontiguousarray((z / np.where(norms > 0, norms, 1.0)).astype(np.float32))

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "Scaler":
        return cls(int(data["count"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64))
