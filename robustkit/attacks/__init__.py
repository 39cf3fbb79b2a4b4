"""Attacks: one file per family; every attack is an :class:`Attack` returning an :class:`AttackResult`.

Use :func:`make_attack` for the named protocols of the literature (``autoattack-rand``, ``pgd-eot``,
``bpda-eot``, ...).
"""

from .apgd import APGD
from .autoattack import AutoAttack
from .base import Attack, AttackResult, Perturbation, eot_logits, eval_mode, perturbation_norm, project
from .bpda_eot import BPDAEOT
from .diffattack import DiffAttack
from .diffhammer import DiffHammer
from .pgd import PGD
from .presets import PRESETS, list_attacks, make_attack
from .torchattacks_adapter import TorchAttack
from .transfer import TransferAttack

__all__ = ["APGD", "Attack", "AttackResult", "AutoAttack", "BPDAEOT", "DiffAttack", "DiffHammer", "PGD", "PRESETS", "Perturbation", "TorchAttack", "TransferAttack", "eot_logits", "eval_mode",
           "list_attacks", "make_attack", "perturbation_norm", "project"]
