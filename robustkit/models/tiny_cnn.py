"""A tiny CNN for 8×8 single-channel digits: the embedded default model of robustkit.

Two 3×3 convolutions with BatchNorm (so test-time adaptation methods have norm layers to adapt),
global average pooling and a linear head: a few thousand parameters, trained in seconds by
``scripts/train_tiny_cnn_digits.py``; the weights ship inside the package.

Shape:
    input ``[N, 1, 8, 8]`` (normalised); output ``[N, 10]``.

Example::

    >>> import torch
    >>> from robustkit.models.tiny_cnn import TinyCNN
    >>> TinyCNN()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def train_tiny_cnn(x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, epochs: int = 40, batch_size: int = 64,
                   lr: float = 3e-3, mean: float = 0.5, std: float = 0.5) -> TinyCNN:
    """Train a :class:`TinyCNN` on images ``x`` in [0, 1] (normalised with ``mean``/``std`` here).

    Deterministic for a given seed on a given machine: the initialisation and the batch order come from a
    ``torch.Generator`` seeded with ``seed``; no global RNG is touched. Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # nn.Module initialisers draw from the global RNG; restored below
    try:
        model = TinyCNN(in_channels=x.shape[1], num_classes=int(y.max()) + 1)
    finally:
        torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xn = (x - mean) / std
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(xn[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()
