"""How good is a trained class-conditional score model: denoising loss per t, and sample accuracy.

Two measurements on data the model never saw, shared by ``scripts/eval_score_model.py`` (one registered
model) and ``bench/compare_backbones.py`` (backbones at equal budget):

* :func:`loss_per_t` — the denoising loss ``mean (ε̂(x_t, t, y) − ε)²`` at fixed times on held-out
  images, with the true label (``cond``) and with the null label (``uncond``), next to the loss of the
  zero predictor ε̂ = 0 on the *same* noise (``zero``, ≈ 1: the scale every loss is read against). The
  noise of each t comes from a generator seeded by ``(seed, t)``, so two models measured with the same
  seed see identical noise draws.
* :func:`class_conditional_accuracy` — the fraction of class-conditional samples (deterministic DDIM from
  seeded pure noise, optionally with classifier-free guidance) that an independent classifier assigns to
  their conditioning class, with a 95 % Wilson interval. A model that ignores its label scores chance
  (1/K); one whose samples look like their class scores near the classifier's own test accuracy.

Like the rest of :mod:`robustkit.diffusion`, nothing here changes grad mode: call them under
``torch.no_grad()`` (the example does), or they keep autograd graphs they do not need.

Example::

    >>> import torch, robustkit
    >>> from robustkit.diffusion import class_conditional_accuracy, create_score_model, loss_per_t
    >>> model = create_score_model("tiny_unet.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", split="test", n_examples=64)
    >>> with torch.no_grad():
    ...     rows = loss_per_t(model, x * 2 - 1, y, draws=1, times=(0.1, 0.5))
    >>> [r["t"] for r in rows], all(r["cond"] < 0.5 * r["zero"] for r in rows)
    ([0.1, 0.5], True)
    >>> judge = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> with torch.no_grad():
    ...     acc, images = class_conditional_accuracy(model, judge, per_class=2, steps=20)
    >>> images.shape, acc.n
    (torch.Size([20, 1, 8, 8]), 20)
"""

from __future__ import annotations

from typing import Callable

import torch

from ..eval.stats import Accuracy, accuracy_with_ci
from ..errors import InputError
from ..utils import check_positive_int
from .schedule import VPSDE
from .train import denoising_loss, sample_images

__all__ = ["TIMES", "class_conditional_accuracy", "loss_per_t", "sde_of"]

#: The times :func:`loss_per_t` reports by default: DiffPure's t* (0.1) and its neighbourhood, up to pure noise.
TIMES = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


def sde_of(model: torch.nn.Module) -> VPSDE:
    """The SDE a model was trained under: its score-model registry entry's, else the default ``VPSDE()``."""
    cfg = getattr(model, "registry_config", None)
    return cfg.sde if cfg is not None else VPSDE()


def loss_per_t(model: Callable, x0: torch.Tensor, y: torch.Tensor, *, draws: int = 1, seed: int = 0,
               times: tuple[float, ...] = TIMES, sde: VPSDE | None = None) -> list[dict]:
    """Mean denoising loss at each of ``times``: conditional, unconditional, and the zero predictor.

    Args:
        model: a class-conditional ScoreModel (``model(x_t, t, y)``; ``y=None`` is the null label).
        x0: held-out images in ``[-1, 1]``, ``[N, C, H, W]``; ``y``: their labels ``[N]``.
        draws: noise draws per image (the batch is ``x0`` repeated ``draws`` times).
        seed: with t, seeds the noise; the three predictors of one t share it.
        times: the times in ``(0, 1]``.
        sde: the SDE the model was trained under (default: :func:`sde_of`).

    Returns:
        one dict per t: ``{"t", "cond", "uncond", "zero"}`` (floats).
    """
    if x0.ndim != 4 or y.shape != (x0.shape[0],):
        raise InputError(f"x0 must be [N, C, H, W] with y [N]; got {tuple(x0.shape)} and {tuple(y.shape)}")
    check_positive_int("draws", draws)
    sde = sde if sde is not None else sde_of(model)
    xs, ys = x0.repeat(draws, 1, 1, 1), y.repeat(draws)

    def zero(x, t, labels):
        return torch.zeros_like(x)

    rows = []
    for t in times:
        row = {"t": t}
        for name, predictor, labels in (("cond", model, ys), ("uncond", model, None), ("zero", zero, None)):
            g = torch.Generator().manual_seed(seed * 1000 + int(round(t * 100)))  # the same noise for all three
            row[name] = float(denoising_loss(predictor, xs, t, y=labels, sde=sde, generator=g).mean())
        rows.append(row)
    return rows


def class_conditional_accuracy(model: torch.nn.Module, classifier: Callable, *, per_class: int, steps: int,
                               guidance: float = 0.0, seed: int = 0,
                               sde: VPSDE | None = None) -> tuple[Accuracy, torch.Tensor]:
    """Sample ``per_class`` images of every class and count those ``classifier`` assigns to their class.

    Args:
        model: a class-conditional ScoreModel with ``num_classes``.
        classifier: maps images in ``[0, 1]`` to logits (e.g. a :class:`~robustkit.Classifier`).
        per_class: samples per class; ``steps``: DDIM steps from pure noise (seeded by ``seed``).
        guidance: classifier-free guidance weight (0: the plain conditional model).
        sde: the SDE the model was trained under (default: :func:`sde_of`).

    Returns:
        ``(accuracy with its 95 % Wilson interval, the samples in [0, 1], class-major)``.
    """
    check_positive_int("per_class", per_class)
    sde = sde if sde is not None else sde_of(model)
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    images = sample_images(model, labels, steps=steps, guidance_scale=guidance, beta_min=sde.beta_min,
                           beta_max=sde.beta_max, generator=torch.Generator().manual_seed(seed))
    pred = classifier(images).argmax(1).cpu()
    return accuracy_with_ci(pred == labels), images
