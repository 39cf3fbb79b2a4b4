"""WideResNet (Zagoruyko & Komodakis, BMVC 2016) with RobustBench's exact state-dict layout.

Keys: ``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}``, ``bn1``, ``fc``
(RobustBench ``model_zoo/architectures/wide_resnet.py``), so RobustBench's CIFAR-10 ``Standard.pt``
loads with ``create_classifier("wrn28_10.cifar10", checkpoint=...)``. Pre-activation blocks; when the
channel count changes, the block's input is replaced by ``relu(bn1(x))`` and the shortcut is a 1×1 conv
of it. The network has no normalisation: it takes [0, 1] pixels directly.

Shape:
    input ``[N, 3, H, W]``; output ``[N, num_classes]``.

Reference:
    Zagoruyko, Komodakis. "Wide Residual Networks", BMVC 2016; RobustBench (Croce et al., NeurIPS 2021
    Datasets and Benchmarks).

Example::

    >>> import torch
    >>> from robustkit.models.wide_resnet import WideResNet
    >>> WideResNet(depth=16, widen_factor=2)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out
                             else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        return shortcut + out


class _Group(nn.Module):
    """A stage of blocks; kept as a module with a ``layer`` attribute for RobustBench's key names."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: depth = 6n + 4 with n blocks per group, widths 16k/32k/64k."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 22, 28, 34, 70, ...), got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Group(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = _Group(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = _Group(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
