"""Transfer attack: craft on a source model (e.g. the undefended classifier), evaluate on the target.

For defenses that adapt at test time, transfer from the static base model is one of the two attacks the
harness runs by default (the other adapts through the defense). Counts recorded in the result are the
*target's* passes; the source's are in ``info["source_forwards"]``.

Example::

    >>> import robustkit
    >>> from robustkit.attacks import PGD, TransferAttack
    >>> src = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> res = TransferAttack(src, PGD(eps=0.3, steps=10))(src, x, y)  # transfer to itself = white-box
    >>> res.robust_accuracy
    0.0
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..classifier import Classifier
from ..errors import InputError
from .base import Attack, Perturbation


class TransferAttack(Attack):
    """Run ``attack`` against ``source`` and return its adversarial examples for the target model."""

    name = "transfer"

    def __init__(self, source: Classifier, attack: Attack):
        if not isinstance(source, Classifier):
            raise InputError(f"source must be a robustkit Classifier, got {type(source).__name__}")
        super().__init__(eps=attack.eps, norm=attack.norm, seed=attack.seed)
        self.source = source
        self.attack = attack

    def protocol(self) -> dict[str, Any]:
        inner = {f"source_{k}": v for k, v in self.attack.protocol().items()}
        return {**super().protocol(), **inner, "source": getattr(self.source, "name", type(self.source).__name__)}

    def estimated_passes(self) -> float:
        return 0.0  # the target only verifies; the source (an undefended model) is not the target's cost

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        res = self.attack(self.source, x, y)
        return Perturbation(res.x_adv, {"source_forwards": res.forwards, "source_backwards": res.backwards,
                                        "source_robust_accuracy": res.robust_accuracy})
