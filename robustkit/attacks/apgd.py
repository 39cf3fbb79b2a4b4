"""APGD (Croce & Hein, ICML 2020) with EOT, run by pyautoattack's own ``APGDAttack``.

``eot`` averages the gradient over that many forward-backward passes per iteration (pyautoattack's
``eot_iter``), which is what randomized defenses need. Losses: ``"ce"`` or ``"dlr"``.

Reference:
    Croce & Hein, ICML 2020 (APGD); Athalye et al., ICML 2018 (EOT). Code: pyautoattack ``APGDAttack``.

Example::

    >>> import robustkit
    >>> from robustkit.attacks import APGD
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> APGD(eps=0.3, steps=10, seed=0)(clf, x, y).robust_accuracy
    0.0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from ..utils import check_positive_int
from .base import GRAD_COST, Attack, Norm

LOSSES = ("ce", "dlr")


class APGD(Attack):
    """Untargeted APGD with ``restarts`` restarts and EOT gradient averaging (pyautoattack's code).

    Args:
        steps: iterations per restart (AutoAttack uses 100).
        loss: ``"ce"`` or ``"dlr"``.
        eot: gradients averaged per iteration.
        restarts: random restarts (pyautoattack keeps the first success).
        rho: step-size reduction threshold of APGD (0.75).
    """

    name = "apgd"

    def __init__(self, *, eps: float, norm: Norm = "Linf", steps: int = 100, loss: str = "ce", eot: int = 1,
                 restarts: int = 1, rho: float = 0.75, seed: int = 0):
        super().__init__(eps=eps, norm=norm, seed=seed)
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {loss!r}")
        for label, v in (("steps", steps), ("eot", eot), ("restarts", restarts)):
            check_positive_int(label, v)
        self.steps, self.loss, self.eot, self.restarts, self.rho = steps, loss, eot, restarts, float(rho)

    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "steps": self.steps, "loss": self.loss, "eot": self.eot,
                "restarts": self.restarts, "rho": self.rho, "random_start": True,
                "implementation": "pyautoattack APGDAttack"}

    def estimated_passes(self) -> float:
        return self.steps * self.eot * self.restarts * GRAD_COST

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        from pyautoattack.autopgd_base import APGDAttack

        apgd = APGDAttack(model, n_iter=self.steps, norm=self.norm, n_restarts=self.restarts, eps=self.eps,
                          seed=self.seed, loss=self.loss, eot_iter=self.eot, rho=self.rho, device=x.device)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # pyautoattack seeds the global RNG
            return apgd.perturb(x, y)
