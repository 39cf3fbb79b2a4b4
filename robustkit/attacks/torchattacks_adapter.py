"""Any ``torchattacks`` attack by name (Square for the black-box check, FAB, CW, ...).

torchattacks is installed with ``pip install --no-deps`` (see ``requirements/torchattacks.txt``). Its
own ``AutoAttack`` runs 10 iterations per attack, so it is refused here: it must never be reported as
AutoAttack; use :class:`robustkit.attacks.AutoAttack` (the original code).

Example::

    >>> import robustkit
    >>> from robustkit.attacks import TorchAttack
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=8)
    >>> res = TorchAttack("PGD", eps=0.3, steps=10, alpha=0.05)(clf, x, y)
    >>> res.info["attack"], res.robust_accuracy
    ('torchattacks.PGD', 0.0)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InputError
from .base import Attack, Norm, Perturbation

REFUSED = {"AutoAttack": "torchattacks' AutoAttack runs 10 iterations per attack, not AutoAttack's 100; "
                         "use robustkit.attacks.AutoAttack (pyautoattack, the original code)",
           "MultiAttack": "compose robustkit attacks instead; per-attack results are then recorded"}
_NORM_FREE = {"CW", "DeepFool", "OnePixel", "SparseFool", "JSMA", "Pixle", "EADL1", "EADEN"}  # minimum-norm attacks


class TorchAttack(Attack):
    """Adapter: ``TorchAttack("Square", eps=8/255, n_queries=5000)`` runs ``torchattacks.Square``.

    ``eps`` (and ``norm`` where the attack has one) are passed through; other keyword arguments go to the
    torchattacks constructor unchanged and are recorded in the protocol. Minimum-norm attacks (CW, ...)
    are still projected onto the eps-ball by the Attack template, so their results respect the threat
    model.
    """

    def __init__(self, attack_name: str, *, eps: float, norm: Norm = "Linf", seed: int = 0, **kwargs: Any):
        super().__init__(eps=eps, norm=norm, seed=seed)
        if attack_name in REFUSED:
            raise InputError(f"torchattacks.{attack_name} is refused: {REFUSED[attack_name]}")
        import torchattacks

        cls = getattr(torchattacks, attack_name, None)
        if not (isinstance(cls, type) and issubclass(cls, torchattacks.attack.Attack)):
            raise InputError(f"torchattacks has no attack named {attack_name!r}")
        self.attack_name = attack_name
        self.kwargs = dict(kwargs)
        self.name = f"torchattacks.{attack_name}"

    def _constructor_kwargs(self) -> dict[str, Any]:
        import inspect

        import torchattacks

        params = inspect.signature(getattr(torchattacks, self.attack_name).__init__).parameters
        kw = dict(self.kwargs)
        if "eps" in params and self.attack_name not in _NORM_FREE:
            kw.setdefault("eps", self.eps)
        if "norm" in params:
            kw.setdefault("norm", self.norm)
        elif self.norm == "L2" and self.attack_name not in _NORM_FREE and not self.attack_name.endswith("L2"):
            raise InputError(f"torchattacks.{self.attack_name} is an Linf attack; use its L2 variant")
        if "seed" in params:
            kw.setdefault("seed", self.seed)
        return kw

    def protocol(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {**super().protocol(), **{k: v for k, v in self.kwargs.items() if isinstance(v, (int, float, str, bool))},
                "implementation": f"torchattacks {version('torchattacks')}"}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> Perturbation:
        import torchattacks

        boxed = _BoxedQueries(model)
        atk = getattr(torchattacks, self.attack_name)(boxed, **self._constructor_kwargs())
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # torchattacks draws from the global RNG
            torch.manual_seed(self.seed)
            x_adv = atk(x, y)
        return Perturbation(x_adv, {"queries_clamped_to_box": boxed.clamped,
                                    "max_query_excursion_outside_box": boxed.max_excursion})


class _BoxedQueries(nn.Module):
    """Clamps each query into [0, 1] before the classifier sees it, counting the queries that needed it.

    Some torchattacks attacks query slightly outside the box by design (NIFGSM's Nesterov look-ahead,
    SPSA's finite differences, EAD's iterates: down to -1.5e-4), which the Classifier contract refuses.
    The clamp is straight-through (identity gradient), so the attack's gradients are those it would get
    without it; the number of clamped queries and the largest excursion go in the result's info.
    Like the counting wrapper inside it, it never switches the classifier's train/eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = False
        self.clamped = 0
        self.max_excursion = 0.0

    def train(self, mode: bool = True) -> "_BoxedQueries":
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            excursion = float(torch.maximum(-x.min(), x.max() - 1).clamp_min(0)) if x.numel() else 0.0
        if excursion > 0:
            self.clamped += 1
            self.max_excursion = max(self.max_excursion, excursion)
            x = x + (x.clamp(0.0, 1.0) - x).detach()
        return self.model(x)
