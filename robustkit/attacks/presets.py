"""Named attack presets: the protocols of the literature, by name.

``make_attack(name, eps=..., norm=..., seed=..., **overrides)``:

============================  ==============================================================================
``autoattack-standard``       AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), pyautoattack
``autoattack-rand``           AutoAttack rand (APGD-CE + APGD-DLR, 100 steps, EOT 20)
``autoattack-custom``         AutoAttack with ``attacks=(...)``
``pgd``                       PGD, 100 steps, step 2.5·eps/steps, random start
``pgd-eot``                   Lee & Kim (ICCV 2023): PGD 200 steps, step 0.007, EOT 20, no random start;
                              L2: sign steps then the ball projection (their ``PGDL2``)
``apgd-ce`` / ``apgd-dlr``    APGD (pyautoattack), 100 steps, 1 restart
``apgd-eot``                  APGD-CE with EOT 20 (100 steps)
``bpda-eot``                  DiffPure's BPDA+EOT: 50 steps of 2/255, EOT 15, re-check with 150
``diffhammer``                DiffHammer (NeurIPS 2024): 50 iterations, 10 evaluations each, λ 5, α 0.5,
                              gradient grafting; records the N-evaluation protocol (diffusion purification)
``diffattack``                DiffAttack (NeurIPS 2023): margin + deviated-reconstruction loss, 200 steps of
                              0.007, EOT 20 (pgd-eot's budget), exact segment-wise gradients
``square``                    Square Attack (pyautoattack), 5000 queries: the black-box check
``torchattacks:<Name>``       any torchattacks attack, e.g. ``torchattacks:FAB``
============================  ==============================================================================

Example::

    >>> from robustkit.attacks import make_attack
    >>> a = make_attack("pgd-eot", eps=8 / 255)
    >>> a.steps, a.step_size, a.eot, a.random_start
    (200, 0.007, 20, False)
"""

from __future__ import annotations

from typing import Any, Callable

from ..utils import did_you_mean
from ..errors import InputError
from .apgd import APGD
from .autoattack import AutoAttack
from .base import Attack
from .bpda_eot import BPDAEOT
from .diffattack import DiffAttack
from .diffhammer import DiffHammer
from .pgd import PGD
from .torchattacks_adapter import TorchAttack


def _autoattack_standard(**kw: Any) -> Attack:
    return AutoAttack(version="standard", **kw)


def _autoattack_rand(**kw: Any) -> Attack:
    return AutoAttack(version="rand", **kw)


def _autoattack_custom(**kw: Any) -> Attack:
    return AutoAttack(version="custom", **kw)


def _pgd(**kw: Any) -> Attack:
    kw.setdefault("steps", 100)
    return PGD(**kw)


def _pgd_eot(**kw: Any) -> Attack:
    # Lee & Kim's official code: sign steps for L2 too (PGDL2), then the projection onto the ball
    params = {"steps": 200, "step_size": 0.007, "eot": 20, "random_start": False, "l2_step": "sign", **kw}
    return PGD(**params)


def _apgd_ce(**kw: Any) -> Attack:
    return APGD(loss="ce", **kw)


def _apgd_dlr(**kw: Any) -> Attack:
    return APGD(loss="dlr", **kw)


def _apgd_eot(**kw: Any) -> Attack:
    return APGD(**{"loss": "ce", "eot": 20, **kw})


def _diffattack(**kw: Any) -> Attack:
    return DiffAttack(**{"steps": 200, "step_size": 0.007, "eot": 20, **kw})


def _square(**kw: Any) -> Attack:
    return AutoAttack(version="custom", attacks=("square",), **kw)


PRESETS: dict[str, Callable[..., Attack]] = {
    "autoattack-standard": _autoattack_standard,
    "autoattack-rand": _autoattack_rand,
    "autoattack-custom": _autoattack_custom,
    "pgd": _pgd,
    "pgd-eot": _pgd_eot,
    "apgd-ce": _apgd_ce,
    "apgd-dlr": _apgd_dlr,
    "apgd-eot": _apgd_eot,
    "bpda-eot": BPDAEOT,
    "diffhammer": DiffHammer,
    "diffattack": _diffattack,
    "square": _square,
}


def make_attack(name: str, *, eps: float, norm: str = "Linf", seed: int = 0, **overrides: Any) -> Attack:
    """Build a preset attack by name (see the module table); ``overrides`` replace preset parameters."""
    if name.startswith("torchattacks:"):
        return TorchAttack(name.split(":", 1)[1], eps=eps, norm=norm, seed=seed, **overrides)
    if name not in PRESETS:
        raise InputError(f"unknown attack {name!r}{did_you_mean(name, PRESETS)} (available: "
                         f"{', '.join(sorted(PRESETS))}, torchattacks:<Name>)")
    attack = PRESETS[name](eps=eps, norm=norm, seed=seed, **overrides)
    attack.preset = name
    return attack


def list_attacks() -> list[str]:
    return sorted(PRESETS)
