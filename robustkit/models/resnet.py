"""ResNet-18 and ResNet-50 for 32×32 inputs (the CIFAR variant: 3×3 stem, no max-pool, 4×4 average pool).

State-dict layout: ``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3],shortcut.{0,1}}``,
``linear`` — the layout of the ResNet-18 that the ``pyautoattack`` wheel ships as
``examples/model_test.pt`` (registered as ``resnet18.cifar10``; it takes [0, 1] pixels, no normalisation)
and of the bottleneck ResNet-50 of NVlabs/DiffPure's ``classifiers/cifar10_resnet.py`` (registered as
``resnet50.cifar10``; DiffPure normalises with the CIFAR-10 mean/std inside its network, robustkit in the
Classifier wrapper, so the state dict is the same).

Shape:
    input ``[N, 3, 32, 32]``; output ``[N, num_classes]``.

Reference:
    He et al., CVPR 2016; CIFAR variant as in the AutoAttack examples (Croce & Hein, ICML 2020) and
    NVlabs/DiffPure @ 985703f (``classifiers/cifar10_resnet.py``: ``ResNet50``).

Example::

    >>> import torch
    >>> from robustkit.models.resnet import resnet18, resnet50
    >>> resnet18()(torch.zeros(2, 3, 32, 32)).shape, resnet50()(torch.zeros(2, 3, 32, 32)).shape
    (torch.Size([2, 10]), torch.Size([2, 10]))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 convolutions, 4× channel expansion, projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10,
                 block: type[BasicBlock] | type[Bottleneck] = BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)


def resnet50(num_classes: int = 10) -> ResNet:
    """The bottleneck ResNet-50 for 32×32 inputs (23.5 M parameters), DiffPure's CIFAR-10 ``ResNet50``."""
    return ResNet((3, 4, 6, 3), num_classes, Bottleneck)
