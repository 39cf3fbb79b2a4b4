"""DiffPure: diffuse the input a little, then denoise it with a pretrained diffusion model's reverse SDE.

Faithful to Nie et al. (ICML 2022) and NVlabs/DiffPure (``runners/diffpure_sde.py``, ``eval_sde_adv.py``):

1. scale ``x ∈ [0, 1]`` to ``[-1, 1]`` (ImageNet first: bilinear resize 224 → 256, ``resize=256``);
2. noise to ``t*`` with the *discrete* DDPM schedule, ``x_t* = sqrt(ᾱ_k) x + sqrt(1 − ᾱ_k) ε`` with
   ``β = linspace(0.1/1000, 20/1000, 1000)`` and ``k = t*·1000 − 1`` (t* = 0.1: sqrt(ᾱ) = 0.9471,
   std 0.3209 — the continuous marginal would give 0.9467 and 0.3221);
3. integrate the reverse VP-SDE ``dx = [−½β(t) x − β(t) ∇log p_t(x)] dt + sqrt(β(t)) dw̄`` with
   Euler–Maruyama, ``dt = 1e-3``, from ``t*`` down to ``1e-5`` (100 score evaluations for t* = 0.1), where
   the score is ``−ε̂(x, t)/σ(t)`` (Song et al. 2021, Eq. 6; DiffPure's ``RevVPSDE``);
4. scale back to ``[0, 1]`` (and resize back). The result is **not clamped** (DiffPure feeds
   ``(x + 1)/2`` to the classifier as is); ``clamp=True`` clamps to ``[0, 1]``.

Variants (``sampler``): ``"sde"`` (the paper's default), ``"ode"`` (probability-flow Euler, DiffPure's
ODE ablation), ``"ddpm"`` (ancestral DDPM from step k, DiffPure's guided-diffusion runner) and ``"ddim"``.
``n_samples`` and the vote live in :class:`~robustkit.defenses.PurifiedClassifier`.

Gradients. The score network's weights are frozen (``requires_grad_(False)``), so attacks carry input
gradients only. :meth:`DiffPurePurifier.purify` is one autograd graph with each solver step
checkpointed and the noise drawn up front (exact, memory ~flat in the number of steps);
:meth:`~DiffPurePurifier.purify_adjoint` uses torchsde's ``sdeint_adjoint`` as DiffPure does (but with
``adjoint_params=()``: DiffPure leaves the 107M weights trainable, so its adjoint also integrates their
adjoints); :meth:`~DiffPurePurifier.purify_surrogate` runs a coarser solver (``surrogate_dt = 5e-3``,
Lee & Kim 2023) on the same Brownian path.

Randomness comes only from the ``torch.Generator`` passed in (a fresh OS-seeded one when None): the
initial ε first, then one draw per stochastic step. The global RNGs of torch and numpy are never used.

Example (an analytic score model on 8×8 images; 10 Euler steps)::

    >>> import torch
    >>> from robustkit.defenses import DiffPureConfig, DiffPurePurifier, GaussianScoreModel
    >>> purifier = DiffPurePurifier(GaussianScoreModel((1, 8, 8), mean=0.0, std=0.5),
    ...                             DiffPureConfig(t_star=0.1, dt=1e-2))
    >>> purifier.nfe, round(purifier.noise_mean, 4), round(purifier.noise_std, 4)
    (10, 0.9471, 0.3209)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> a = purifier.purify(x, torch.Generator().manual_seed(0))
    >>> b = purifier.purify(x, torch.Generator().manual_seed(0))
    >>> a.shape, torch.equal(a, b)
    (torch.Size([2, 1, 8, 8]), True)

Reference:
    Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022, github.com/NVlabs/DiffPure.
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021.
    Lee & Kim, "Robust Evaluation of Diffusion-Based Adversarial Purification", ICCV 2023 (surrogate).
    Li et al., "Scalable Gradients for Stochastic Differential Equations", AISTATS 2020 (torchsde adjoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..classifier import check_images
from ..diffusion.schedule import DiscreteVPSchedule, VPSDE
from ..diffusion.score_model import ScoreModel
from ..diffusion.solvers import ddim, ddim_indices, ddpm_ancestral, euler_maruyama, probability_flow_euler, time_grid
from ..errors import InputError
from ..utils import check_positive_int
from .purification import DrawBlocks, Purifier, SurrogatePurification

__all__ = ["DiffPureConfig", "DiffPureNoise", "DiffPurePurifier", "GaussianScoreModel", "PurificationTrajectory", "SAMPLERS",
           "coarsen_noise"]

SamplerArg = Literal["sde", "ode", "ddpm", "ddim"]
SAMPLERS = ("sde", "ode", "ddpm", "ddim")

# Two solver grid nodes closer than this (in time) are the same node.
_NODE_TOL = 1e-12


# ---------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class DiffPureConfig:
    """DiffPure's hyperparameters; defaults are the paper's CIFAR-10 Linf setting.

    Attributes:
        t_star: diffusion time t* (CIFAR-10 Linf 0.1, L2 0.075, ImageNet 0.15).
        sampler: ``"sde"`` (Euler–Maruyama, the paper), ``"ode"`` (probability flow), ``"ddpm"``, ``"ddim"``.
        dt: step of the ``sde``/``ode`` solvers (1e-3 → 100 score evaluations at t* = 0.1).
        t_end: where the continuous solvers stop (1e-5, as DiffPure).
        beta_min, beta_max, num_train_steps: the VP schedule (0.1, 20, 1000; the discrete
            ``β = linspace(β_min/N, β_max/N, N)`` noises the input).
        clamp: clamp the purified image to [0, 1] (DiffPure does not).
        resize: purify at ``resize × resize`` (bilinear, align_corners=False, there and back), e.g. 256
            for ImageNet's 224 inputs with the 256×256 ADM; None: at the input size.
        ddim_steps, ddim_eta: DDIM sub-sequence length (None: every step from k down) and stochasticity.
        ddpm_variance: ``"posterior"`` (β̃, "fixedsmall") or ``"beta"`` ("fixedlarge").
        clip_denoised: clamp x̂0 to [-1, 1] inside the DDPM/DDIM steps (guided-diffusion's option).
        surrogate_dt: step of the surrogate (backward-only) ``sde``/``ode`` solve (Lee & Kim: 5e-3).
        surrogate_steps: DDIM steps of the surrogate for ``ddpm``/``ddim``.
        adjoint_method: torchsde's adjoint solver (None: its default for diagonal Itô noise, Milstein, as
            DiffPure).
        checkpoint: checkpoint each solver step when a graph is recorded (exact gradients, flat memory).
    """

    t_star: float = 0.1
    sampler: SamplerArg = "sde"
    dt: float = 1e-3
    t_end: float = 1e-5
    beta_min: float = 0.1
    beta_max: float = 20.0
    num_train_steps: int = 1000
    clamp: bool = False
    resize: int | None = None
    ddim_steps: int | None = None
    ddim_eta: float = 0.0
    ddpm_variance: Literal["posterior", "beta"] = "posterior"
    clip_denoised: bool = False
    surrogate_dt: float = 5e-3
    surrogate_steps: int = 20
    adjoint_method: str | None = None
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        for name in ("t_star", "dt", "t_end", "surrogate_dt", "ddim_eta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= self.t_end < self.t_star <= 1.0:
            raise InputError(f"need 0 <= t_end < t_star <= 1, got t_end={self.t_end}, t_star={self.t_star}")
        if self.dt <= 0 or self.surrogate_dt <= 0:
            raise InputError(f"dt and surrogate_dt must be positive, got {self.dt}, {self.surrogate_dt}")
        if self.ddim_eta < 0:
            raise InputError(f"ddim_eta must be >= 0, got {self.ddim_eta}")
        k = self.schedule().index(float(self.t_star))  # InputError outside [1/N, 1]
        if self.ddim_steps is not None and (isinstance(self.ddim_steps, bool) or not isinstance(self.ddim_steps, int)
                                            or not 1 <= self.ddim_steps <= k + 1):
            raise InputError(f"ddim_steps must be None or an int in [1, {k + 1}], got {self.ddim_steps!r}")
        check_positive_int("surrogate_steps", self.surrogate_steps)
        check_positive_int("resize", self.resize, none_ok=True)
        if self.ddpm_variance not in ("posterior", "beta"):
            raise InputError(f"ddpm_variance must be 'posterior' or 'beta', got {self.ddpm_variance!r}")
        for name in ("clamp", "clip_denoised", "checkpoint"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def sde(self) -> VPSDE:
        """The continuous VP SDE of the reverse solve."""
        return VPSDE(self.beta_min, self.beta_max)

    def schedule(self) -> DiscreteVPSchedule:
        """The discrete schedule of the forward noising (and of the ``ddpm``/``ddim`` samplers)."""
        return DiscreteVPSchedule(self.beta_min, self.beta_max, self.num_train_steps)


@dataclass(frozen=True)
class DiffPureNoise:
    """All the randomness of one purification: fixing it makes :meth:`DiffPurePurifier.purify_with_noise`
    a deterministic, differentiable function of the input.

    Attributes:
        init: the ε of the forward noising, ``[N, C, H', W']`` (diffusion resolution).
        steps: one standard-normal tensor of ``init``'s shape per stochastic solver step.
    """

    init: torch.Tensor
    steps: tuple[torch.Tensor, ...] = ()

    @staticmethod
    def cat(noises: Sequence["DiffPureNoise"]) -> "DiffPureNoise":
        """The noise of the purifications stacked along the batch (draw ``k``'s rows after draw ``k − 1``'s),
        for one purification of the stacked inputs. Only plain DiffPure noise: a subclass carries draws that
        are not per row (e.g. a guidance head per purification) and cannot be stacked."""
        if not noises or any(type(n) is not DiffPureNoise for n in noises):
            raise InputError(f"only DiffPureNoise can be stacked, got {[type(n).__name__ for n in noises]}")
        return DiffPureNoise(torch.cat([n.init for n in noises]),
                             tuple(torch.cat(z) for z in zip(*(n.steps for n in noises))))


@dataclass(frozen=True)
class PurificationTrajectory:
    """One purification with its reverse process kept: ``purified`` ``[N, C, H, W]`` in [0, 1] (as
    :meth:`DiffPurePurifier.purify_with_noise`), ``states[k]`` the VP state after step ``k`` (diffusion
    resolution, [-1, 1] scaling) at time ``times[k]``."""

    purified: torch.Tensor
    states: tuple[torch.Tensor, ...]
    times: tuple[float, ...]


# ----------------------------------------------------------------------------------- an analytic model

class GaussianScoreModel(ScoreModel):
    """The optimal noise predictor for data ``N(mean, std² I)`` (in the [-1, 1] diffusion scaling).

    Under the VP marginal ``x_t = a(t) x_0 + σ(t) ε``, ``E[ε | x_t] = σ (x_t − a·mean) / (a² std² + σ²)``.
    No parameters: a reference for tests, doctests and benchmarks, whose purification law is known.

    Shape:
        ``x_t [N, *input_shape]``, ``t [N]`` → ``[N, *input_shape]``.

    Example::

        >>> import torch
        >>> m = GaussianScoreModel((1, 2, 2), mean=0.0, std=1.0)   # data ~ N(0, I): x_t ~ N(0, I) too
        >>> t = torch.tensor([0.3])
        >>> a, s = m.sde.marginal(t)
        >>> torch.allclose(m(torch.ones(1, 1, 2, 2), t), s * torch.ones(1, 1, 2, 2))
        True
    """

    def __init__(self, input_shape: Sequence[int], mean: float = 0.0, std: float = 0.5, *,
                 beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__(input_shape)
        if not (isinstance(std, (int, float)) and std > 0):
            raise InputError(f"std must be positive, got {std!r}")
        self.mean, self.std = float(mean), float(std)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.sde = VPSDE(self.beta_min, self.beta_max)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        a, s = self.sde.marginal(t)
        a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
        return s * (x_t - a * self.mean) / (a * a * self.std ** 2 + s * s)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, mean={self.mean}, std={self.std}"


# ------------------------------------------------------------------------------------------ samplers

def coarsen_noise(fine_grid: Sequence[float], coarse_grid: Sequence[float],
                  draws: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Standard-normal draws of a coarse Euler–Maruyama grid on the Brownian path of a fine one.

    The fine draws define ``W`` at the fine nodes (``W(t_{k+1}) − W(t_k) = sqrt(|t_{k+1} − t_k|) z_k``);
    ``W`` at each coarse node is read off that path (linearly interpolated between fine nodes, which is
    exact when the coarse node is a fine node, as for dt = 5e-3 over dt = 1e-3), and the coarse draws
    are the increments over ``sqrt(|τ_{j+1} − τ_j|)``. Both grids must start and end at the same times.

    Example::

        >>> import torch
        >>> fine = time_grid(0.1, 1e-5, dt=1e-3); coarse = time_grid(0.1, 1e-5, dt=5e-3)
        >>> z = [torch.ones(1) for _ in range(len(fine) - 1)]
        >>> zc = coarsen_noise(fine, coarse, z)
        >>> len(zc), round(float(zc[0]), 4)       # five unit draws of 1e-3 = one of sqrt(5) over 5e-3
        (20, 2.2361)
    """
    if len(draws) != len(fine_grid) - 1:
        raise InputError(f"need one draw per fine step ({len(fine_grid) - 1}), got {len(draws)}")
    if abs(fine_grid[0] - coarse_grid[0]) > _NODE_TOL or abs(fine_grid[-1] - coarse_grid[-1]) > _NODE_TOL:
        raise InputError("the fine and coarse grids must span the same interval")
    u_fine = [abs(t - fine_grid[0]) for t in fine_grid]
    walk = [torch.zeros_like(draws[0])]
    for k, z in enumerate(draws):
        walk.append(walk[-1] + math.sqrt(u_fine[k + 1] - u_fine[k]) * z)

    def w_at(u: float) -> torch.Tensor:
        i = min(range(len(u_fine)), key=lambda j: abs(u_fine[j] - u))
        if abs(u_fine[i] - u) <= _NODE_TOL:
            return walk[i]
        i = max(j for j in range(len(u_fine) - 1) if u_fine[j] <= u)
        lam = (u - u_fine[i]) / (u_fine[i + 1] - u_fine[i])
        return walk[i] + lam * (walk[i + 1] - walk[i])

    u_coarse = [abs(t - coarse_grid[0]) for t in coarse_grid]
    ws = [w_at(u) for u in u_coarse]
    return [(ws[j + 1] - ws[j]) / math.sqrt(u_coarse[j + 1] - u_coarse[j]) for j in range(len(ws) - 1)]


class _Sampler:
    """One reverse process: ``run`` (the real one) and ``run_surrogate`` (a cheaper one, same noise)."""

    num_draws = 0
    nfe = 0
    surrogate_nfe = 0

    def run(self, model, x, steps, checkpoint):  # pragma: no cover - interface
        raise NotImplementedError

    def run_surrogate(self, model, x, steps, checkpoint):  # pragma: no cover - interface
        raise NotImplementedError


class _EulerMaruyama(_Sampler):
    def __init__(self, cfg: DiffPureConfig):
        self.cfg, self.sde = cfg, cfg.sde()
        self.grid = time_grid(cfg.t_star, cfg.t_end, dt=cfg.dt)
        self.coarse = time_grid(cfg.t_star, cfg.t_end, dt=cfg.surrogate_dt)
        self.num_draws = self.nfe = len(self.grid) - 1
        self.surrogate_nfe = len(self.coarse) - 1

    def run(self, model, x, steps, checkpoint):
        c = self.cfg
        return euler_maruyama(model, self.sde, x, c.t_star, c.t_end, dt=c.dt, noise=list(steps), checkpoint=checkpoint)

    def run_surrogate(self, model, x, steps, checkpoint):
        c = self.cfg
        coarse = coarsen_noise(self.grid, self.coarse, steps)
        return euler_maruyama(model, self.sde, x, c.t_star, c.t_end, dt=c.surrogate_dt, noise=coarse,
                              checkpoint=checkpoint)


class _ProbabilityFlow(_Sampler):
    def __init__(self, cfg: DiffPureConfig):
        self.cfg, self.sde = cfg, cfg.sde()
        self.nfe = len(time_grid(cfg.t_star, cfg.t_end, dt=cfg.dt)) - 1
        self.surrogate_nfe = len(time_grid(cfg.t_star, cfg.t_end, dt=cfg.surrogate_dt)) - 1

    def run(self, model, x, steps, checkpoint):
        c = self.cfg
        return probability_flow_euler(model, self.sde, x, c.t_star, c.t_end, dt=c.dt, checkpoint=checkpoint)

    def run_surrogate(self, model, x, steps, checkpoint):
        c = self.cfg
        return probability_flow_euler(model, self.sde, x, c.t_star, c.t_end, dt=c.surrogate_dt, checkpoint=checkpoint)


class _DDPM(_Sampler):
    def __init__(self, cfg: DiffPureConfig):
        self.cfg, self.schedule = cfg, cfg.schedule()
        self.k = self.schedule.index(float(cfg.t_star))
        self.num_draws, self.nfe = self.k, self.k + 1
        self.surrogate_nfe = min(cfg.surrogate_steps, self.k + 1)

    def run(self, model, x, steps, checkpoint):
        c = self.cfg
        return ddpm_ancestral(model, self.schedule, x, self.k, noise=list(steps), variance=c.ddpm_variance,
                              clip_denoised=c.clip_denoised, checkpoint=checkpoint)

    def run_surrogate(self, model, x, steps, checkpoint):
        # Deterministic DDIM on the same x_t*: the DDPM chain's noise has no coarse counterpart.
        return ddim(model, self.schedule, x, self.k, steps=self.surrogate_nfe, eta=0.0,
                    clip_denoised=self.cfg.clip_denoised, checkpoint=checkpoint)


class _DDIM(_Sampler):
    def __init__(self, cfg: DiffPureConfig):
        self.cfg, self.schedule = cfg, cfg.schedule()
        self.k = self.schedule.index(float(cfg.t_star))
        self.nfe = len(ddim_indices(self.k, cfg.ddim_steps))
        self.num_draws = self.nfe - 1 if cfg.ddim_eta > 0 else 0
        self.surrogate_nfe = min(cfg.surrogate_steps, self.nfe)

    def run(self, model, x, steps, checkpoint):
        c = self.cfg
        return ddim(model, self.schedule, x, self.k, steps=self.nfe, eta=c.ddim_eta,
                    noise=list(steps) if self.num_draws else None, clip_denoised=c.clip_denoised,
                    checkpoint=checkpoint)

    def run_surrogate(self, model, x, steps, checkpoint):
        return ddim(model, self.schedule, x, self.k, steps=self.surrogate_nfe, eta=0.0,
                    clip_denoised=self.cfg.clip_denoised, checkpoint=checkpoint)


_SAMPLER_CLASSES = {"sde": _EulerMaruyama, "ode": _ProbabilityFlow, "ddpm": _DDPM, "ddim": _DDIM}


class _TorchsdeReverseVP(nn.Module):
    """The reverse VP-SDE in torchsde's form, in the time ``s = −t`` (increasing, and exact to negate).

    ``dx = −[f − g² ∇log p](x, −s) ds + g(−s) dW_s`` with ``f − g²∇log p = −½β x + β ε̂/σ``: Euler on this
    is :func:`~robustkit.diffusion.euler_maruyama` step for step. States are flat ``[N, C·H·W]``.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model: nn.Module, sde: VPSDE, shape: tuple[int, ...]):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: its (frozen) weights get no adjoint
        self.vpsde = sde
        self.shape = shape

    def _coefficients(self, s: torch.Tensor) -> tuple[float, float, float]:
        t = -float(s)
        tt = torch.tensor(t, dtype=torch.float64)
        return t, float(self.vpsde.beta(tt)), float(self.vpsde.marginal(tt).std)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t, beta, std = self._coefficients(s)
        x = y.view(self.shape)
        eps = self.model(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
        return (0.5 * beta * x - (beta / std) * eps).flatten(1)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, beta, _ = self._coefficients(s)
        return torch.full_like(y, math.sqrt(beta))


# ------------------------------------------------------------------------------------------- purifier

class DiffPurePurifier(Purifier):
    """DiffPure's purification (module docstring): noise to t*, reverse VP-SDE, back to [0, 1].

    Args:
        score_model: a :class:`~robustkit.diffusion.ScoreModel` (``eps = model(x_t, t)``, VP scaling,
            data in [-1, 1]), e.g. ``load_score_sde(...)`` or ``load_guided_diffusion(...)``. Its weights
            are frozen in place (``requires_grad_(False)``) and it is kept in eval mode.
        config: a :class:`DiffPureConfig` (default: the paper's CIFAR-10 Linf setting).

    Attributes:
        nfe: score evaluations per purification (100 with the defaults).
        noise_mean, noise_std: ``sqrt(ᾱ_k)`` and ``sqrt(1 − ᾱ_k)`` of the forward noising.

    Traits:
        stochastic (the initial ε, and the SDE's noise); exact input gradients through :meth:`purify`
        (checkpointed), :meth:`purify_adjoint` (``sde`` only) and :meth:`purify_surrogate`.

    Shape:
        ``x [N, C, H, W]`` in [0, 1] → ``[N, C, H, W]`` (approximately in [0, 1]; see ``clamp``).

    Reference:
        Nie et al., ICML 2022, github.com/NVlabs/DiffPure (``runners/diffpure_sde.py``).

    Example::

        >>> import torch
        >>> p = DiffPurePurifier(GaussianScoreModel((3, 4, 4)), DiffPureConfig(sampler="ddim", ddim_steps=5))
        >>> p.nfe, p.purify(torch.rand(1, 3, 4, 4), torch.Generator().manual_seed(1)).shape
        (5, torch.Size([1, 3, 4, 4]))
    """

    #: EOT draws as one batch: all the noise is drawn up front by :meth:`draw_noise`, which takes DrawBlocks.
    supports_draw_blocks = True

    def __init__(self, score_model: nn.Module, config: DiffPureConfig | None = None):
        super().__init__()
        config = DiffPureConfig() if config is None else config
        if not isinstance(config, DiffPureConfig):
            raise InputError(f"config must be a DiffPureConfig, got {type(config).__name__}")
        if not isinstance(score_model, nn.Module):
            raise InputError(f"score_model must be a torch.nn.Module (a robustkit ScoreModel), got "
                             f"{type(score_model).__name__}")
        for name in ("beta_min", "beta_max"):  # adapters / registry entries that know their schedule say so
            trained = getattr(score_model, name, getattr(getattr(score_model, "registry_config", None), name, None))
            if trained is not None and abs(float(trained) - getattr(config, name)) > 1e-9:
                raise InputError(f"the score model was trained with {name}={trained}, the config says "
                                 f"{getattr(config, name)}")
        score_model.requires_grad_(False).eval()
        self.score_model = score_model
        self.config = config
        self._sampler = _SAMPLER_CLASSES[config.sampler](config)
        schedule = config.schedule()
        acp = float(schedule.alphas_cumprod64[schedule.index(float(config.t_star))])
        self.noise_mean, self.noise_std = math.sqrt(acp), math.sqrt(1.0 - acp)
        self.supports_adjoint = config.sampler == "sde"
        self.supports_surrogate = True

    # -- sizes and bookkeeping ---------------------------------------------------------------------------

    @property
    def nfe(self) -> int:
        return self._sampler.nfe

    @property
    def adjoint_nfe(self) -> int:
        # torchsde's contract check evaluates the drift once at t* before integrating.
        return self._sampler.nfe + 1

    @property
    def surrogate_nfe(self) -> int:
        return self._sampler.surrogate_nfe

    @property
    def num_noise_draws(self) -> int:
        """Standard-normal tensors a purification draws after the initial ε (``len(DiffPureNoise.steps)``)."""
        return self._sampler.num_draws

    def train(self, mode: bool = True) -> "DiffPurePurifier":
        super().train(mode)
        self.score_model.eval()  # purification has no training mode (dropout of DDPM++ stays off)
        return self

    def check_input_shape(self, input_shape: tuple[int, ...]) -> None:
        shape = getattr(self.score_model, "input_shape", None)
        if shape is None:
            return
        c, h, w = input_shape
        size = (self.config.resize, self.config.resize) if self.config.resize is not None else (h, w)
        if (c, *size) != tuple(shape):
            how = f"resized to {size[0]}×{size[1]}" if self.config.resize is not None else "as they are"
            raise InputError(f"images of shape [N, {c}, {h}, {w}] {how} do not fit the score model's "
                             f"[N, {', '.join(map(str, shape))}]"
                             + ("" if self.config.resize is not None else "; set DiffPureConfig(resize=...)"))

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        self.check_input_shape(tuple(x.shape[1:]))
        return x

    def _diffusion_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        r = self.config.resize
        return tuple(x.shape) if r is None else (x.shape[0], x.shape[1], r, r)

    # -- the pieces ----------------------------------------------------------------------------------------

    def draw_noise(self, x: torch.Tensor, generator: torch.Generator | DrawBlocks | None = None) -> DiffPureNoise:
        """All draws of one purification of ``x``, from ``generator`` (ε first, then one per step).

        Draws are made on the generator's device and moved to ``x``'s, so a CPU generator gives the same
        purification on any device. None: a fresh generator seeded from OS entropy. A :class:`DrawBlocks`:
        each block's draws from its generator, block after block (draw-major), stacked.
        """
        if isinstance(generator, DrawBlocks):
            return DiffPureNoise.cat([self.draw_noise(rows, g) for rows, g in generator.split(x)])
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        shape = self._diffusion_shape(x)

        def draw() -> torch.Tensor:
            z = torch.randn(shape, generator=generator, device=generator.device, dtype=x.dtype)
            return z.to(x.device)

        init = draw()
        return DiffPureNoise(init, tuple(draw() for _ in range(self._sampler.num_draws)))

    def diffuse(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The forward noising: ``x_t* = sqrt(ᾱ_k)(2x − 1) + sqrt(1 − ᾱ_k) noise`` (after ``resize``)."""
        if self.config.resize is not None:
            r = self.config.resize
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        if noise.shape != x.shape:
            raise InputError(f"noise must have shape {list(x.shape)}, got {list(noise.shape)}")
        return self.noise_mean * (2.0 * x - 1.0) + self.noise_std * noise

    def _finish(self, x0: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = (x0 + 1.0) * 0.5
        if self.config.resize is not None:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out.clamp(0.0, 1.0) if self.config.clamp else out

    def _check_noise(self, x: torch.Tensor, noise: DiffPureNoise) -> None:
        if not isinstance(noise, DiffPureNoise):
            raise InputError(f"noise must be a DiffPureNoise, got {type(noise).__name__}")
        if len(noise.steps) != self._sampler.num_draws:
            raise InputError(f"noise.steps must hold {self._sampler.num_draws} draws for sampler "
                             f"{self.config.sampler!r}, got {len(noise.steps)}")

    # -- purification --------------------------------------------------------------------------------------

    def purify_with_noise(self, x: torch.Tensor, noise: DiffPureNoise, *,
                          checkpoint: bool | None = None) -> torch.Tensor:
        """Deterministic purification with all randomness given (differentiable in ``x``).

        ``checkpoint`` (default ``config.checkpoint``): recompute each step's activations in the backward
        pass; gradients are identical either way.
        """
        self._check(x)
        self._check_noise(x, noise)
        return self._run(x, noise, self.config.checkpoint if checkpoint is None else bool(checkpoint))

    def _run(self, x: torch.Tensor, noise: DiffPureNoise, checkpoint: bool) -> torch.Tensor:
        x_t = self.diffuse(x, noise.init)
        x0 = self._sampler.run(self.score_model, x_t, noise.steps, checkpoint)
        return self._finish(x0, tuple(x.shape[-2:]))

    def purify_trajectory(self, x: torch.Tensor, noise: DiffPureNoise) -> PurificationTrajectory:
        """:meth:`purify_with_noise` step by step, keeping every intermediate state (differentiable).

        For attacks that read the reverse process itself (DiffAttack's deviated-reconstruction loss): the
        result's ``purified`` equals :meth:`purify_with_noise` of the same input and noise; ``states[k]`` is
        the VP state after solver step ``k`` at time ``times[k]``. Each step is its own exact, flat-memory
        segment (``config.checkpoint``), so the graph holds one state per step. ``sde`` and ``ode`` only.
        """
        self._check(x)
        self._check_noise(x, noise)
        sampler = self._sampler
        if not isinstance(sampler, (_EulerMaruyama, _ProbabilityFlow)):
            raise InputError(f"purify_trajectory needs the 'sde' or 'ode' sampler, got {self.config.sampler!r}")
        c = self.config
        grid = time_grid(c.t_star, c.t_end, dt=c.dt)
        x_t = self.diffuse(x, noise.init)
        states = []
        for k in range(len(grid) - 1):
            if isinstance(sampler, _EulerMaruyama):
                x_t = euler_maruyama(self.score_model, sampler.sde, x_t, grid[k], grid[k + 1], steps=1,
                                     noise=[noise.steps[k]], checkpoint=c.checkpoint)
            else:
                x_t = probability_flow_euler(self.score_model, sampler.sde, x_t, grid[k], grid[k + 1], steps=1,
                                             checkpoint=c.checkpoint)
            states.append(x_t)
        return PurificationTrajectory(self._finish(x_t, tuple(x.shape[-2:])), tuple(states), tuple(grid[1:]))

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify ``x`` (see the module docstring); exact gradients through checkpointed steps."""
        self._check(x)
        return self._run(x, self.draw_noise(x, generator), self.config.checkpoint)

    def purify_surrogate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> SurrogatePurification:
        """The real purification (no graph) and a coarse one with the same ε and Brownian path.

        ``sde``: Euler–Maruyama with ``surrogate_dt`` on the fine path's increments (:func:`coarsen_noise`);
        ``ode``: probability-flow Euler with ``surrogate_dt``; ``ddpm``/``ddim``: deterministic DDIM with
        ``surrogate_steps`` steps from the same ``x_t*``.
        """
        self._check(x)
        noise = self.draw_noise(x, generator)
        with torch.no_grad():
            value = self._run(x.detach(), noise, False)
        x_t = self.diffuse(x, noise.init)
        x0 = self._sampler.run_surrogate(self.score_model, x_t, noise.steps, self.config.checkpoint)
        surrogate = self._finish(x0, tuple(x.shape[-2:]))
        return SurrogatePurification(value, surrogate)

    # -- adjoint (torchsde) ----------------------------------------------------------------------------

    def _require_sde(self) -> None:
        if self.config.sampler != "sde":
            raise InputError(f"the adjoint path integrates the reverse SDE; sampler={self.config.sampler!r} has "
                             "none (use gradient='exact')")

    def brownian_motion(self, x: torch.Tensor, entropy: int):
        """A ``torchsde.BrownianInterval`` over the solve (time ``s = −t`` from −t* to −t_end) for ``x``."""
        import torchsde

        self._require_sde()
        shape = self._diffusion_shape(x)
        return torchsde.BrownianInterval(t0=-float(self.config.t_star), t1=-float(self.config.t_end),
                                         size=(shape[0], math.prod(shape[1:])), dtype=x.dtype, device=x.device,
                                         entropy=int(entropy))

    def noise_from_brownian(self, init: torch.Tensor, bm) -> DiffPureNoise:
        """The :class:`DiffPureNoise` whose step draws are ``bm``'s increments on the solver grid, so that
        :meth:`purify_with_noise` and :meth:`purify_adjoint_with` follow the same Brownian path."""
        self._require_sde()
        grid = self._sampler.grid
        steps = []
        for k in range(len(grid) - 1):
            h = grid[k] - grid[k + 1]
            steps.append((bm(-grid[k], -grid[k + 1]) / math.sqrt(h)).view(init.shape))
        return DiffPureNoise(init, tuple(steps))

    def purify_adjoint_with(self, x: torch.Tensor, init: torch.Tensor, bm) -> torch.Tensor:
        """Purify with torchsde's ``sdeint_adjoint`` (Euler forward, ``config.adjoint_method`` backward) on
        the Brownian motion ``bm`` (see :meth:`brownian_motion`); only input adjoints are integrated."""
        import torchsde

        self._require_sde()
        self._check(x)
        c = self.config
        x_t = self.diffuse(x, init)
        sde = _TorchsdeReverseVP(self.score_model, c.sde(), tuple(x_t.shape))
        ts = torch.tensor([-float(c.t_star), -float(c.t_end)], dtype=torch.float64, device=x.device)
        ys = torchsde.sdeint_adjoint(sde, x_t.flatten(1), ts, bm=bm, method="euler", adjoint_method=c.adjoint_method,
                                     dt=c.dt, adjoint_params=())
        return self._finish(ys[-1].view(x_t.shape), tuple(x.shape[-2:]))

    def purify_adjoint(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify with an adjoint backward pass (DiffPure's own gradient path; ``sampler="sde"`` only).

        Draws ε, then the Brownian motion's entropy, from ``generator``; the path differs from
        :meth:`purify`'s for the same seed (use :meth:`noise_from_brownian` to share one).
        """
        self._require_sde()
        self._check(x)
        if isinstance(generator, DrawBlocks):  # one Brownian motion per call: draws cannot share a batch
            raise InputError("the adjoint path draws one Brownian motion per call: it takes a torch.Generator, "
                             "not DrawBlocks")
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        shape = self._diffusion_shape(x)
        init = torch.randn(shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
        entropy = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator, device=generator.device))
        return self.purify_adjoint_with(x, init, self.brownian_motion(x, entropy))

    def extra_repr(self) -> str:
        c = self.config
        return f"t_star={c.t_star}, sampler={c.sampler!r}, nfe={self.nfe}, resize={c.resize}, clamp={c.clamp}"
