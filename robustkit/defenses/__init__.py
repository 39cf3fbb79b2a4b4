"""Defenses: one file per method; every defense is a :class:`~robustkit.Classifier`.

* :mod:`~robustkit.defenses.purification` — the Purifier contract and :class:`PurifiedClassifier`
  (gradient modes ``exact`` / ``adjoint`` / ``bpda`` / ``surrogate``, sample voting);
* :mod:`~robustkit.defenses.diffpure` — :class:`DiffPurePurifier` (Nie et al., ICML 2022);
* :mod:`~robustkit.defenses.rdc` / :mod:`~robustkit.defenses.likelihood` — RDC: :class:`DiffusionClassifier`,
  :class:`LikelihoodMaximizationPurifier`, :class:`RobustDiffusionClassifier`, :func:`create_rdc`
  (Chen, Dong et al., ICML 2024);
* :mod:`~robustkit.defenses.contrastive` — :class:`ContrastiveGuidedPurifier`, DiffPure with contrastive
  guidance (Bai et al., ICML 2024), :func:`create_contrastive_purification`;
* :mod:`~robustkit.defenses.adaptation` / :mod:`~robustkit.defenses.tea` — test-time adaptation of BatchNorm
  layers: :class:`EnergyAdaptedClassifier` (TEA, Yuan et al., CVPR 2024) and the baselines
  :class:`SourceClassifier`, :class:`NormStatsClassifier`, :class:`TentClassifier`; :func:`create_adapted_defense`;
* :mod:`~robustkit.defenses.registry` / :mod:`~robustkit.defenses.zoo` — named defenses:
  :func:`create_defense`, :func:`list_defenses`.
"""

from .likelihood import LikelihoodMaximizationConfig, LikelihoodMaximizationPurifier
from .rdc import (DiffusionClassifier, DiffusionClassifierConfig, RDCScoreModels, RobustDiffusionClassifier,
                  create_rdc)
from .contrastive import (CONTRASTIVE_PRESETS, ContrastiveGuidanceConfig, ContrastiveGuidedPurifier,
                          ContrastiveNoise, ContrastivePurificationConfig, ContrastivePurifiedClassifier,
                          ContrastiveScoreModel,
                          GuidanceStep, create_contrastive_purification, debiased_contrastive_loss, info_nce_loss,
                          official_contrastive_loss)
from .contrastive_head import GatedProjectionHead, HeadState, ProjectionHead
from .diffpure import DiffPureConfig, DiffPureNoise, DiffPurePurifier, GaussianScoreModel, coarsen_noise
from .purification import (GRADIENT_MODES, VOTES, PurifiedClassifier, PurifiedClassifierConfig, Purifier,
                           SurrogatePurification)
from .registry import (DefenseConfig, EvaluationBudget, create_defense, create_diffpure, defense_config, list_defenses,
                       register_builder, register_defense)
from .adaptation import (AdaptationConfig, NoNormLayersError, NormStatsClassifier, SourceClassifier, TentClassifier,
                         TentConfig, TestTimeAdaptedClassifier, create_adapted_defense)
from .tea import EnergyAdaptedClassifier, TEAConfig
# The named defenses: zoo registers its entries into registry on import (registration flows one way; registry
# never imports zoo).
from . import zoo  # noqa: E402,F401

__all__ = [
    "DefenseConfig", "EvaluationBudget", "DiffPureConfig", "DiffPureNoise", "DiffPurePurifier", "GRADIENT_MODES",
    "GaussianScoreModel",
    "PurifiedClassifier", "PurifiedClassifierConfig", "Purifier", "SurrogatePurification", "VOTES", "coarsen_noise",
    "create_defense", "create_diffpure", "defense_config", "list_defenses", "register_builder", "register_defense",
    # RDC
    "DiffusionClassifier", "DiffusionClassifierConfig", "LikelihoodMaximizationConfig",
    "LikelihoodMaximizationPurifier", "RDCScoreModels", "RobustDiffusionClassifier", "create_rdc",
    # contrastive-guided purification
    "ContrastiveGuidanceConfig", "ContrastiveGuidedPurifier", "ContrastivePurifiedClassifier", "ContrastiveScoreModel",
    "ProjectionHead", "create_contrastive_purification", "debiased_contrastive_loss", "info_nce_loss",
    "CONTRASTIVE_PRESETS", "ContrastiveNoise", "ContrastivePurificationConfig", "GatedProjectionHead", "GuidanceStep", "HeadState",
    "official_contrastive_loss",
    # test-time adaptation (TEA and baselines)
    "AdaptationConfig", "EnergyAdaptedClassifier", "NoNormLayersError", "NormStatsClassifier", "SourceClassifier",
    "TEAConfig", "TentClassifier", "TentConfig", "TestTimeAdaptedClassifier", "create_adapted_defense",
]
