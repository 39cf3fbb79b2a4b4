"""Registered purification defenses (see :func:`robustkit.list_defenses` / :func:`robustkit.create_defense`).

=========================  ==========================================================  ======================
name                       diffusion model                                             classifier
=========================  ==========================================================  ======================
``diffpure.cifar10``       score_sde DDPM++ deep continuous VP (``checkpoint_8.pth``)  ``wrn28_10.cifar10``
``diffpure_l2.cifar10``    the same, t* = 0.075 (the paper's L2 setting)               ``wrn28_10.cifar10``
``diffpure.imagenet``      guided-diffusion 256×256 unconditional ADM, t* = 0.15       yours (``classifier=``)
``diffpure_unet.cifar10``  robustkit's ``unet.cifar10`` (diffusion registry)           ``resnet56.cifar10``
``tiny_diffpure.digits``   robustkit's ``tiny_unet.digits`` (diffusion registry)       ``tiny_cnn.digits``
=========================  ==========================================================  ======================

The first three are the paper's settings (Nie et al., ICML 2022, Table 1/2/4 and NVlabs/DiffPure's
``run_scripts``); the last two are robustkit's own, trainable diffusion models behind DiffPure's
procedure. The ImageNet entry purifies at 256×256 (224 → 256 → 224, bilinear) and runs the ADM in float32
(DiffPure converts it to float16 on GPUs).
"""

from __future__ import annotations

import torch.nn as nn

from ..registry import WeightSource
from .diffpure import DiffPureConfig
from .registry import DefenseConfig, register_defense, resolve_defense_weights

CIFAR10_SHAPE = (3, 32, 32)
_PAPER = "Nie et al., Diffusion Models for Adversarial Purification, ICML 2022"
_SOURCE = "https://github.com/NVlabs/DiffPure @ 985703f"

#: score_sde's published ``vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth`` (a Google Drive folder
#: linked from the score_sde README; no direct URL and no published digest).
SCORE_SDE_CIFAR10 = WeightSource(filename="score_sde_vp_cifar10_ddpmpp_deep_continuous_checkpoint_8.pth")
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
    return ScoreSDEScoreModel(NCSNpp(get_score_sde_config(config))).eval()


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
    return ADMScoreModel(ADMUNet(adm_config("imagenet256_uncond"))).eval()


@register_defense("diffpure_unet.cifar10", DefenseConfig(
    method="DiffPure", dataset="cifar10", input_shape=CIFAR10_SHAPE, classifier="resnet56.cifar10",
    purifier=DiffPureConfig(t_star=0.1), score_model="unet.cifar10 (robustkit.diffusion registry; null label)",
    paper=_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="DiffPure's procedure with robustkit's own DDPM-style U-Net and the akamaster ResNet-56"))
def diffpure_unet_cifar10(pretrained: bool = False) -> nn.Module:
    return _from_diffusion_registry("unet.cifar10", pretrained)


@register_defense("tiny_diffpure.digits", DefenseConfig(
    method="DiffPure", dataset="digits", input_shape=(1, 8, 8), classifier="tiny_cnn.digits",
    purifier=DiffPureConfig(t_star=0.1), score_model="tiny_unet.digits (robustkit.diffusion registry; null label)",
    paper=_PAPER, source="robustkit", license="MIT (robustkit)",
    notes="the embedded default: DiffPure on 8x8 digits, runs in seconds on a CPU"))
def tiny_diffpure_digits(pretrained: bool = False) -> nn.Module:
    return _from_diffusion_registry("tiny_unet.digits", pretrained)
