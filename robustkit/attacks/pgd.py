"""Projected gradient descent (Madry et al., ICLR 2018) with EOT gradient averaging.

Each step ascends the loss along ``sign(g)`` (Linf) or, for L2, ``g/||g||_2`` (``l2_step="normalized"``,
Madry et al.) or ``sign(g)`` then the L2-ball projection (``l2_step="sign"``: Lee & Kim's official
``PGDL2``, the ``pgd-eot`` preset's L2 rule), where ``g`` is the gradient
averaged over ``eot`` forward-backward passes (Athalye et al., ICML 2018: expectation over
transformation, for stochastic models), then projects onto the threat model. A defense that evaluates its
draws as one batch (``batches_draws``: DiffPure's :class:`~robustkit.defenses.PurifiedClassifier`) gets the
``eot`` draws as one forward of the repeated input, at most ``eot_batch`` rows (:func:`eot_gradient`); the
gradient equals the draw-by-draw one up to float rounding (``tests/test_eot_batch.py``). On a deterministic model
the first iterate that is misclassified is kept, per example. On a stochastic one every step is taken and
the last iterate returned (``early_stop="auto"``, the default): an iterate "seen misclassified" once may
be a lucky draw just past the boundary, and stopping there hands the final verification a point that
the next draw classifies right. On the digits CNN with N(0, 1) logit noise, 20 margin steps × EOT 2 at
eps 0.3 leave 27 % of 200 images with early stopping and 0 % without (``tests/test_attacks.py``).
``early_stop=False`` also gives a *transfer* attack the highest-loss point it needs: a
first-misclassified iterate lies just past the source model's decision boundary and rarely fools
another model (Carlini & Wagner, S&P 2017, on high-confidence transfer).

Reference:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
    Lee & Kim, "Robust Evaluation of Diffusion-Based Adversarial Purification", ICCV 2023 (the ``pgd-eot``
    preset; official code ml-postech/robust-evaluation-of-diffusion-based-purification, whose L2 iterates
    ``tests/test_fidelity_lee_kim.py`` reproduces; ``docs/results/fidelity.md`` measures the L2 step rules).

Example::

    >>> import robustkit
    >>> from robustkit.attacks import PGD
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=32)
    >>> res = PGD(eps=0.3, steps=20, step_size=0.05)(clf, x, y)
    >>> res.robust_accuracy < res.clean_accuracy
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..utils import check_positive_int
from .base import EOT_BATCH, EotBatch, GRAD_COST, Attack, Norm, Perturbation, check_eot_batch, eot_chunks, project


LOSSES = ("ce", "margin")
LOSS_CHOICES = (*LOSSES, "auto")


def resolve_loss(loss: str, traits: Any) -> str:
    """``"auto"`` → ``"margin"`` for a generative classifier (``traits.generative``: logits that can
    saturate the softmax), else ``"ce"``; other losses pass through."""
    if loss != "auto":
        return loss
    return "margin" if traits is not None and getattr(traits, "generative", False) else "ce"
L2_STEPS = ("normalized", "sign")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``max_{j≠y} z_j − z_y`` (positive iff misclassified); ``[N, K]``, ``[N]`` → ``[N]``."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - true


def summed_loss(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The batch's summed attack loss, ``"ce"`` (cross-entropy) or ``"margin"`` (:func:`margin_loss`)."""
    return F.cross_entropy(logits, y, reduction="sum") if loss == "ce" else margin_loss(logits, y).sum()


def ascent_step(grad: torch.Tensor, norm: Norm, step_size: float, l2_step: str = "normalized") -> torch.Tensor:
    """A steepest-ascent step of length ``step_size``: ``step_size · sign(g)`` (Linf, or L2 with
    ``l2_step="sign"``), else ``step_size · g/‖g‖₂`` per example (L2)."""
    if norm == "Linf" or l2_step == "sign":
        return step_size * grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return step_size * grad / n


def eot_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, loss: str, *,
                 max_batch: EotBatch = EOT_BATCH,
                 allow_unused: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The input gradient of ``loss`` (:func:`summed_loss`) averaged over ``draws`` EOT draws, and the last
    draw's logits (detached). Draws are batched as :func:`~robustkit.attacks.base.eot_chunks` allows, each
    chunk differentiated before the next is computed; the gradient through the repeated input is the sum of
    the draws' gradients, so it equals the sequential average up to float rounding. With ``allow_unused``,
    a loss that does not depend on ``x`` gives None instead of raising.

    Shape:
        ``x`` ``[N, C, H, W]``, ``y`` ``[N]`` → gradient ``[N, C, H, W]``, logits ``[N, K]``.
    """
    xa = x.detach().requires_grad_(True)
    grad = torch.zeros_like(xa)
    with torch.enable_grad():
        for logits in eot_chunks(model, xa, draws, max_batch=max_batch):
            e = logits.shape[0]
            labels = y if e == 1 else y.repeat(e)
            (g,) = torch.autograd.grad(summed_loss(logits.flatten(0, 1), labels, loss), xa, allow_unused=allow_unused)
            if g is None:
                return None, logits[-1].detach()
            grad += g
            last = logits[-1].detach()
    return grad / draws, last


def random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the Linf box, or of the L2 ball (uniform direction and radius ∝ U^(1/d))."""
    if norm == "Linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype).flatten(1)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        r = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype) ** (1 / d.shape[1])
        delta = (d * r * eps).view_as(x)
    return project(x + delta, x, eps, norm)


class PGD(Attack):
    """PGD with optional random start and EOT.

    Args:
        eps, norm, seed: see :class:`~robustkit.attacks.base.Attack`.
        steps: number of gradient steps.
        step_size: step length (Linf: per coordinate; L2: Euclidean).
        eot: gradients averaged per step (1 for deterministic models).
        random_start: start from a uniform point in the ball instead of ``x``.
        early_stop: keep, per example, the first iterate seen misclassified (True) or return the last
            iterate (False; for crafting examples on a source model to transfer). ``"auto"``: True for a
            deterministic model, False for a stochastic one (``traits.stochastic``); the record states
            which ran.
        l2_step: the L2 step rule: ``"normalized"`` (``step_size · g/||g||_2``, a Euclidean step of length
            ``step_size``) or ``"sign"`` (``step_size · sign(g)``, a step of L2 length ``step_size·√d``,
            then the projection onto the ball; Lee & Kim's official ``PGDL2``). Ignored for Linf, whose
            step is always the sign.
        eot_batch: the most rows (draws × examples) one batched forward of the EOT draws holds, for a defense
            that evaluates draws as one batch (``batches_draws``; the gradient equals the sequential one up
            to float rounding); 1: draw by draw; None: all draws at once; ``"auto"`` (default): sized by the
            input (:data:`~robustkit.attacks.base.EOT_BATCH`).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini–Wagner's ``max_{j≠y} z_j − z_y``, ascended).
            The margin's gradient does not vanish when the logits saturate the softmax (logit gaps of
            hundreds, as a diffusion classifier's ``−L_y`` can have), where the cross-entropy's is exactly 0.
            ``"auto"`` (the default): the margin for a generative classifier (``traits.generative``), else
            the cross-entropy; the result's ``info["loss"]`` states which ran.
    """

    name = "pgd"

    def __init__(self, *, eps: float, norm: Norm = "Linf", steps: int = 10, step_size: float | None = None,
                 eot: int = 1, random_start: bool = True, early_stop: bool | str = "auto", loss: str = "auto",
                 l2_step: str = "normalized", eot_batch: EotBatch = EOT_BATCH, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        self.eot_batch = check_eot_batch(eot_batch)
        if l2_step not in L2_STEPS:
            raise InputError(f"l2_step must be one of {L2_STEPS}, got {l2_step!r}")
        self.l2_step = l2_step
        if loss not in LOSS_CHOICES:
            raise InputError(f"loss must be one of {LOSS_CHOICES}, got {loss!r}")
        self.loss = loss
        check_positive_int("steps", steps)
        check_positive_int("eot", eot)
        self.steps = steps
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / steps
        if self.step_size <= 0 and self.eps > 0:
            raise InputError(f"step_size must be positive, got {step_size!r}")
        self.eot = eot
        self.random_start = bool(random_start)
        if early_stop not in (True, False, "auto"):
            raise InputError(f"early_stop must be True, False or 'auto', got {early_stop!r}")
        self.early_stop = early_stop

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "steps": self.steps, "step_size": self.step_size, "eot": self.eot,
                "eot_batch": self.eot_batch, "random_start": self.random_start, "early_stop": self.early_stop,
                "restarts": 1, "loss": self.loss,
                **({"l2_step": self.l2_step} if self.norm == "L2" else {})}

    def estimated_passes(self) -> float:
        return self.steps * self.eot * GRAD_COST + 1  # + the last iterate's forward (early stopping)

    def _random_start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_start(x, self.eps, self.norm, generator)

    def _gradient(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                  loss: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """EOT-averaged loss gradient and the per-example correctness of the last draw (``loss``: the
        resolved loss; None resolves ``self.loss`` for ``model``)."""
        if loss is None:
            loss = resolve_loss(self.loss, getattr(model, "traits", None))
        grad, last = eot_gradient(model, x_adv, y, self.eot, loss, max_batch=self.eot_batch)
        return grad, last.argmax(1) == y

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return ascent_step(grad, self.norm, self.step_size, self.l2_step)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        traits = getattr(model, "traits", None)
        stop = self.early_stop
        if stop == "auto":
            stop = not (traits is not None and traits.stochastic)
        loss = resolve_loss(self.loss, traits)
        return Perturbation(self._run(model, x, y, generator, stop, loss), {"early_stop": stop, "loss": loss})

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
             early_stop: bool, loss: str) -> torch.Tensor:
        x_adv = self._random_start(x, generator) if self.random_start else x.clone()
        if not early_stop:
            with torch.enable_grad():
                for _ in self._steps(self.steps):
                    grad, _ = self._gradient(model, x_adv, y, loss)
                    x_adv = project(x_adv + self._step(grad), x, self.eps, self.norm).detach()
            return x_adv
        best = x_adv.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        expand = (-1, *([1] * (x.dim() - 1)))
        with torch.enable_grad():
            for _ in self._steps(self.steps):
                grad, correct = self._gradient(model, x_adv, y, loss)
                # keep the first iterate seen misclassified (evaluated before this step moves it)
                newly = ~correct & ~found
                best = torch.where(newly.view(expand), x_adv, best)
                found |= newly
                if found.all():  # every example already has its answer: further steps cannot change it
                    return best
                x_adv = project(x_adv + self._step(grad), x, self.eps, self.norm).detach()
        with torch.no_grad():
            last_wrong = model(x_adv).argmax(1) != y
        newly = last_wrong & ~found
        best = torch.where(newly.view(expand), x_adv, best)
        found |= newly
        return torch.where(found.view(expand), best, x_adv)
