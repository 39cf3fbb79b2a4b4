"""Wilson intervals against closed-form and published values."""

import math

import pytest
import torch

from robustkit import InputError
from robustkit.eval.stats import accuracy_with_ci, wilson_interval


def test_wilson_matches_formula_and_known_values():
    # Brown, Cai & DasGupta (2001) / standard tables: x=50, n=100 -> (0.4038, 0.5962); x=0, n=10 -> (0, 0.2775)
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and round(lo, 4) == 0.7225
    # general case from the closed form with z = 1.959964
    z, k, n = 1.959963984540054, 37, 120
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(k, n) == pytest.approx((c - h, c + h), abs=1e-12)


def test_halfwidth_matches_references_table():
    # REFERENCES.md: half-width near 50% is ±4.3 pt at n=512 and ±3.1 at n=1000
    for n, half in ((512, 0.043), (1000, 0.031)):
        lo, hi = wilson_interval(n // 2, n)
        assert (hi - lo) / 2 == pytest.approx(half, abs=0.001)


def test_wider_at_higher_confidence():
    a = wilson_interval(30, 60, 0.9)
    b = wilson_interval(30, 60, 0.99)
    assert b[0] < a[0] and b[1] > a[1]


@pytest.mark.parametrize("k, n, conf", [(1, 0, 0.95), (5, 4, 0.95), (-1, 4, 0.95), (2, 4, 1.0)])
def test_wilson_rejects_bad_input(k, n, conf):
    with pytest.raises(InputError):
        wilson_interval(k, n, conf)


def test_accuracy_with_ci_str():
    acc = accuracy_with_ci(torch.tensor([True] * 3 + [False]))
    assert (acc.correct, acc.n, acc.value) == (3, 4, 0.75)
    assert str(acc).startswith("75.00% (3/4; 95% CI ")
