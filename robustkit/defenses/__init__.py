"""Defenses: one file per method; every defense is a :class:`~robustkit.Classifier`.

* :mod:`~robustkit.defenses.purification` — the Purifier contract and :class:`PurifiedClassifier`
  (gradient modes ``exact`` / ``adjoint`` / ``bpda`` / ``surrogate``, sample voting);
* :mod:`~robustkit.defenses.diffpure` — :class:`DiffPurePurifier` (Nie et al., ICML 2022);
* :mod:`~robustkit.defenses.registry` / :mod:`~robustkit.defenses.zoo` — named defenses:
  :func:`create_defense`, :func:`list_defenses`.
"""

from .diffpure import DiffPureConfig, DiffPureNoise, DiffPurePurifier, GaussianScoreModel, coarsen_noise
from .purification import (GRADIENT_MODES, VOTES, PurifiedClassifier, PurifiedClassifierConfig, Purifier,
                           SurrogatePurification)
from .registry import DefenseConfig, create_defense, defense_config, list_defenses, register_defense

__all__ = [
    "DefenseConfig", "DiffPureConfig", "DiffPureNoise", "DiffPurePurifier", "GRADIENT_MODES", "GaussianScoreModel",
    "PurifiedClassifier", "PurifiedClassifierConfig", "Purifier", "SurrogatePurification", "VOTES", "coarsen_noise",
    "create_defense", "defense_config", "list_defenses", "register_defense",
]
