"""Mergeable per-dimension moments (count, mean, M2) in float64.

Each part of a data set is reduced to `Moments` on its own and the parts are merged with Chan
et al.'s pairwise update ("Updating formulae and a pairwise algorithm for computing sample
variances", 1979). Unlike a running sum and sum of squares this does not cancel catastrophically
when the mean is large next to the spread, and merging in a fixed order gives the same bytes
whichever worker finished first. Used for the feature store's normalisation statistics
(preprocess) and the latent store's per-channel statistics (train.export).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) per dimension, float64."""

    count: int
    mean: np.ndarray  # (D,)
    m2: np.ndarray  # (D,)

    @staticmethod
    def empty(dim: int) -> Moments:
        return Moments(0, np.zeros(dim), np.zeros(dim))

    @staticmethod
    def of(samples: np.ndarray) -> Moments:
        """Moments of the rows of `samples` (N, D)."""
        x = np.asarray(samples, dtype=np.float64)
        if len(x) == 0:
            return Moments.empty(x.shape[-1])
        mean = x.mean(axis=0)
        return Moments(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        """Moments of the union (Chan et al.); `a.merge(b)` is the fixed-order combination."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    def mean_std(self, std_floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Population mean and std (ddof 0), std floored at `std_floor`."""
        if self.count == 0:
            raise ValueError("no samples: cannot compute statistics of an empty set")
        return self.mean.copy(), np.maximum(np.sqrt(self.m2 / self.count), std_floor)
