"""Confidence intervals for accuracies.

Accuracies are binomial proportions; robustkit reports them with the Wilson score interval, which
stays inside [0, 1] and is accurate for small n and for proportions near 0 or 1 (unlike the normal
approximation). Reference: Wilson, JASA 1927; Brown, Cai & DasGupta, Statistical Science 2001.

Example::

    >>> from robustkit.eval.stats import wilson_interval
    >>> lo, hi = wilson_interval(50, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.4038, 0.5962)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``."""
    if n <= 0:
        raise InputError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise InputError(f"successes must lie in [0, n={n}], got {successes}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    from scipy.stats import norm  # here, not at import: scipy.stats costs every command ~1.5 s of startup

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at k = 0 (k = n) the lower (upper) bound is exactly 0 (1); rounding would leave 1e-17 residues
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its sample size and Wilson interval (fractions in [0, 1])."""

    correct: int
    n: int
    confidence: float
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.n

    def __str__(self) -> str:
        pct = int(round(self.confidence * 100))
        return (f"{100 * self.value:.2f}% ({self.correct}/{self.n}; {pct}% CI "
                f"{100 * self.low:.2f}-{100 * self.high:.2f}%)")


def accuracy_with_ci(correct: torch.Tensor, confidence: float = 0.95) -> Accuracy:
    """Summarise a boolean per-example tensor as an :class:`Accuracy`."""
    n = int(correct.numel())
    k = int(correct.sum())
    lo, hi = wilson_interval(k, n, confidence)
    return Accuracy(k, n, confidence, lo, hi)
