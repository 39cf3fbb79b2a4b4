"""TEA: test-time energy adaptation of BatchNorm affine parameters (Yuan et al., CVPR 2024).

The classifier is read as an energy-based model, ``E(x) = -logsumexp_y f(x)[y]`` (JEM's view). On every
test batch TEA lowers the energy of the test inputs and raises that of samples from the model's own
distribution, drawn by SGLD from a replay buffer: ``loss = mean E(x_test) - mean E(x_sgld)``, one Adam step
on the BatchNorm weights and biases (everything else frozen, BN normalising with the batch's statistics),
then predicts with a fresh forward. The update machinery (batch statistics, differentiable Adam step,
reset, episodic/continual) is shared with the baselines in :mod:`~robustkit.defenses.adaptation`.

SGLD (JEM lineage, Grathwohl et al. ICLR 2020): ``n`` chains (``n`` = batch size) start from random replay
buffer slots, or from uniform noise with probability ``reinit_prob``; ``sgld_steps`` steps of
``x <- x + step_size * d/dx logsumexp f(x) + noise * xi``, ``xi ~ N(0, I)``; the final samples are written
back into their slots. No clamping (as in the authors' code).

Buffer range. The authors' code draws the initial buffer and every re-initialised chain from U(-1, 1)
(``init_random`` in ``core/adazoo/energy.py``, a JEM inheritance: JEM normalised its images to [-1, 1]).
TEA itself does not normalise: its CIFAR-10 backbone is RobustBench's ``Standard`` WRN-28-10, which takes
[0, 1] pixels (``T.ToTensor()`` / ``robustbench.data``), so the official draw is U(-1, 1) *in the
model's [0, 1] pixel space* — half of each initial pixel range lies outside the data domain. robustkit
classifiers take [0, 1] pixels too (normalisation inside), so ``buffer_range=(-1, 1)`` is exactly the
released code, and it is the default. ``buffer_range=(0, 1)`` is robustkit's in-domain variant (chains
start on the data's pixel range); ``docs/results/fidelity.md`` (TEA) gives the switch's measured effect.

Shape:
    input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``; the buffer is
    ``[buffer_size, *input_shape]``.

Traits:
    stochastic (SGLD noise, buffer sampling), adapts at test time, exact gradients (the update depends on
    ``x`` through the loss; the step is differentiated with ``create_graph``; the SGLD samples do not depend
    on ``x``), ``forward_passes`` = steps × (sgld_steps + 2) + 1 = 23 network forwards per batch with the
    defaults (plus 20 + 1 backward passes, not counted).

Reference:
    Yuan, Xie, Ye, Chen, Yang, Tang, Li, TEA: Test-time Energy Adaptation, CVPR 2024,
    https://github.com/yuanyige/tea (``core/adazoo/energy.py``, ``cfgs/cifar10/energy.yaml``).

Example (a tiny BatchNorm model; the defaults' buffer is 10,000 images, shrunk here for speed)::

    >>> import torch, torch.nn as nn, robustkit
    >>> from robustkit.defenses.tea import EnergyAdaptedClassifier
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    >>> tea = EnergyAdaptedClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)),
    ...                               buffer_size=32, sgld_steps=2, seed=0)
    >>> tea(torch.rand(6, 1, 8, 8)).shape, tuple(tea.sgld_buffer.shape), tea.traits.stochastic
    (torch.Size([6, 3]), (32, 1, 8, 8), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..classifier import Classifier, DefenseTraits
from ..errors import InputError
from ..utils import check_positive_int
from .adaptation import AdaptationConfig, TestTimeAdaptedClassifier

__all__ = ["EnergyAdaptedClassifier", "SGLDChains", "TEAConfig", "energy"]


def energy(logits: torch.Tensor) -> torch.Tensor:
    """``E(x) = -logsumexp_y f(x)[y]`` per example: ``[N, K]`` logits → ``[N]`` (TEA Eq. 2, JEM Eq. 5)."""
    return -torch.logsumexp(logits, dim=1)


@dataclass(frozen=True)
class TEAConfig(AdaptationConfig):
    """TEA's hyperparameters; defaults are the paper's CIFAR-10 settings (``cfgs/cifar10/energy.yaml``).

    Attributes (beyond :class:`~robustkit.defenses.adaptation.AdaptationConfig`: Adam lr 1e-3, 1 step):
        buffer_size: replay buffer slots (10,000).
        reinit_prob: probability that a chain restarts from uniform noise instead of a buffer slot (0.05).
        sgld_steps: SGLD steps per batch (20).
        sgld_step_size: the gradient step ``alpha`` (0.1; JEM used 1.0).
        sgld_noise: the noise scale ``sigma`` (0.01).
        buffer_range: ``(low, high)`` of the uniform initialisation, in the classifier's [0, 1] pixel
            space: (-1, 1) is the authors' code (default); (0, 1) the in-domain variant (module docstring).
        reset_buffer: ``reset()`` also re-initialises the buffer (False: the authors' code keeps it).
        seed: seed of the defense's private ``torch.Generator`` (the global RNG is never used).
    """

    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    sgld_steps: int = 20
    sgld_step_size: float = 0.1
    sgld_noise: float = 0.01
    buffer_range: tuple[float, float] = (-1.0, 1.0)
    reset_buffer: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("buffer_size", self.buffer_size)
        if not 0 <= self.reinit_prob <= 1:
            raise InputError(f"reinit_prob must lie in [0, 1], got {self.reinit_prob!r}")
        if not isinstance(self.sgld_steps, int) or self.sgld_steps < 0:
            raise InputError(f"sgld_steps must be an int >= 0, got {self.sgld_steps!r}")
        if self.sgld_step_size < 0 or self.sgld_noise < 0:
            raise InputError(f"sgld_step_size and sgld_noise must be >= 0, got {self.sgld_step_size!r}, "
                             f"{self.sgld_noise!r}")
        lo, hi = self.buffer_range
        if not lo < hi:
            raise InputError(f"buffer_range must be (low, high) with low < high, got {self.buffer_range!r}")
        if not isinstance(self.seed, int):
            raise InputError(f"seed must be an int, got {self.seed!r}")


@dataclass
class SGLDChains:
    """Initial SGLD chains: ``x`` ``[n, C, H, W]``, their buffer ``indices`` ``[n]`` and ``reinit`` ``[n]``
    (True where the chain restarted from noise)."""

    x: torch.Tensor
    indices: torch.Tensor
    reinit: torch.Tensor


class EnergyAdaptedClassifier(TestTimeAdaptedClassifier):
    """TEA: adapt BN affine parameters per test batch by contrasting test energies with SGLD samples.

    ``forward(x)``: (episodic: reset) → draw ``len(x)`` chains → ``sgld_steps`` SGLD steps, written back to
    the buffer → ``loss = mean E(x) - mean E(x_sgld)`` (two forwards, each with its own batch statistics)
    → one backward, one Adam step on the BN affine parameters → logits of a fresh forward of ``x``.

    Args:
        classifier: a :class:`~robustkit.Classifier` with BatchNorm layers (else
            :class:`~robustkit.defenses.adaptation.NoNormLayersError`); it is copied, and kept unchanged as
            ``base_classifier`` (the static model for transfer attacks).
        config: a :class:`TEAConfig` (default: the paper's); ``**overrides`` replace its fields.

    Shape:
        input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``.

    Traits:
        stochastic, adapts at test time, exact gradients, ``forward_passes`` 23 (defaults).

    Reference:
        Yuan et al., TEA: Test-time Energy Adaptation, CVPR 2024, https://github.com/yuanyige/tea.

    Example::

        >>> import torch, torch.nn as nn, robustkit
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
        >>> tea = EnergyAdaptedClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)),
        ...                               buffer_size=8, sgld_steps=1)
        >>> tea(torch.rand(4, 1, 8, 8)).shape, int(tea.adam_step)
        (torch.Size([4, 3]), 1)
    """

    config_class = TEAConfig

    def __init__(self, classifier: Classifier, config: TEAConfig | None = None, **overrides: Any):
        super().__init__(classifier, config, **overrides)
        self._rng = torch.Generator().manual_seed(self.config.seed)
        self.register_buffer("sgld_buffer", self._uniform((self.config.buffer_size, *self.input_shape),
                                                          torch.device("cpu"), torch.float32), persistent=False)

    @classmethod
    def _traits_for(cls, cfg: TEAConfig) -> DefenseTraits:
        return DefenseTraits(stochastic=True, adapts_at_test_time=True, gradient="exact",
                             forward_passes=cfg.steps * (cfg.sgld_steps + 2) + int(cfg.predict_after_update))

    # ------------------------------------------------------------------------------------------- randomness
    def generator(self, device: torch.device) -> torch.Generator:
        """The private generator on ``device``; moving devices reseeds it from the old stream (deterministic)."""
        if self._rng.device != device:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=self._rng))
            self._rng = torch.Generator(device).manual_seed(seed)
        return self._rng

    def _uniform(self, shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        lo, hi = self.config.buffer_range
        return lo + (hi - lo) * torch.rand(shape, generator=self.generator(device), device=device, dtype=dtype)

    def reset(self) -> None:
        """Restore the source parameters and Adam state; re-initialise the buffer too if ``reset_buffer``."""
        super().reset()
        if self.config.reset_buffer:
            buf = self.sgld_buffer
            buf.copy_(self._uniform(buf.shape, buf.device, buf.dtype))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters, Adam state and the SGLD replay buffer (see the base class)."""
        return {**super().state_tensors(), "sgld_buffer": self.sgld_buffer}

    # ------------------------------------------------------------------------------------------- SGLD
    def sgld_init(self, n: int) -> SGLDChains:
        """Draw ``n`` initial chains: uniform buffer slots, each replaced by noise with prob ``reinit_prob``."""
        buf = self.sgld_buffer
        g = self.generator(buf.device)
        idx = torch.randint(0, buf.shape[0], (n,), generator=g, device=buf.device)
        reinit = torch.rand(n, generator=g, device=buf.device) < self.config.reinit_prob
        noise = self._uniform((n, *buf.shape[1:]), buf.device, buf.dtype)
        x = torch.where(reinit.view(-1, *([1] * (buf.dim() - 1))), noise, buf[idx])
        return SGLDChains(x=x, indices=idx, reinit=reinit)

    def sgld_step(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One SGLD step at the current parameters: ``x + step_size * d/dx sum logsumexp f(x) + noise``.

        ``noise`` defaults to ``sgld_noise * N(0, I)`` from the private generator. The gradient is of the
        batch's summed logsumexp (BN batch statistics couple the chains, as in the authors' code).
        """
        params = [p.detach() for p in self._params]
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.logsumexp(self._logits_at(params, z), 1).sum(), z)
        if noise is None:
            noise = self.config.sgld_noise * torch.randn(x.shape, generator=self.generator(x.device),
                                                         device=x.device, dtype=x.dtype)
        return (x.detach() + self.config.sgld_step_size * grad + noise).detach()

    def sgld_sample(self, n: int) -> torch.Tensor:
        """``n`` samples after ``sgld_steps`` steps, written back into their buffer slots (JEM's replay).

        With repeated slots the last write wins.
        """
        chains = self.sgld_init(n)
        x = chains.x
        for _ in range(self.config.sgld_steps):
            x = self.sgld_step(x)
        with torch.no_grad():
            self.sgld_buffer[chains.indices] = x
        return x

    # ------------------------------------------------------------------------------------------- loss
    def adaptation_loss(self, logits_fn, x):
        x_sgld = self.sgld_sample(x.shape[0]).to(x.dtype)
        logits = logits_fn(x)
        # TEA Eq. 5: lower the test energies, raise the model samples' (separate forwards: own batch stats)
        loss = energy(logits).mean() - energy(logits_fn(x_sgld)).mean()
        return loss, logits
