"""The ScoreModel contract: every diffusion backbone predicts noise in continuous VP time.

``eps = model(x_t, t, y=None)``:

* ``x_t``: ``[N, C, H, W]`` in the VP scaling (data in [-1, 1], ``x_t = a(t) x_0 + s(t) ε``);
* ``t``: continuous time in ``(0, 1]``, a float tensor ``[N]`` (or a 0-dim tensor / float broadcast to N);
* ``y``: int64 class labels ``[N]``, or ``None`` for the unconditional prediction. Conditional models
  trained with classifier-free guidance use the label ``num_classes`` (the "null" class) for ∅.

Each adapter hides its backbone's own time convention (score_sde: ``999·t``; guided-diffusion: integer
steps; EDM: σ with preconditioning and x0-prediction) and knows nothing of samplers. Nothing here uses
``torch.no_grad()``: attacks differentiate through it.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import InputError


class ScoreModel(nn.Module):
    """Base class of noise-prediction adapters: subclasses implement :meth:`predict_noise`.

    Attributes:
        input_shape: ``(C, H, W)`` of ``x_t`` (the same name as :attr:`robustkit.Classifier.input_shape`;
            ``image_shape``, its name up to robustkit 0.1.0, still reads it, with a DeprecationWarning).
        num_classes: number of classes for conditional models, ``None`` for unconditional ones.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int | None = None):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = num_classes

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`input_shape`."""
        warnings.warn("ScoreModel.image_shape is now input_shape (the name Classifier uses)", DeprecationWarning,
                      stacklevel=2)
        return self.input_shape

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, y: torch.Tensor | None = None) -> torch.Tensor:
        if x_t.dim() != 4 or tuple(x_t.shape[1:]) != self.input_shape:
            raise InputError(f"x_t must have shape [N, {', '.join(map(str, self.input_shape))}], got "
                             f"{list(x_t.shape)}")
        n = x_t.shape[0]
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise InputError(f"t must be a scalar or have shape [{n}], got {list(t.shape)}")
        if y is not None:
            if not self.conditional:
                raise InputError("this ScoreModel is unconditional; pass y=None")
            if y.shape != (n,) or y.is_floating_point():
                raise InputError(f"y must be an integer tensor of shape [{n}], got {y.dtype} {list(y.shape)}")
        return self.predict_noise(x_t, t, y)
