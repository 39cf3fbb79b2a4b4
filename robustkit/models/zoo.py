"""Registry entries for the pretrained classifiers, with their per-checkpoint key adapters.

Each entry says where its weights come from (URL and sha256), what normalisation it expects (applied
inside the returned Classifier), and how the published file's keys map onto our modules.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import CheckpointError
from ..registry import ClassifierConfig, WeightSource, register_classifier
from .resnet import resnet18, resnet50
from .resnet_cifar import resnet_cifar
from .tiny_cnn import TinyCNN
from .wide_resnet import WideResNet

CIFAR10_SHAPE = (3, 32, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the CIFAR-10 statistics that NVlabs/DiffPure's ``classifiers/cifar10_resnet.py`` normalises with
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
TINY_CNN_DIGITS_SHA256 = "b9b227907350515446893fd7e38fc15fb962d819d7e3e28eee0d0f56f33ed912"


# ---------------------------------------------------------------------------------------------- adapters

def _unwrap(state: Mapping[str, object]) -> dict:
    """Take ``state['state_dict']`` when the file wraps the weights (training checkpoints do)."""
    inner = state.get("state_dict", state)
    if not isinstance(inner, Mapping):
        raise CheckpointError(f"checkpoint 'state_dict' entry is a {type(inner).__name__}, expected a dict")
    return dict(inner)


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _fill_num_batches_tracked(state: Mapping[str, torch.Tensor]) -> dict:
    """Files saved by torch < 0.4.1 lack BatchNorm's ``num_batches_tracked``; eval mode never reads it."""
    out = dict(state)
    for k in list(state):
        if k.endswith(".running_var"):
            out.setdefault(k[: -len("running_var")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def adapt_akamaster(state: Mapping[str, object]) -> dict:
    """akamaster checkpoints: ``{'best_prec1', 'state_dict'}``, keys prefixed ``module.`` (DataParallel)."""
    return _fill_num_batches_tracked(_strip_prefix(_unwrap(state), "module."))


def adapt_robustbench(state: Mapping[str, object]) -> dict:
    """RobustBench files: optional ``state_dict`` wrapper, ``module.`` then ``model.`` prefixes stripped."""
    return _fill_num_batches_tracked(_strip_prefix(_strip_prefix(_unwrap(state), "module."), "model."))


def adapt_diffpure(state: Mapping[str, object]) -> dict:
    """NVlabs/DiffPure's CIFAR-10 ResNet-50 / WRN-70-16-dropout files: a bare state dict saved from
    ``nn.DataParallel`` (keys ``module.<key>``); DiffPure's ``utils.update_state_dict(sd, idx_start=7)``
    drops those 7 characters. A ``state_dict`` wrapper and unprefixed keys are accepted too."""
    return _fill_num_batches_tracked(_strip_prefix(_unwrap(state), "module."))


# ----------------------------------------------------------------------------------------------- entries

_AKAMASTER = {  # depth: sha256 of the published file (first 8 hex digits are in its name)
    20: "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    32: "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    44: "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    56: "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
}
_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


def _akamaster_config(depth: int, sha256: str) -> ClassifierConfig:
    filename = f"resnet{depth}-{sha256[:8]}.th"
    return ClassifierConfig(
        architecture=f"ResNet-{depth} (CIFAR, option-A shortcuts)", dataset="cifar10", num_classes=10,
        input_shape=CIFAR10_SHAPE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weights=WeightSource(filename=filename, url=_AKAMASTER_URL + filename, sha256=sha256),
        adapt_state_dict=adapt_akamaster, license="BSD-2-Clause (c) 2018 Yerlan Idelbayev",
        paper="He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        source="https://github.com/akamaster/pytorch_resnet_cifar10 @ d5489e89",
        notes="trained with ImageNet mean/std normalisation, which the Classifier applies inside")


@register_classifier("resnet20.cifar10", _akamaster_config(20, _AKAMASTER[20]))
def resnet20_cifar10():
    return resnet_cifar(20)


@register_classifier("resnet32.cifar10", _akamaster_config(32, _AKAMASTER[32]))
def resnet32_cifar10():
    return resnet_cifar(32)


@register_classifier("resnet44.cifar10", _akamaster_config(44, _AKAMASTER[44]))
def resnet44_cifar10():
    return resnet_cifar(44)


@register_classifier("resnet56.cifar10", _akamaster_config(56, _AKAMASTER[56]))
def resnet56_cifar10():
    return resnet_cifar(56)


@register_classifier("wrn28_10.cifar10", ClassifierConfig(
    architecture="WideResNet-28-10", dataset="cifar10", num_classes=10, input_shape=CIFAR10_SHAPE,
    # RobustBench serves Standard.pt from Google Drive (id 1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC) and
    # publishes no digest for it, so only the strict state-dict layout check guards this file.
    weights=WeightSource(
        filename="robustbench_cifar10_Standard.pt",
        url="https://drive.usercontent.google.com/download?id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"
            "&export=download&confirm=t",
        sha256=None),
    adapt_state_dict=adapt_robustbench, license="see RobustBench (MIT code; weights by their authors)",
    paper="Zagoruyko & Komodakis, Wide Residual Networks, BMVC 2016; RobustBench 'Standard'",
    source="https://github.com/RobustBench/robustbench @ 78fcc9e4 (model_zoo/cifar10.py, 'Standard')",
    notes="no normalisation: the network takes [0, 1] pixels; DiffPure's and TEA's CIFAR-10 classifier"))
def wrn28_10_cifar10():
    return WideResNet(depth=28, widen_factor=10, num_classes=10)


@register_classifier("resnet18.cifar10", ClassifierConfig(
    architecture="ResNet-18 (CIFAR variant)", dataset="cifar10", num_classes=10, input_shape=CIFAR10_SHAPE,
    weights=WeightSource(filename="model_test.pt", package_file=("pyautoattack", "examples/model_test.pt"),
                         sha256="399f52da9f914c323fa5a6096d60f460a3449a59b64a6405200c1e629f8425a7"),
    license="MIT (AutoAttack)", paper="Croce & Hein, ICML 2020 (AutoAttack example model)",
    source="pyautoattack 0.2.0 wheel, pyautoattack/examples/model_test.pt",
    notes="no normalisation: the network takes [0, 1] pixels (the AutoAttack example uses ToTensor only)"))
def resnet18_cifar10():
    return resnet18(10)


@register_classifier("tiny_cnn.digits", ClassifierConfig(
    architecture="TinyCNN (2 conv + BN, 16/32 channels)", dataset="digits", num_classes=10,
    input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,),
    weights=WeightSource(filename="tiny_cnn_digits.safetensors",
                         package_file=("robustkit", "models/weights/tiny_cnn_digits.safetensors"),
                         sha256=TINY_CNN_DIGITS_SHA256),
    license="MIT (robustkit)", paper="", source="scripts/train_tiny_cnn_digits.py (seed 0)",
    notes="the embedded default: trained on the digits train split in seconds on a CPU"))
def tiny_cnn_digits():
    return TinyCNN(in_channels=1, width=16, num_classes=10)


# ------------------------------------------------------------------ DiffPure's other CIFAR-10 classifiers
# NVlabs/DiffPure @ 985703f, utils.get_image_classifier: "cifar10-resnet-50" and "cifar10-wrn-70-16-dropout"
# load pretrained/cifar10/{resnet-50,wrn-70-16-dropout}/weights.pt with update_state_dict(idx_start=7).
# The files are in Google Drive folders linked from DiffPure's README (no direct URL, no published digest).

_DIFFPURE_NOTE = ("DiffPure's README links the file from a Google Drive folder ({folder}); download its "
                  "weights.pt and save it as $ROBUSTKIT_HOME/checkpoints/{filename} (or pass checkpoint=PATH). "
                  "CIFAR-10 mean/std normalisation inside the Classifier (DiffPure does it inside the network)")
_DIFFPURE_SOURCE = "https://github.com/NVlabs/DiffPure @ 985703f (classifiers/cifar10_resnet.py, utils.py)"
_DIFFPURE_PAPER = "Nie et al., Diffusion Models for Adversarial Purification, ICML 2022 (Table 1/3 classifiers)"


def _diffpure_config(architecture: str, weights_dir: str, folder: str, notes: str = "") -> ClassifierConfig:
    filename = f"diffpure_cifar10_{weights_dir}_weights.pt"
    return ClassifierConfig(
        architecture=architecture, dataset="cifar10", num_classes=10, input_shape=CIFAR10_SHAPE,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, weights=WeightSource(filename=filename), adapt_state_dict=adapt_diffpure,
        license="NVIDIA Source Code License (DiffPure)", paper=_DIFFPURE_PAPER, source=_DIFFPURE_SOURCE,
        notes=_DIFFPURE_NOTE.format(folder=f"https://drive.google.com/drive/folders/{folder}", filename=filename)
        + notes)


@register_classifier("resnet50.cifar10", _diffpure_config(
    "ResNet-50 (CIFAR variant, bottleneck blocks)", "resnet-50", "1SEGilIEAnx9OC1JVhmOynreCF3oog7Fi"))
def resnet50_cifar10():
    return resnet50(10)


@register_classifier("wrn70_16_dropout.cifar10", _diffpure_config(
    "WideResNet-70-16 (dropout 0.3)", "wrn-70-16-dropout", "1istqcnPNXJ-TQFdxRqNJuInzOtlYOG1b",
    "; dropout acts only in training mode (evaluation is deterministic)"))
def wrn70_16_dropout_cifar10():
    return WideResNet(depth=70, widen_factor=16, num_classes=10, drop_rate=0.3)
