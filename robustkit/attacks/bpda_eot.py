"""BPDA+EOT as DiffPure evaluates it (from Hill et al.'s EBM-defense code), with the defense's gradient mode.

Each of ``steps`` PGD steps (Linf, ``step_size`` 2/255, no random start) follows the gradient of the
cross-entropy of the *logits averaged* over ``eot`` stochastic forwards (15). After every step a point
whose averaged prediction is wrong is re-checked with ``recheck`` forwards (150, logits averaged): only
then does it count as broken, and a broken point stays broken with the iterate that broke it (the
``defended`` flag can only go from True to False). The identity backward of BPDA is the defense's
``gradient="bpda"`` mode: this attack only averages what the defense's backward gives.

Each of the ``eot`` (and ``recheck``) draws is one forward of the defense, evaluated as one batch where the
defense allows it (:func:`~robustkit.attacks.base.eot_logits`, at most ``eot_batch`` rows per forward) and
draw by draw otherwise (a batch-dependent or test-time-adapting defense then sees the attacked batch itself,
never ``eot`` copies of it).

Reference:
    Athalye, Carlini, Wagner, ICML 2018 (BPDA, EOT); Hill et al., ICLR 2021 (this protocol);
    Nie et al., ICML 2022 (DiffPure, Table 4: 50 steps, 15 EOT, 150 re-checks).

Example::

    >>> import robustkit
    >>> from robustkit.attacks import BPDAEOT
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> res = BPDAEOT(eps=0.3, steps=5, step_size=0.1, eot=2, recheck=4)(clf, x, y)
    >>> res.robust_accuracy
    0.0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import check_positive_int
from .base import (EOT_BATCH, GRAD_COST, Attack, EotBatch, Norm, Perturbation, check_eot_batch, eot_logits,
                   project)
from .pgd import ascent_step


class BPDAEOT(Attack):
    """DiffPure's BPDA+EOT protocol (see module docstring); Linf or L2 steps.

    ``eot_batch``: the most rows (draws × examples) of one batched forward, as PGD's (1: draw by draw; ``"auto"``,
    the default, sized by the input; None: all draws at once).
    """

    name = "bpda-eot"

    def __init__(self, *, eps: float = 8 / 255, norm: Norm = "Linf", steps: int = 50, step_size: float = 2 / 255,
                 eot: int = 15, recheck: int = 150, eot_batch: EotBatch = EOT_BATCH, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        self.eot_batch = check_eot_batch(eot_batch)
        for label, v in (("steps", steps), ("eot", eot), ("recheck", recheck)):
            check_positive_int(label, v)
        self.steps, self.step_size, self.eot, self.recheck = steps, float(step_size), eot, recheck

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "steps": self.steps, "step_size": self.step_size, "eot": self.eot,
                "eot_batch": self.eot_batch, "recheck": self.recheck, "random_start": False, "restarts": 1,
                "loss": "ce(mean logits)"}

    def estimated_passes(self) -> float:
        return self.steps * self.eot * GRAD_COST + self.recheck  # a broken point is re-checked once

    def _mean_logits(self, model: nn.Module, x: torch.Tensor, reps: int) -> torch.Tensor:
        return eot_logits(model, x, reps, max_batch=self.eot_batch).mean(0)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        x_adv = x.clone()
        result = x.clone()
        defended = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        broken_at = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for step in self._steps(self.steps + 1):
            active = defended.nonzero().flatten()
            if active.numel() == 0:
                break
            xa = x_adv[active].detach().requires_grad_(step < self.steps)
            with torch.set_grad_enabled(step < self.steps):
                logits = self._mean_logits(model, xa, self.eot)
                looks_broken = logits.detach().argmax(1) != y[active]
                grad = torch.autograd.grad(F.cross_entropy(logits, y[active]), xa)[0] if step < self.steps else None
            suspects = active[looks_broken]
            if suspects.numel():
                with torch.no_grad():
                    confirmed = self._mean_logits(model, x_adv[suspects], self.recheck).argmax(1) != y[suspects]
                newly = suspects[confirmed]
                defended[newly] = False
                broken_at[newly] = step
                result[newly] = x_adv[newly]
            if grad is None:
                break
            keep = defended[active]  # broken points are frozen at the iterate that broke them
            stepped = project(x_adv[active] + ascent_step(grad, self.norm, self.step_size), x[active], self.eps,
                              self.norm)
            x_adv[active[keep]] = stepped[keep].detach()
        result[defended] = x_adv[defended]
        return Perturbation(result, {"defended_after_attack": int(defended.sum()),
                                     "broken_at_step": broken_at.tolist()})
