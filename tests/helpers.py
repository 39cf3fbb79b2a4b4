"""Helpers shared by test modules: ``from helpers import perturbed`` (pytest puts ``tests/`` on sys.path)."""

from __future__ import annotations

import torch


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add ``scale · N(0, 1)`` noise (seeded) to every parameter and return the model in eval mode: the
    zero-initialised output, residual and adaLN layers would otherwise make ε̂ ≡ 0 and hide wrong wiring."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()
