"""Projection heads of contrastive-guided purification and their online Adam training, written functionally.

Two heads map a classifier's logits ``[N, K]`` to embeddings ``[N, K]``:

* :class:`GatedProjectionHead` — the official code's ``MLP`` (ContrastDiffPurification
  ``src/contrastive_guided_diffusion.py``): three gated residual blocks ``v ← v + d3(silu(d1 v) ⊙ d2 v)``,
  no biases, hidden width ``2K``. Its ``state_dict`` keys are the official ones,
  ``layer{0,1,2}.d{1,2,3}.weight``, so the official head's weights load with ``strict=True``.
* :class:`ProjectionHead` — robustkit's earlier head, ``z = l + W₂ silu(W₁ l + b₁)``.

Both draw initial weights from a ``torch.Generator``, never from the global RNG: their own, seeded with
``seed`` (:meth:`reset`), or one passed in (:meth:`draw_weights`, which the purifier calls with the
purification's generator). The law is uniform ``±1/sqrt(fan_in)``: the bound of PyTorch's ``nn.Linear``
initialisation, which the official ``reset_parameters`` uses.

Online training (:class:`HeadState`, :func:`online_head_update`). The official guidance takes one Adam step on
the head per guided solver step (lr 0.01, betas (0.9, 0.999), eps 1e-8), starting from freshly initialised
weights at each purification. robustkit keeps the head module as the *initial* weights and carries the trained
weights and Adam moments as plain tensors through the solve (``torch.func.functional_call``), so the module is
never mutated and every purification restarts from the same initial weights. The Adam step is written out of
place (:func:`~robustkit.defenses.adaptation.adam_update`, ``torch.optim.Adam``'s rule), so when the caller
records a graph the trained weights stay functions of the states that trained them: the whole online
purification is one differentiable function of its input.

Example::

    >>> import torch
    >>> head = GatedProjectionHead(10, 20, seed=0)
    >>> sorted(head.state_dict())[:3]
    ['layer0.d1.weight', 'layer0.d2.weight', 'layer0.d3.weight']
    >>> head(torch.randn(4, 10)).shape
    torch.Size([4, 10])
    >>> s = HeadState.initial(head)
    >>> s.step, len(s.weights)
    (0, 9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adaptation import AdaptationConfig, adam_update

__all__ = ["CONTRASTIVE_HEADS", "GatedProjectionHead", "HeadState", "ProjectionHead", "build_head",
           "head_forward", "online_head_update"]

HeadArg = Literal["gated", "residual"]
CONTRASTIVE_HEADS = ("gated", "residual")


def _uniform_draws(shapes: list[tuple[torch.Size, int]], generator: torch.Generator) -> list[torch.Tensor]:
    """One U(±1/sqrt(fan_in)) tensor per ``(shape, fan_in)``, in order, from ``generator`` (on its device).

    Drawn in float32 whatever the head's dtype, so a head starts from the same values in any precision.
    """
    return [(torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32) * 2 - 1)
            * (1.0 / math.sqrt(fan_in)) for shape, fan_in in shapes]


class _SeededHead(nn.Module):
    """What both heads share: initial weights drawn from a generator (seeded, or the purification's)."""

    def _fans(self) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def draw_weights(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Fresh initial weights (``named_parameters()`` order) from ``generator``, in this head's dtype and device."""
        params = list(self.parameters())
        draws = _uniform_draws([(p.shape, f) for p, f in zip(params, self._fans())], generator)
        return tuple(d.to(device=p.device, dtype=p.dtype) for d, p in zip(draws, params))

    @torch.no_grad()
    def reset(self) -> None:
        """Restore the seeded initialisation (from a generator seeded with ``seed``)."""
        for p, w in zip(self.parameters(), self.draw_weights(torch.Generator().manual_seed(self.seed))):
            p.copy_(w)


class ProjectionHead(_SeededHead):
    """A residual two-layer projection of logits: ``z = l + W₂ silu(W₁ l + b₁)`` (robustkit's ``"residual"``).

    Shape:
        ``[N, num_classes]`` → ``[N, num_classes]``.
    """

    def __init__(self, num_classes: int, hidden: int, seed: int = 0):
        super().__init__()
        self.num_classes, self.hidden, self.seed = int(num_classes), int(hidden), int(seed)
        self.fc1 = nn.Linear(self.num_classes, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.num_classes, bias=False)
        self.reset()

    def _fans(self) -> list[int]:
        return [self.num_classes, self.num_classes, self.hidden]  # fc1.weight, fc1.bias, fc2.weight

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.fc2(F.silu(self.fc1(logits)))


class _GatedBlock(nn.Module):
    """``d3(silu(d1 v) ⊙ d2 v)`` without biases (the official ``MLPBlock``; key names are the official ones)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.d1 = nn.Linear(width, hidden, bias=False)
        self.d2 = nn.Linear(width, hidden, bias=False)
        self.d3 = nn.Linear(hidden, width, bias=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.d3(F.silu(self.d1(v)) * self.d2(v))


class GatedProjectionHead(_SeededHead):
    """The official projection head: ``v ← v + block_i(v)`` for three gated blocks, no biases (``"gated"``).

    ``state_dict`` keys ``layer{0,1,2}.d1.weight`` ``[hidden, K]``, ``.d2.weight`` ``[hidden, K]``,
    ``.d3.weight`` ``[K, hidden]``: the official ``MLP(K, 2K)`` loads strictly.

    Shape:
        ``[N, num_classes]`` → ``[N, num_classes]``.

    Reference:
        Bai et al., ICML 2024; ContrastDiffPurification ``src/contrastive_guided_diffusion.py`` (``MLP``, ``MLPBlock``).
    """

    def __init__(self, num_classes: int, hidden: int, seed: int = 0):
        super().__init__()
        self.num_classes, self.hidden, self.seed = int(num_classes), int(hidden), int(seed)
        self.layer0 = _GatedBlock(self.num_classes, self.hidden)
        self.layer1 = _GatedBlock(self.num_classes, self.hidden)
        self.layer2 = _GatedBlock(self.num_classes, self.hidden)
        self.reset()

    def _fans(self) -> list[int]:
        return [self.num_classes, self.num_classes, self.hidden] * 3  # d1, d2, d3 of each block

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        v = logits
        for block in (self.layer0, self.layer1, self.layer2):
            v = v + block(v)
        return v


def build_head(kind: HeadArg, num_classes: int, hidden: int, seed: int) -> nn.Module:
    """The head named ``kind`` (``"gated"``: :class:`GatedProjectionHead`, ``"residual"``: :class:`ProjectionHead`)."""
    return (GatedProjectionHead if kind == "gated" else ProjectionHead)(num_classes, hidden, seed)


def head_forward(head: nn.Module, weights: tuple[torch.Tensor, ...], v: torch.Tensor) -> torch.Tensor:
    """``head(v)`` with its parameters replaced by ``weights`` (in ``head.named_parameters()`` order)."""
    names = [n for n, _ in head.named_parameters()]
    return torch.func.functional_call(head, dict(zip(names, weights)), (v,))


@dataclass(frozen=True)
class HeadState:
    """The online head during one purification: its weights, Adam's moments and the number of steps taken.

    Tensors are in ``head.named_parameters()`` order. They carry a graph when the purification does.
    """

    weights: tuple[torch.Tensor, ...]
    exp_avg: tuple[torch.Tensor, ...]
    exp_avg_sq: tuple[torch.Tensor, ...]
    step: int = 0

    @classmethod
    def initial(cls, weights: nn.Module | tuple[torch.Tensor, ...]) -> "HeadState":
        """The state at the start of a purification: ``weights`` (a head module's, or tensors), zero moments."""
        if isinstance(weights, nn.Module):
            weights = tuple(p.detach() for p in weights.parameters())
        zeros = tuple(torch.zeros_like(w) for w in weights)
        return cls(tuple(weights), zeros, zeros, 0)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Weights, then first moments, then second moments (flat, for a checkpointed autograd function)."""
        return (*self.weights, *self.exp_avg, *self.exp_avg_sq)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...], step: int) -> "HeadState":
        n = len(tensors) // 3
        return cls(tuple(tensors[:n]), tuple(tensors[n:2 * n]), tuple(tensors[2 * n:]), step)


def online_head_update(state: HeadState, grads: tuple[torch.Tensor, ...], lr: float) -> HeadState:
    """One Adam step (lr ``lr``, betas (0.9, 0.999), eps 1e-8, no weight decay: the official optimiser).

    Out of place: differentiable in ``state`` and ``grads`` when they carry a graph.
    """
    cfg = AdaptationConfig(lr=lr)
    step = state.step + 1
    new = [adam_update(w, g, m, v, step, cfg) for w, g, m, v in zip(state.weights, grads, state.exp_avg,
                                                                     state.exp_avg_sq)]
    return HeadState(tuple(n[0] for n in new), tuple(n[1] for n in new), tuple(n[2] for n in new), step)
