"""The variance-preserving (VP) noise schedule, in continuous time and in DDPM's discrete steps.

Continuous time (score_sde): the forward SDE ``dx = -½ β(t) x dt + sqrt(β(t)) dw`` on ``t ∈ [0, 1]``
with the linear rate ``β(t) = β_min + t (β_max − β_min)`` has the Gaussian marginal

    x_t = a(t) x_0 + s(t) ε,   log a(t) = −t² (β_max − β_min) / 4 − t β_min / 2,   s(t) = sqrt(1 − a(t)²)

(Song et al. 2021, Eq. 33 and Appendix B). Discrete time (DDPM; DiffPure's noising step): N steps with
``β_i = linspace(β_min/N, β_max/N, N)`` and ``ᾱ_i = Π_{j≤i} (1 − β_j)``, so step ``i`` is the state after
``i + 1`` noise increments; ``t = (i + 1)/N`` is its nominal continuous time.

Everything here is parameter-free arithmetic on tensors: differentiable, device and dtype follow the
inputs, no ``torch.no_grad()`` (attacks differentiate through it). Times are floats or tensors; a
per-example time is a tensor ``[N]`` broadcast over the remaining dimensions of ``x``.

Reference:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021,
    code github.com/yang-song/score_sde_pytorch (``sde_lib.VPSDE``).
    Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Nie et al., "Diffusion Models for Adversarial Purification" (DiffPure), ICML 2022,
    code github.com/NVlabs/DiffPure (noising with ``a[t*·N − 1]``).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM),
    NeurIPS 2022 (σ = s/a of VP time, Table 1).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import NamedTuple, Union

import torch

from ..errors import InputError

__all__ = ["Marginal", "VPSDE", "DiscreteVPSchedule"]

TimeLike = Union[float, int, torch.Tensor]


class Marginal(NamedTuple):
    """Coefficients of the Gaussian marginal ``x_t = mean · x_0 + std · ε`` (unpacks as a pair)."""

    mean: torch.Tensor
    std: torch.Tensor


def _as_time(t: TimeLike) -> torch.Tensor:
    """``t`` as a floating tensor; Python numbers get the default dtype, tensors keep theirs."""
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise InputError(f"t must be a float or a tensor, got {type(t).__name__}")
    return torch.tensor(float(t), dtype=torch.get_default_dtype())


def _broadcast_to(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or per-example ``[N]`` coefficient reshaped to multiply ``x`` of shape ``[N, ...]``."""
    coef = coef.to(dtype=x.dtype, device=x.device)
    if coef.dim() == 0:
        return coef
    if coef.dim() == 1 and x.dim() >= 1 and coef.shape[0] == x.shape[0]:
        return coef.view(-1, *([1] * (x.dim() - 1)))
    raise InputError(f"t must be a scalar or have shape [{x.shape[0] if x.dim() else ''}] to match x of shape "
                     f"{list(x.shape)}, got {list(coef.shape)}")


def _time_like(t: TimeLike, x: torch.Tensor) -> torch.Tensor:
    """``t`` in the dtype and on the device of ``x`` (before broadcasting)."""
    t = t.to(dtype=x.dtype, device=x.device) if isinstance(t, torch.Tensor) else _as_time(t).to(x.dtype)
    return t.to(x.device)


@dataclass(frozen=True)
class VPSDE:
    """The continuous-time VP SDE with a linear β(t) on ``t ∈ [0, 1]`` (score_sde's ``VPSDE``).

    Args:
        beta_min: β(0) (score_sde/DiffPure: 0.1).
        beta_max: β(1) (score_sde/DiffPure: 20).

    Shape:
        ``t`` is a float, a 0-dim tensor or a per-example tensor ``[N]``; ``x``, ``eps`` are ``[N, ...]``.
        Functions of ``t`` alone return tensors of ``t``'s shape.

    Reference:
        Song et al., ICLR 2021, Eq. (11) and (33); code github.com/yang-song/score_sde_pytorch.

    Example:
        >>> import torch
        >>> sde = VPSDE()
        >>> a, s = sde.marginal(0.1)
        >>> round(float(a), 4), round(float(s), 4)
        (0.9467, 0.3221)
        >>> abs(float(sde.t_from_sigma(sde.sigma(0.3))) - 0.3) < 1e-6
        True
        >>> sde.add_noise(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([1e-3, 1.0])).shape
        torch.Size([2, 3])
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if not (self.beta_min > 0 and self.beta_max >= self.beta_min and math.isfinite(self.beta_max)):
            raise InputError(f"need 0 < beta_min <= beta_max < inf, got beta_min={self.beta_min}, "
                             f"beta_max={self.beta_max}")

    # -- marginal --------------------------------------------------------------------------------------

    def beta(self, t: TimeLike) -> torch.Tensor:
        """β(t) = β_min + t (β_max − β_min)."""
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coef(self, t: TimeLike) -> torch.Tensor:
        """log a(t) = −t² (β_max − β_min)/4 − t β_min/2 (= −½ ∫₀ᵗ β, score_sde Eq. 33)."""
        t = _as_time(t)
        return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: TimeLike) -> Marginal:
        """``(mean_coef, std)`` of ``x_t | x_0``: a(t) and s(t) = sqrt(1 − a²).

        ``1 − a² = −expm1(2 log a)`` keeps full relative accuracy at small t, where ``1 − exp(·)`` would
        cancel (at t = 1e-5 in float32, s ≈ 1e-3 would otherwise lose about half its digits).
        """
        log_a = self.log_mean_coef(t)
        return Marginal(torch.exp(log_a), torch.sqrt(-torch.expm1(2.0 * log_a)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """``x_t = a(t) x_0 + s(t) noise``; ``t`` scalar or ``[N]``, broadcast per example."""
        if noise.shape != x0.shape:
            raise InputError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")
        a, s = self.marginal(_time_like(t, x0))
        return _broadcast_to(a, x0) * x0 + _broadcast_to(s, x0) * noise

    # -- SDE coefficients --------------------------------------------------------------------------------

    def drift(self, x: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """Forward drift f(x, t) = −½ β(t) x."""
        return -0.5 * _broadcast_to(self.beta(_time_like(t, x)), x) * x

    def diffusion(self, t: TimeLike) -> torch.Tensor:
        """Diffusion coefficient g(t) = sqrt(β(t)) (a scalar per time)."""
        return torch.sqrt(self.beta(t))

    def score_from_noise(self, eps: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """∇ log p_t(x) = −ε / s(t) for a noise prediction ε (the denoising-score-matching identity)."""
        return -eps / _broadcast_to(self.marginal(_time_like(t, eps)).std, eps)

    def reverse_drift(self, x: torch.Tensor, t: TimeLike, eps: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse-time SDE, ``f − g² ∇log p = −½β x + β ε / s`` (Song et al. Eq. 6).

        The reverse SDE runs from t to 0 as ``dx = [f − g² ∇log p] dt + g dw̄`` with ``dt < 0``.
        """
        tt = _time_like(t, x)
        beta = _broadcast_to(self.beta(tt), x)
        std = _broadcast_to(self.marginal(tt).std, x)
        return -0.5 * beta * x + beta * eps / std

    def ode_drift(self, x: torch.Tensor, t: TimeLike, eps: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE drift ``f − ½ g² ∇log p = −½β x + ½β ε / s`` (Song et al. Eq. 13)."""
        tt = _time_like(t, x)
        beta = _broadcast_to(self.beta(tt), x)
        std = _broadcast_to(self.marginal(tt).std, x)
        return -0.5 * beta * (x - eps / std)

    # -- EDM σ of VP time --------------------------------------------------------------------------------

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """EDM noise level σ(t) = s(t)/a(t) = sqrt(exp(−2 log a) − 1) (Karras et al. Table 1, VP)."""
        return torch.sqrt(torch.expm1(-2.0 * self.log_mean_coef(t)))

    def t_from_sigma(self, sigma: TimeLike) -> torch.Tensor:
        """Inverse of :meth:`sigma`: the VP time whose σ(t) equals ``sigma`` (σ ≥ 0).

        With ``L = −log a = ½ log(1 + σ²)``, t solves ``A t² + B t − L = 0`` (A = (β_max − β_min)/4,
        B = β_min/2); the positive root is written ``2L / (B + sqrt(B² + 4AL))`` to avoid the
        cancellation of ``(−B + sqrt(·)) / 2A`` at small σ.
        """
        sigma = _as_time(sigma)
        big_l = 0.5 * torch.log1p(sigma * sigma)
        a_coef = 0.25 * (self.beta_max - self.beta_min)
        b_coef = 0.5 * self.beta_min
        return 2.0 * big_l / (b_coef + torch.sqrt(b_coef * b_coef + 4.0 * a_coef * big_l))


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """DDPM's discrete VP schedule, the one DiffPure noises its inputs with.

    ``betas = linspace(β_min/N, β_max/N, N)`` (= ``β_min/N + i (β_max − β_min)/(N(N − 1))``) and
    ``alphas_cumprod[i] = Π_{j≤i} (1 − β_j)`` (computed in float64, stored as float32 like the
    reference code's tensors). Step ``i`` holds ``x_i = sqrt(ᾱ_i) x_0 + sqrt(1 − ᾱ_i) ε``.

    Two maps to continuous time:

    * :meth:`index` — DiffPure's noising index for a purification time t*: ``round(t*·N) − 1``
      (``x = x0 * a[t*·N − 1].sqrt() + e * (1 − a[t*·N − 1]).sqrt()``); t* = 0.1 → step 99.
    * :meth:`time_of` — the continuous VP time handed to a :class:`ScoreModel` at step ``i``: the time
      whose continuous marginal has exactly the noise level of step ``i`` (``VPSDE.t_from_sigma`` of
      ``σ_i = sqrt((1 − ᾱ_i)/ᾱ_i)``), so the model sees ``x_t`` in the scaling its contract promises.
      For N = 1000 it lies within half a step of ``(i + 1)/N`` for i < 473 (there
      ``index(time_of(i)) == i``) and drifts to 3.4 steps below it at i = 999 (``log(1 − β) ≠ −β``).

    Shape:
        ``t`` is a float or a tensor ``[N]``; ``index(t)`` is an int or a long tensor of the same shape.

    Reference:
        Ho et al., NeurIPS 2020 (Eq. 4); DiffPure (Nie et al., ICML 2022), github.com/NVlabs/DiffPure.

    Example:
        >>> import torch
        >>> sched = DiscreteVPSchedule()
        >>> sched.index(0.1)
        99
        >>> a, s = sched.marginal_at(0.1)
        >>> round(float(a), 4), round(float(s), 4)
        (0.9471, 0.3209)
        >>> sched.index(torch.tensor([0.075, 0.1]))
        tensor([74, 99])
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_steps: int = 1000
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    betas64: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod64: torch.Tensor = field(init=False, repr=False, compare=False)
    timesteps: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise InputError(f"num_steps must be an int >= 2, got {self.num_steps!r}")
        n = self.num_steps
        if not (0 < self.beta_min <= self.beta_max < n):
            raise InputError(f"need 0 < beta_min <= beta_max < num_steps, got beta_min={self.beta_min}, "
                             f"beta_max={self.beta_max}, num_steps={n}")
        betas64 = torch.linspace(self.beta_min / n, self.beta_max / n, n, dtype=torch.float64)
        acp64 = torch.cumprod(1.0 - betas64, dim=0)
        sigma64 = torch.sqrt((1.0 - acp64) / acp64)
        set_ = object.__setattr__  # frozen dataclass: derived tables are set once here
        set_(self, "betas64", betas64)
        set_(self, "alphas_cumprod64", acp64)
        set_(self, "betas", betas64.to(torch.float32))
        set_(self, "alphas_cumprod", acp64.to(torch.float32))
        set_(self, "timesteps", self.sde.t_from_sigma(sigma64))

    @property
    def sde(self) -> VPSDE:
        """The continuous VP SDE with the same β range (the N → ∞ limit of this schedule)."""
        return VPSDE(self.beta_min, self.beta_max)

    def index(self, t: TimeLike) -> int | torch.Tensor:
        """DiffPure's step for a continuous time: ``round(t·N) − 1`` (t* = 0.1, N = 1000 → 99).

        Rounding (rather than ``int``) makes ``t* = 0.075`` or ``0.15`` immune to ``t*·N`` landing a hair
        below an integer. Raises :class:`InputError` outside ``[1/N, 1]`` (rounded).
        """
        n = self.num_steps
        if isinstance(t, torch.Tensor):
            idx = torch.round(t.detach().to(torch.float64) * n).long() - 1
            if idx.numel() and (bool((idx < 0).any()) or bool((idx >= n).any())):
                raise InputError(f"t must lie in [{1 / n:g}, 1] (steps 0..{n - 1}), got {t.tolist()}")
            return idx
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise InputError(f"t must be a float or a tensor, got {type(t).__name__}")
        idx = int(round(float(t) * n)) - 1
        if not 0 <= idx < n:
            raise InputError(f"t must lie in [{1 / n:g}, 1] (steps 0..{n - 1}), got {t}")
        return idx

    def time_of(self, index: int) -> float:
        """Continuous VP time with the noise level of step ``index`` (what a ScoreModel is given)."""
        return float(self.timesteps[self._check_index(index)])

    def marginal_at_index(self, index: int | torch.Tensor) -> Marginal:
        """``(sqrt(ᾱ_i), sqrt(1 − ᾱ_i))`` of step ``index`` (float32; an int gives 0-dim tensors)."""
        if isinstance(index, torch.Tensor):
            index = index.to("cpu", torch.long)  # the tables live on the CPU; results follow x later
        else:
            index = self._check_index(index)
        acp = self.alphas_cumprod64[index]
        return Marginal(torch.sqrt(acp).to(torch.float32), torch.sqrt(1.0 - acp).to(torch.float32))

    def marginal_at(self, t: TimeLike) -> Marginal:
        """``(sqrt(ᾱ), sqrt(1 − ᾱ))`` at the step :meth:`index` assigns to ``t``."""
        return self.marginal_at_index(self.index(t))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: TimeLike) -> torch.Tensor:
        """DiffPure's noising ``x = x0 · sqrt(ᾱ_k) + noise · sqrt(1 − ᾱ_k)``, ``k = index(t)`` per example."""
        if noise.shape != x0.shape:
            raise InputError(f"noise must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}")
        a, s = self.marginal_at(t)
        return _broadcast_to(a, x0) * x0 + _broadcast_to(s, x0) * noise

    def _check_index(self, index: int) -> int:
        if not isinstance(index, bool):
            try:
                i = operator.index(index)
            except TypeError:
                pass
            else:
                if 0 <= i < self.num_steps:
                    return i
        raise InputError(f"step index must be an int in [0, {self.num_steps - 1}], got {index!r}")
