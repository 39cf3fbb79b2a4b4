"""Attacks: one file per family; every attack is an :class:`Attack` returning an :class:`AttackResult`."""

from .base import Attack, AttackResult, perturbation_norm, project
from .pgd import PGD

__all__ = ["Attack", "AttackResult", "PGD", "perturbation_norm", "project"]
