"""Registered defenses (see :func:`robustkit.list_defenses` / :func:`robustkit.create_defense`).

DiffPure entries:

=============================  ==========================================================  ============================
name                           diffusion model                                             classifier
=============================  ==========================================================  ============================
``diffpure.cifar10``           score_sde DDPM++ deep continuous VP (``checkpoint_8.pth``)  ``wrn28_10.cifar10``
``diffpure_l2.cifar10``        the same, t* = 0.075 (the paper's L2 setting)               ``wrn28_10.cifar10``
``diffpure_wrn70_16.cifar10``  the same, t* = 0.1                                          ``wrn70_16_dropout.cifar10``
``diffpure_rn50.cifar10``      the same, t* = 0.125                                        ``resnet50.cifar10``
``diffpure.imagenet``          guided-diffusion 256×256 unconditional ADM, t* = 0.15       yours (``classifier=``)
``diffpure_unet.cifar10``      robustkit's ``unet.cifar10`` (diffusion registry)           ``resnet56.cifar10``
``tiny_diffpure.digits``       robustkit's ``tiny_unet.digits`` (diffusion registry)       ``tiny_cnn.digits``
=============================  ==========================================================  ============================

The first five are the paper's settings (Nie et al., ICML 2022, Table 1/2/4 and NVlabs/DiffPure's
``run_scripts``; the WRN-70-16 and ResNet-50 weights are DiffPure's own, downloaded by hand: see their
classifier entries); the last two are robustkit's own, trainable diffusion models behind DiffPure's
procedure. The ImageNet entry purifies at 256×256 (224 → 256 → 224, bilinear) and runs the ADM in float32
(DiffPure converts it to float16 on GPUs).
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import WeightSource, how_to_get_weights, mark_random_weights
from .diffpure import DiffPureConfig
from .adaptation import ADAPTERS, create_adapted_defense
from .contrastive import create_contrastive_purification
from .rdc import create_rdc
from .registry import (DefenseConfig, EvaluationBudget, create_diffpure, register_builder, register_defense,
                       resolve_defense_weights)

CIFAR10_SHAPE = (3, 32, 32)
_PAPER = "Nie et al., Diffusion Models for Adversarial Purification, ICML 2022"
_SOURCE = "https://github.com/NVlabs/DiffPure @ 985703f"

#: score_sde's published ``vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth`` (a Google Drive folder
#: linked from the score_sde README; no direct URL and no published digest).
SCORE_SDE_CIFAR10 = WeightSource(
    filename="score_sde_vp_cifar10_ddpmpp_deep_continuous_checkpoint_8.pth",
    manual="vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth of score_sde's Google Drive folder "
           "https://drive.google.com/drive/folders/1tFmF_uh57O6lx9ggtZT_5LdonVK2cV-e")
#: guided-diffusion's unconditional 256×256 ImageNet model (openai/guided-diffusion README).
ADM_IMAGENET256_UNCOND = WeightSource(
    filename="256x256_diffusion_uncond.pt",
    url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt")


def _score_sde_cifar10(name: str, pretrained: bool) -> nn.Module:
    from ..diffusion.ncsnpp import NCSNpp
    from ..diffusion.score_sde import ScoreSDEScoreModel, get_score_sde_config, load_score_sde

    config = "cifar10_ddpmpp_deep_continuous"
    if pretrained:
        return load_score_sde(resolve_defense_weights(name, SCORE_SDE_CIFAR10), config)
    return mark_random_weights(ScoreSDEScoreModel(NCSNpp(get_score_sde_config(config))).eval(), name,
                               how_to_get_weights(name, SCORE_SDE_CIFAR10))


def _from_diffusion_registry(model_name: str, pretrained: bool) -> nn.Module:
    """A model of robustkit's diffusion-model registry (:func:`robustkit.diffusion.create_score_model`)."""
    from ..diffusion import create_score_model

    return create_score_model(model_name, pretrained=pretrained)


_SCORE_SDE_DESC = "score_sde NCSN++ (DDPM++ deep, continuous VP), 106.6M parameters, EMA weights"


@register_defense("diffpure.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="wrn28_10.cifar10",
    purifier=DiffPureConfig(t_star=0.1), weights=SCORE_SDE_CIFAR10, score_model=_SCORE_SDE_DESC,
    paper=_PAPER, source=_SOURCE, license="NVIDIA Source Code License (DiffPure); Apache-2.0 (score_sde weights)",
    notes="CIFAR-10 Linf 8/255 setting: t* = 0.1, Euler-Maruyama dt = 1e-3 (100 NFE); (claim) clean 89.02, "
          "robust 70.64 with WRN-28-10; exact-gradient re-evaluations report mid-40s"))
def diffpure_cifar10(pretrained: bool = False) -> nn.Module:
    return _score_sde_cifar10("diffpure.cifar10", pretrained)


@register_defense("diffpure_l2.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="wrn28_10.cifar10",
    purifier=DiffPureConfig(t_star=0.075), weights=SCORE_SDE_CIFAR10, score_model=_SCORE_SDE_DESC,
    paper=_PAPER, source=_SOURCE, license="NVIDIA Source Code License (DiffPure); Apache-2.0 (score_sde weights)",
    notes="CIFAR-10 L2 0.5 setting: t* = 0.075 (75 NFE); (claim) clean 91.03, robust 78.58 with WRN-28-10"))
def diffpure_l2_cifar10(pretrained: bool = False) -> nn.Module:
    return _score_sde_cifar10("diffpure_l2.cifar10", pretrained)


@register_defense("diffpure_wrn70_16.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="wrn70_16_dropout.cifar10",
    purifier=DiffPureConfig(t_star=0.1), weights=SCORE_SDE_CIFAR10, score_model=_SCORE_SDE_DESC,
    paper=_PAPER, source=_SOURCE, license="NVIDIA Source Code License (DiffPure); Apache-2.0 (score_sde weights)",
    notes="CIFAR-10 Linf 8/255 with DiffPure's WRN-70-16 (dropout 0.3): t* = 0.1 "
          "(run_scripts/cifar10/run_cifar_rand_inf_70-16-dp.sh; its L2 0.5 script uses t* = 0.075); "
          "the classifier's weights: see robustkit.registry.classifier_config('wrn70_16_dropout.cifar10').notes"))
def diffpure_wrn70_16_cifar10(pretrained: bool = False) -> nn.Module:
    return _score_sde_cifar10("diffpure_wrn70_16.cifar10", pretrained)


@register_defense("diffpure_rn50.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="resnet50.cifar10",
    purifier=DiffPureConfig(t_star=0.125), weights=SCORE_SDE_CIFAR10, score_model=_SCORE_SDE_DESC,
    paper=_PAPER, source=_SOURCE, license="NVIDIA Source Code License (DiffPure); Apache-2.0 (score_sde weights)",
    notes="CIFAR-10 Linf 8/255 with DiffPure's ResNet-50: t* = 0.125 (run_scripts/cifar10/run_cifar_rand_inf_rn50.sh; "
          "also its L2 eps 1 and StAdv scripts); the classifier's weights: see "
          "robustkit.registry.classifier_config('resnet50.cifar10').notes"))
def diffpure_rn50_cifar10(pretrained: bool = False) -> nn.Module:
    return _score_sde_cifar10("diffpure_rn50.cifar10", pretrained)


@register_defense("diffpure.imagenet", DefenseConfig(
    method="DiffPure", dataset="imagenet", input_shape=(3, 224, 224), classifier=None,
    purifier=DiffPureConfig(t_star=0.15, resize=256), weights=ADM_IMAGENET256_UNCOND,
    score_model="guided-diffusion ADM 256x256 unconditional (learn_sigma; ε = first 3 of 6 channels, "
                "time label floor(1000 t)), 552M parameters",
    paper=_PAPER, source=_SOURCE, license="NVIDIA Source Code License (DiffPure); MIT (guided-diffusion weights)",
    notes="ImageNet Linf 4/255 setting: t* = 0.15 (150 NFE at 256x256); robustkit has no ResNet-50, so the "
          "classifier must be passed to create_defense(classifier=...)"))
def diffpure_imagenet(pretrained: bool = False) -> nn.Module:
    from ..diffusion.adm import ADMScoreModel, ADMUNet, adm_config, load_guided_diffusion

    if pretrained:
        return load_guided_diffusion(resolve_defense_weights("diffpure.imagenet", ADM_IMAGENET256_UNCOND),
                                     "imagenet256_uncond")
    return mark_random_weights(ADMScoreModel(ADMUNet(adm_config("imagenet256_uncond"))).eval(), "diffpure.imagenet",
                               how_to_get_weights("diffpure.imagenet", ADM_IMAGENET256_UNCOND))


@register_defense("diffpure_unet.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="resnet56.cifar10",
    purifier=DiffPureConfig(t_star=0.1), score_model="unet.cifar10 (robustkit.diffusion registry; null label)",
    paper=_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="DiffPure's procedure with robustkit's own DDPM-style U-Net and the akamaster ResNet-56"))
def diffpure_unet_cifar10(pretrained: bool = False) -> nn.Module:
    return _from_diffusion_registry("unet.cifar10", pretrained)


#: ``robustkit bench --defense tiny_diffpure.digits --eps 0.1`` with nothing else: the full ``auto`` protocol
#: (AutoAttack rand + standard + PGD-EOT at the presets, 360 images, 10 re-evaluations) is ~12.5M forward-
#: equivalents of a 101-NFE defense, days on a CPU; this budget keeps every attack of the protocol and the
#: sanity checks, at a demo's size (docs/results/performance.md, "Default budget of tiny_diffpure.digits").
TINY_DIFFPURE_BUDGET = EvaluationBudget(
    n_examples=32, n_reeval=4, probe_size=8,
    attack_options={"autoattack-rand": {"steps": 10, "eot": 2},
                    "autoattack-standard": {"steps": 5, "target_classes": 1, "fab_steps": 5, "square_queries": 50},
                    "pgd-eot": {"steps": 10, "eot": 2, "step_size": 0.025}},
    check_options={"steps": 5, "eot": 1, "square_queries": 50},
    note="a demo budget (n = 32, 6 minutes measured on 2 CPU cores, docs/results/performance.md), far below "
         "the presets: its robust accuracy is a loose upper bound, not a result to cite")


@register_defense("tiny_diffpure.digits", DefenseConfig(
    method="DiffPure", dataset="digits", input_shape=(1, 8, 8), classifier="tiny_cnn.digits",
    purifier=DiffPureConfig(t_star=0.1), score_model="tiny_unet.digits (robustkit.diffusion registry; null label)",
    paper=_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="the embedded default: DiffPure on 8x8 digits, runs in seconds on a CPU",
    default_budget=TINY_DIFFPURE_BUDGET))
def tiny_diffpure_digits(pretrained: bool = False) -> nn.Module:
    return _from_diffusion_registry("tiny_unet.digits", pretrained)


# ------------------------------------------------------------------------------------------------------ RDC
# Built with robustkit.defenses.create_rdc (the factory returns the setting's RDCScoreModels: the
# conditional classifier model, the unconditional purifier model and both configs).

_RDC_PAPER = "Chen, Dong et al., Robust Classification via a Single Diffusion Model, ICML 2024"
_RDC_SOURCE = "https://github.com/huanranchen/DiffusionClassifier"
#: The variant every RDC entry builds (issue 22; docs/results/fidelity.md, "RDC").
_RDC_VARIANT = ("variant: official (the released code @ 8a82504): logits at the released scale (reduction='mean'), "
                "likelihood maximisation by Adam lr 0.1 on [-1, 1], sigma ~ U[0.4, 0.6], 5 steps")
#: RDC's re-saved EDM CIFAR-10 EDMPrecond state dicts (no direct URL, no published digest).
EDM_CIFAR10_COND = WeightSource(filename="edm_cifar_cond.pt", manual=f"the checkpoints linked from {_RDC_SOURCE}")
EDM_CIFAR10_UNCOND = WeightSource(filename="edm_cifar_uncond_vp.pt", manual=f"the checkpoints linked from {_RDC_SOURCE}")


def _rdc_models(conditional: nn.Module, unconditional: nn.Module, weighting: str) -> nn.Module:
    from .likelihood import LikelihoodMaximizationConfig
    from .rdc import DiffusionClassifierConfig, RDCScoreModels

    return RDCScoreModels(conditional, unconditional, DiffusionClassifierConfig(weighting=weighting),
                          LikelihoodMaximizationConfig(weighting=weighting))


@register_defense("rdc.cifar10", DefenseConfig(
    method="RDC", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier=None, generative=True,
    weights=EDM_CIFAR10_COND,
    score_model="EDM DDPM++ cond + uncond VP (edm_cifar_cond.pt, edm_cifar_uncond_vp.pt), 55.7M parameters each",
    gradient="bpda", paper=_RDC_PAPER, source=_RDC_SOURCE, license="CC BY-NC-SA 4.0 (EDM weights)",
    notes="build with robustkit.defenses.create_rdc; EDM-weighted ELBO on a 1000-point σ grid in [1e-4, 3] with the "
          "released (slipped) σ density; " + _RDC_VARIANT + "; (claim) clean 89.85, Linf 8/255 75.67 on 512 images"))
def rdc_cifar10(pretrained: bool = False) -> nn.Module:
    from ..diffusion.edm import EDMConfig, EDMPrecond, EDMScoreModel, load_edm

    if pretrained:
        cond = load_edm(resolve_defense_weights("rdc.cifar10", EDM_CIFAR10_COND), conditional=True)
        uncond = load_edm(resolve_defense_weights("rdc.cifar10", EDM_CIFAR10_UNCOND), conditional=False)
    else:
        cond = mark_random_weights(EDMScoreModel(EDMPrecond(EDMConfig.ddpmpp_cifar10(True))).eval(), "rdc.cifar10",
                                   how_to_get_weights("rdc.cifar10", EDM_CIFAR10_COND))
        uncond = mark_random_weights(EDMScoreModel(EDMPrecond(EDMConfig.ddpmpp_cifar10(False))).eval(), "rdc.cifar10",
                                     how_to_get_weights("rdc.cifar10", EDM_CIFAR10_UNCOND))
    return _rdc_models(cond, uncond, "edm")


@register_defense("rdc_unet.cifar10", DefenseConfig(
    method="RDC", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier=None, generative=True,
    score_model="unet.cifar10 (robustkit.diffusion registry; null label for likelihood maximisation)",
    gradient="bpda", paper=_RDC_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="build with robustkit.defenses.create_rdc; RDC's procedure with robustkit's CFG U-Net, uniform weights "
          "over the 1000 DDPM steps; " + _RDC_VARIANT))
def rdc_unet_cifar10(pretrained: bool = False) -> nn.Module:
    model = _from_diffusion_registry("unet.cifar10", pretrained)
    return _rdc_models(model, model, "uniform")


@register_defense("tiny_rdc.digits", DefenseConfig(
    method="RDC", dataset="digits", input_shape=(1, 8, 8), classifier=None, generative=True,
    score_model="tiny_unet.digits (robustkit.diffusion registry; null label for likelihood maximisation)",
    gradient="bpda", paper=_RDC_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="build with robustkit.defenses.create_rdc; the embedded RDC: bundled weights, offline, CPU; " + _RDC_VARIANT))
def tiny_rdc_digits(pretrained: bool = False) -> nn.Module:
    model = _from_diffusion_registry("tiny_unet.digits", pretrained)
    return _rdc_models(model, model, "uniform")


# ------------------------------------------------------------------------------ contrastive-guided purification
# Built with robustkit.defenses.create_contrastive_purification (the factory returns a ContrastiveScoreModel:
# the score model and the guidance's ContrastiveGuidanceConfig). The plain names are the "official" preset (the
# released code, which produced the paper's numbers); "*_paired" names are robustkit's earlier variant.

_CONTRASTIVE_PAPER = ("Bai et al., Diffusion Models Demand Contrastive Guidance for Adversarial Purification to "
                      "Advance, ICML 2024")
_CONTRASTIVE_SOURCE = "https://github.com/tenghuilee/ContrastDiffPurification"


def _contrastive(score_model: nn.Module, preset: str = "official") -> nn.Module:
    from .contrastive import ContrastiveGuidanceConfig, ContrastiveScoreModel

    return ContrastiveScoreModel(score_model, ContrastiveGuidanceConfig.preset(preset))


_OFFICIAL_NOTE = ("variant 'official' (ContrastDiffPurification a1b2138, CIFAR-10 AutoAttack scripts): lambda 500, "
                  "all B x B pairs positive, hard estimator (tau+ 0.1, beta 1, T 1), classifier on the raw [-1, 1] "
                  "state, gated head re-initialised (seeded) and trained online by Adam lr 0.01, guided from step 1; "
                  "exact gradients unroll the head's Adam steps")
_PAIRED_NOTE = ("variant 'paired' (robustkit's earlier reading): pairs (previous_i, current_i) positive, debiased "
                "loss, classifier on (x+1)/2, fixed seeded residual head, guided from step 2")


def _score_sde_contrastive_config(variant_note: str) -> DefenseConfig:
    """The CIFAR-10 entries' config (DiffPure's score_sde model and WRN-28-10, t* = 0.1, the scripts' --t 100)."""
    return DefenseConfig(
        method="ContrastiveGuidedPurification", dataset="cifar10", input_shape=CIFAR10_SHAPE,
        classifier="wrn28_10.cifar10", purifier=DiffPureConfig(t_star=0.1), weights=SCORE_SDE_CIFAR10,
        score_model=_SCORE_SDE_DESC, paper=_CONTRASTIVE_PAPER, source=_CONTRASTIVE_SOURCE,
        license="NVIDIA Source Code License (DiffPure); Apache-2.0 (score_sde weights)",
        notes="build with robustkit.defenses.create_contrastive_purification; DiffPure t* = 0.1 plus contrastive "
              "guidance, " + variant_note)


def _unet_contrastive_config(variant_note: str) -> DefenseConfig:
    """The CIFAR-10 entries on robustkit's U-Net and the akamaster ResNet-56."""
    return DefenseConfig(
        method="ContrastiveGuidedPurification", dataset="cifar10", input_shape=CIFAR10_SHAPE,
        classifier="resnet56.cifar10", purifier=DiffPureConfig(t_star=0.1),
        score_model="unet.cifar10 (robustkit.diffusion registry; null label)", paper=_CONTRASTIVE_PAPER,
        source="robustkit", license="MIT (robustkit)",
        notes="build with robustkit.defenses.create_contrastive_purification; the guidance on robustkit's U-Net "
              "and the akamaster ResNet-56; " + variant_note)


def _tiny_contrastive_config(variant_note: str) -> DefenseConfig:
    """The tiny digits entries' config (bundled tiny U-Net and CNN)."""
    return DefenseConfig(
        method="ContrastiveGuidedPurification", dataset="digits", input_shape=(1, 8, 8), classifier="tiny_cnn.digits",
        purifier=DiffPureConfig(t_star=0.1), score_model="tiny_unet.digits (robustkit.diffusion registry; null label)",
        paper=_CONTRASTIVE_PAPER, source="robustkit", license="MIT (robustkit)",
        notes="build with robustkit.defenses.create_contrastive_purification; bundled weights, offline, CPU; "
              + variant_note)


@register_defense("contrastive_purification.cifar10", _score_sde_contrastive_config(
    _OFFICIAL_NOTE + "; (claim) 82.81 Linf 8/255 robust with BPDA-style gradients"))
def contrastive_purification_cifar10(pretrained: bool = False) -> nn.Module:
    return _contrastive(_score_sde_cifar10("contrastive_purification.cifar10", pretrained))


@register_defense("contrastive_purification_paired.cifar10", _score_sde_contrastive_config(_PAIRED_NOTE))
def contrastive_purification_paired_cifar10(pretrained: bool = False) -> nn.Module:
    return _contrastive(_score_sde_cifar10("contrastive_purification_paired.cifar10", pretrained), "paired")


@register_defense("contrastive_purification_unet.cifar10", _unet_contrastive_config(_OFFICIAL_NOTE))
def contrastive_purification_unet_cifar10(pretrained: bool = False) -> nn.Module:
    return _contrastive(_from_diffusion_registry("unet.cifar10", pretrained))


@register_defense("contrastive_purification_unet_paired.cifar10", _unet_contrastive_config(
    _PAIRED_NOTE + " (the variant docs/results/purification.md measured)"))
def contrastive_purification_unet_paired_cifar10(pretrained: bool = False) -> nn.Module:
    return _contrastive(_from_diffusion_registry("unet.cifar10", pretrained), "paired")


@register_defense("tiny_contrastive_purification.digits", _tiny_contrastive_config(_OFFICIAL_NOTE))
def tiny_contrastive_purification_digits(pretrained: bool = False) -> nn.Module:
    return _contrastive(_from_diffusion_registry("tiny_unet.digits", pretrained))


@register_defense("tiny_contrastive_purification_paired.digits", _tiny_contrastive_config(_PAIRED_NOTE))
def tiny_contrastive_purification_paired_digits(pretrained: bool = False) -> nn.Module:
    return _contrastive(_from_diffusion_registry("tiny_unet.digits", pretrained), "paired")


# -------------------------------------------------------------------------------- test-time adaptation (TEA)
# Built with robustkit.defenses.create_adapted_defense: the factory returns the registered classifier that
# the method adapts (method "TEA" / "TENT" / "BN" picks the adapter class and its paper-default config).

_TEA_PAPER = "Yuan et al., TEA: Test-time Energy Adaptation, CVPR 2024"
_TENT_PAPER = "Wang et al., Tent: Fully Test-time Adaptation by Entropy Minimization, ICLR 2021"
_BN_PAPER = "Schneider et al., Improving robustness against common corruptions by covariate shift adaptation, NeurIPS 2020"
_TTA = {"TEA": (_TEA_PAPER, "https://github.com/yuanyige/tea @ 66e7ffa", "energy loss, SGLD buffer 10k from U(-1, 1) "
                "(official), 20 steps x 0.1, noise 0.01, Adam 1e-3 x 1 on BN affine, continual; stochastic"),
        "TENT": (_TENT_PAPER, "https://github.com/DequanWang/tent", "entropy loss, Adam 1e-3 x 1 on BN affine, "
                 "continual; deterministic"),
        "BN": (_BN_PAPER, "https://github.com/DequanWang/tent (norm.py)", "batch statistics only; deterministic")}


def _tta_config(method: str, classifier: str, dataset: str, input_shape: tuple[int, int, int]) -> DefenseConfig:
    paper, source, what = _TTA[method]
    return DefenseConfig(method=method, dataset=dataset, input_shape=input_shape, classifier=classifier,
                         score_model="none (test-time adaptation of the classifier's BatchNorm layers)",
                         paper=paper, source=source, license="MIT (robustkit)",
                         notes=f"build with robustkit.defenses.create_adapted_defense; {what}; adapts {classifier}")


def _tta_classifier(name: str, pretrained: bool) -> nn.Module:
    from ..registry import create_classifier

    return create_classifier(name, pretrained=pretrained)


@register_defense("tea.resnet20.cifar10", _tta_config("TEA", "resnet20.cifar10", "cifar10", CIFAR10_SHAPE))
def tea_resnet20_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet20.cifar10", pretrained)


@register_defense("tent.resnet20.cifar10", _tta_config("TENT", "resnet20.cifar10", "cifar10", CIFAR10_SHAPE))
def tent_resnet20_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet20.cifar10", pretrained)


@register_defense("bn.resnet20.cifar10", _tta_config("BN", "resnet20.cifar10", "cifar10", CIFAR10_SHAPE))
def bn_resnet20_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet20.cifar10", pretrained)


@register_defense("tea.resnet56.cifar10", _tta_config("TEA", "resnet56.cifar10", "cifar10", CIFAR10_SHAPE))
def tea_resnet56_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet56.cifar10", pretrained)


@register_defense("tent.resnet56.cifar10", _tta_config("TENT", "resnet56.cifar10", "cifar10", CIFAR10_SHAPE))
def tent_resnet56_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet56.cifar10", pretrained)


@register_defense("bn.resnet56.cifar10", _tta_config("BN", "resnet56.cifar10", "cifar10", CIFAR10_SHAPE))
def bn_resnet56_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("resnet56.cifar10", pretrained)


# The papers' backbone: RobustBench's "Standard" WRN-28-10 (TEA's main.py loads it as the corruptions-model
# "Standard", TENT's conf as ARCH Standard; both are the Linf "Standard" file that wrn28_10.cifar10 names).
@register_defense("tea.wrn28_10.cifar10", _tta_config("TEA", "wrn28_10.cifar10", "cifar10", CIFAR10_SHAPE))
def tea_wrn28_10_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("wrn28_10.cifar10", pretrained)


@register_defense("tent.wrn28_10.cifar10", _tta_config("TENT", "wrn28_10.cifar10", "cifar10", CIFAR10_SHAPE))
def tent_wrn28_10_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("wrn28_10.cifar10", pretrained)


@register_defense("bn.wrn28_10.cifar10", _tta_config("BN", "wrn28_10.cifar10", "cifar10", CIFAR10_SHAPE))
def bn_wrn28_10_cifar10(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("wrn28_10.cifar10", pretrained)


@register_defense("tea.tiny_cnn.digits", _tta_config("TEA", "tiny_cnn.digits", "digits", (1, 8, 8)))
def tea_tiny_cnn_digits(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("tiny_cnn.digits", pretrained)


@register_defense("tent.tiny_cnn.digits", _tta_config("TENT", "tiny_cnn.digits", "digits", (1, 8, 8)))
def tent_tiny_cnn_digits(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("tiny_cnn.digits", pretrained)


@register_defense("bn.tiny_cnn.digits", _tta_config("BN", "tiny_cnn.digits", "digits", (1, 8, 8)))
def bn_tiny_cnn_digits(pretrained: bool = False) -> nn.Module:
    return _tta_classifier("tiny_cnn.digits", pretrained)


# ---------------------------------------------------------------------------------- builders per method
register_builder("DiffPure", create_diffpure)
register_builder("ContrastiveGuidedPurification", create_contrastive_purification)
register_builder("RDC", create_rdc)
for _method in ADAPTERS:
    register_builder(_method, create_adapted_defense)
