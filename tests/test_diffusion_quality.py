"""robustkit.diffusion.quality: the loss-per-t and sample-accuracy measurements, checked against predictors
whose answers are known in closed form."""

from __future__ import annotations

import pytest
import torch

from robustkit import InputError
from robustkit.diffusion import TIMES, VPSDE, class_conditional_accuracy, loss_per_t

SDE = VPSDE(beta_min=0.1, beta_max=20.0)


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, torch.arange(n) % 10


class Oracle:
    """Knows the clean batch, so it recovers ε = (x_t − a(t)·x0) / σ(t) exactly — with a label. Without a
    label (the null label) it predicts 0."""

    def __init__(self, x0):
        self.x0 = x0

    def __call__(self, x_t, t, y):
        if y is None:
            return torch.zeros_like(x_t)
        mean_coef, std = SDE.marginal(t)
        return (x_t - mean_coef.view(-1, 1, 1, 1) * self.x0) / std.view(-1, 1, 1, 1)


def test_oracle_scores_zero_with_its_label_and_the_zero_predictor_without():
    x0, y = _images()
    draws = 3
    rows = loss_per_t(Oracle(x0.repeat(draws, 1, 1, 1)), x0, y, draws=draws, sde=SDE)
    assert [r["t"] for r in rows] == list(TIMES)
    for r in rows:
        assert r["cond"] < 1e-8, r                    # the exact noise, up to float error
        assert r["uncond"] == r["zero"], r            # null label → 0, on the same noise as the zero row
        assert 0.5 < r["zero"] < 1.5, r               # mean ε² of 3·8·16 standard normals


def test_noise_depends_on_seed_and_t_only():
    x0, y = _images()

    def zero(x, t, labels):
        return torch.zeros_like(x)

    a = loss_per_t(zero, x0, y, seed=1, times=(0.1, 0.5))
    b = loss_per_t(zero, x0, y, seed=1, times=(0.5,))
    c = loss_per_t(zero, x0, y, seed=2, times=(0.5,))
    assert a[1] == b[0]          # t = 0.5 gets the same draws whatever else is measured
    assert a[0]["zero"] != a[1]["zero"] and c[0]["zero"] != b[0]["zero"]


def test_bad_arguments_are_input_errors():
    x0, y = _images()
    with pytest.raises(InputError, match="draws"):
        loss_per_t(Oracle(x0), x0, y, draws=0)
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        loss_per_t(Oracle(x0), x0[0], y)
    with pytest.raises(InputError, match="per_class"):
        class_conditional_accuracy(None, None, per_class=0, steps=2)


class LabelPainter(torch.nn.Module):
    """A 'score model' whose DDIM samples come out brighter for higher classes: it predicts noise that
    pulls x towards the level (2·y/9 − 1) of its class."""

    input_shape = (1, 4, 4)
    num_classes = 10

    def forward(self, x_t, t, y):
        mean_coef, std = SDE.marginal(t)
        target = (2 * y.float() / 9 - 1).view(-1, 1, 1, 1).expand_as(x_t)
        return (x_t - mean_coef.view(-1, 1, 1, 1) * target) / std.view(-1, 1, 1, 1)


def test_sample_accuracy_counts_samples_the_judge_assigns_to_their_class():
    def brightness(images):            # reads the class back from the mean level
        level = images.mean((1, 2, 3)) * 9
        return -(level.view(-1, 1) - torch.arange(10).view(1, -1)).abs()

    with torch.no_grad():
        acc, images = class_conditional_accuracy(LabelPainter(), brightness, per_class=3, steps=10, sde=SDE)
    assert images.shape == (30, 1, 4, 4) and (acc.correct, acc.n) == (30, 30)

    def always_zero(images):
        return torch.nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), 10).float()

    with torch.no_grad():
        acc, again = class_conditional_accuracy(LabelPainter(), always_zero, per_class=3, steps=10, sde=SDE)
    assert (acc.correct, acc.n) == (3, 30)    # exactly the samples of class 0: chance, 1/K
    assert torch.equal(images, again)         # same seed, same samples
