"""Classifier architectures and the registry entries of the pretrained ones.

See :func:`robustkit.list_classifiers` / :func:`robustkit.create_classifier`.
"""

from . import zoo  # noqa: F401  (registers the entries)
from .resnet import resnet18
from .resnet_cifar import ResNetCIFAR, resnet_cifar
from .robustbench import from_robustbench
from .tiny_cnn import TinyCNN
from .wide_resnet import WideResNet

__all__ = ["ResNetCIFAR", "TinyCNN", "WideResNet", "from_robustbench", "resnet18", "resnet_cifar"]
