"""DiffAttack (Kang, Song, Li, NeurIPS 2023): PGD-EOT on the classifier loss plus a deviated-reconstruction
loss at intermediate diffusion steps, with segment-wise forwarding-backwarding.

Gradients through a long reverse process vanish or explode, and the classifier loss at its end says
little about the early steps. DiffAttack adds, for every reverse step ``k`` of a purification, the
deviation of the reverse state ``x̂_k`` from the forward diffusion of the attacked input with the same
noise, ``q_k = a(t_k) (2 x − 1) + σ(t_k) ε``, weighted by ``ᾱ(t_k) = a(t_k)²``:

    L(x) = margin(f(purify(x))) + λ · (1/K) Σ_k ᾱ(t_k)/2 · mean_pixels (x̂_k − q_k)²

and ascends ``L`` (EOT over purification draws, sign steps for Linf, normalised for L2). Driving the
intermediate states away from the input's diffusion makes the score model's estimate wrong early, so the
reverse process does not bring the point back. The gradient is exact: every reverse step is one
flat-memory segment (:meth:`~robustkit.defenses.DiffPurePurifier.purify_trajectory`; each segment is run
forward without a graph and recomputed in the backward pass, DiffAttack's segment-wise
forwarding-backwarding with segments of one step), so memory is flat in the number of steps.

The ``eot`` draws of a gradient are purified as one batch (at most ``eot_batch`` rows) when the defense
allows it, with the noises drawn in the same order as one by one, so the gradient is the same up to float
rounding.

DiffAttack's repository (github.com/kangmintong/DiffAttack) publishes no code (a README only), so this
follows the paper's description and DiffHammer's re-implementation (Ka1b0/DiffHammer @ 1010822,
``defense/diffpure.py``: weights ``ᾱ``, the deviation from the input's diffusion with the purification's
own noise, both terms summed with the deviation averaged over steps and pixels); λ (default 1) and the
margin classifier loss are robustkit's choices, recorded with every result. The paper's schedule
(steps, EOT) is the caller's: the presets state theirs.

Needs a :class:`~robustkit.defenses.PurifiedClassifier` over a DiffPure purifier with the ``sde`` or ``ode``
sampler and one sample per forward.

Reference:
    Kang, Song, Li, "DiffAttack: Evasion Attacks Against Diffusion-Based Adversarial Purification",
    NeurIPS 2023, arXiv:2311.16124.

Example::

    >>> import robustkit
    >>> from robustkit.attacks import DiffAttack
    >>> d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02)
    >>> x, y = robustkit.load_dataset("digits", n_examples=4)
    >>> DiffAttack(eps=0.1, steps=2)(d, x, y).info["deviation_weight"]
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from ..utils import check_positive_int
from .base import EOT_BATCH, Attack, EotBatch, Norm, Perturbation, check_eot_batch, project
from .diffhammer import count, purified_parts, stacked_draws
from .pgd import ascent_step, margin_loss, random_start


class DiffAttack(Attack):
    """DiffAttack (module docstring).

    Args:
        eps, norm, seed: see :class:`~robustkit.attacks.base.Attack`.
        steps: PGD iterations; eot: purification draws averaged per gradient.
        step_size: step length (default ``2.5 · eps / steps``).
        deviation_weight: λ, the weight of the deviated-reconstruction loss (0: plain PGD-EOT on the margin).
        random_start: start from a uniform point of the ball.
        eot_batch: the most rows (draws × examples) of one batched purification, for a defense that
            evaluates draws as one batch (the gradient equals the sequential one up to float rounding), as
            PGD's ``eot_batch``.
    """

    name = "diffattack"

    def __init__(self, *, eps: float, norm: Norm = "Linf", steps: int = 50, eot: int = 1,
                 step_size: float | None = None, deviation_weight: float = 1.0, random_start: bool = True,
                 eot_batch: EotBatch = EOT_BATCH, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        self.eot_batch = check_eot_batch(eot_batch)
        check_positive_int("steps", steps)
        check_positive_int("eot", eot)
        self.steps, self.eot = steps, eot
        self.step_size = float(step_size) if step_size is not None else 2.5 * self.eps / steps
        if self.step_size <= 0 and self.eps > 0:
            raise InputError(f"step_size must be positive, got {step_size!r}")
        if isinstance(deviation_weight, bool) or not isinstance(deviation_weight, (int, float)) \
                or not deviation_weight >= 0:
            raise InputError(f"deviation_weight must be a number >= 0, got {deviation_weight!r}")
        self.deviation_weight = float(deviation_weight)
        self.random_start = bool(random_start)

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "steps": self.steps, "eot": self.eot, "eot_batch": self.eot_batch,
                "step_size": self.step_size,
                "deviation_weight": self.deviation_weight, "loss": "margin + deviated reconstruction",
                "random_start": self.random_start, "restarts": 1, "early_stop": False}

    def deviation(self, purifier, x: torch.Tensor, trajectory, init_noise: torch.Tensor) -> torch.Tensor:
        """Per-example ``(1/K) Σ_k ᾱ(t_k)/2 · mean (x̂_k − q_k)²`` over the reverse steps (module docstring)."""
        sde = purifier._sampler.sde
        t = torch.tensor(trajectory.times, dtype=torch.float64)
        m = sde.marginal(t)
        scaled = purifier.diffuse(x, torch.zeros_like(init_noise)) / purifier.noise_mean  # 2x − 1 (resized)
        total = x.new_zeros(x.shape[0])
        for state, a, s in zip(trajectory.states, m.mean.tolist(), m.std.tolist()):
            ref = a * scaled + s * init_noise
            total = total + (0.5 * a * a) * (state - ref).pow(2).flatten(1).mean(1)
        return total / len(trajectory.states)

    def _gradient(self, model, purifier, classifier, x_adv: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        grad = torch.zeros_like(x_adv)
        noises = [purifier.draw_noise(x_adv, generator) for _ in range(self.eot)]
        xa = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():  # the repeated input must carry the graph back to xa
            for xs, noise, e in stacked_draws(model, xa, noises, self.eot_batch):
                traj = purifier.purify_trajectory(xs, noise)
                loss = margin_loss(classifier.logits(traj.purified), y.repeat(e))
                if self.deviation_weight:
                    loss = loss + self.deviation_weight * self.deviation(purifier, xs, traj, noise.init)
                grad += torch.autograd.grad(loss.sum(), xa)[0]
        return grad / self.eot

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        counter, purifier, classifier = purified_parts(model)
        if not hasattr(purifier, "purify_trajectory"):
            raise InputError(f"DiffAttack reads the reverse process: {type(purifier).__name__} has no "
                             "purify_trajectory (DiffPure's sde or ode sampler)")
        x_adv = random_start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        for _ in range(self.steps):
            grad = self._gradient(model, purifier, classifier, x_adv, y, generator)
            count(counter, forwards=self.eot * x.shape[0], backwards=self.eot * x.shape[0])
            x_adv = project(x_adv + ascent_step(grad, self.norm, self.step_size), x, self.eps, self.norm).detach()
        return Perturbation(x_adv, {"deviation_weight": self.deviation_weight})
