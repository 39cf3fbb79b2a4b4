"""Likelihood maximisation (RDC's purifier): push an input up the diffusion model's ELBO inside a small ball.

The purifier minimises the *unconditional* diffusion loss ``ℓ(x̂) = w ‖ε_θ(x̂_t, t) − ε‖²`` of the input
over ``x̂`` with ``‖x̂ − x‖ ≤ η`` (Chen, Dong et al., ICML 2024, Sec. 3.3, "likelihood maximisation"):
``N`` steps, one fresh ``(t, ε)`` sample per step, MI-FGSM momentum (Dong et al., CVPR 2018)::

    g = ∇_x̂ ℓ(x̂),   m ← μ·m + g / ‖g‖₁,   x̂ ← Π_{B(x, η) ∩ [0,1]}(x̂ − γ·sign(m))     (Linf)
                                           x̂ ← Π_{B(x, η) ∩ [0,1]}(x̂ − γ·m / ‖m‖₂)   (L2)

with the paper's defaults η = 8/255, N = 5, μ = 1, γ = η/N. Norms are per image.

Two ways to draw the one sample per step (``weighting``):

* ``"uniform"`` — a DDPM step ``k`` uniform in ``[0, T)`` of the :class:`~robustkit.diffusion.DiscreteVPSchedule`
  and weight 1 (the DDPM training loss; robustkit's U-Nets);
* ``"edm"`` — ``ln σ ~ N(P_mean, P_std²)`` and weight ``λ(σ)·σ²`` (EDM's training loss ``λ(σ)‖D − x₀‖²``
  written in ε-space, since ``D − x₀ = σ(ε − ε̂)``; the EDM networks of RDC's CIFAR-10 setting).

Gradient modes (of :class:`~robustkit.defenses.PurifiedClassifier`): ``"bpda"`` (the paper's protocol:
identity backward) or ``"exact"``: when the input requires a gradient the inner gradients are taken
with ``create_graph=True``, so autograd differentiates through every step (for Linf the ``sign`` has zero
derivative almost everywhere, so the exact gradient flows through the projections and the ``x`` the
ball is centred on; for L2 the normalised step contributes second-order terms too).

Randomness comes only from the generator handed to :meth:`LikelihoodMaximizationPurifier.purify`
(never the global RNG).

Example (the bundled 8×8 digits U-Net; a fraction of a second)::

    >>> import torch, robustkit
    >>> from robustkit.diffusion import create_score_model
    >>> from robustkit.defenses import LikelihoodMaximizationPurifier
    >>> purifier = LikelihoodMaximizationPurifier(create_score_model("tiny_unet.digits", pretrained=True))
    >>> x, _ = robustkit.load_dataset("digits", n_examples=3)
    >>> x_hat = purifier.purify(x, torch.Generator().manual_seed(0))
    >>> bool((x_hat - x).abs().max() <= 8 / 255 + 1e-6), x_hat.shape
    (True, torch.Size([3, 1, 8, 8]))

Reference:
    Chen, Dong, Zhu, Su et al., "Robust Classification via a Single Diffusion Model", ICML 2024,
    github.com/huanranchen/DiffusionClassifier; Dong et al., "Boosting Adversarial Attacks with Momentum",
    CVPR 2018 (MI-FGSM); Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
    Models", NeurIPS 2022 (λ(σ), p(σ)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..diffusion.schedule import VPSDE, DiscreteVPSchedule
from ..errors import InputError
from .purification import Purifier

__all__ = ["LikelihoodMaximizationConfig", "LikelihoodMaximizationPurifier", "edm_lambda", "edm_sigma_density",
           "WEIGHTINGS"]

WeightingArg = Literal["uniform", "edm"]
WEIGHTINGS = ("uniform", "edm")
NORMS = ("Linf", "L2")


# --------------------------------------------------------------------------------------- EDM weighting

def edm_lambda(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight λ(σ) = (σ² + σ_data²) / (σ·σ_data)² (Karras et al. 2022, Table 1). Shape: any → same."""
    return (sigma * sigma + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm_sigma_density(sigma: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """Density *over σ* of EDM's training noise levels, ``ln σ ~ N(P_mean, P_std²)`` (a log-normal).

    ``p(σ) = exp(−(ln σ − P_mean)² / (2 P_std²)) / (σ · P_std · sqrt(2π))``: the normal density of ``ln σ``
    times the Jacobian ``d ln σ / dσ = 1/σ``, so ``∫ f(σ) p(σ) dσ = E_{ln σ ~ N}[f(σ)]``. A Riemann sum over a
    σ grid with spacing Δσ therefore uses weights ``p(σ_k) Δσ`` (a sum over a ln σ grid would drop the 1/σ).

    The RDC authors' code writes the exponent as ``-(ln σ − P_mean)² / 2 * P_std²``, which Python parses as
    ``−(ln σ − P_mean)² · P_std² / 2``: P_std² multiplies instead of divides (with P_std = 1.2 the
    Gaussian in ln σ has std 1/1.2 ≈ 0.83 instead of 1.2, and the normalising constant no longer matches).
    We implement the density as defined. Shape: any → same.
    """
    z = (torch.log(sigma) - p_mean) / p_std
    return torch.exp(-0.5 * z * z) / (sigma * p_std * math.sqrt(2.0 * math.pi))


# --------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class LikelihoodMaximizationConfig:
    """Hyperparameters of likelihood maximisation (defaults: the paper's CIFAR-10 setting).

    Attributes:
        eta: radius of the ball around the input (pixel scale [0, 1]); 8/255.
        steps: N, gradient steps (one (t, ε) sample each); 5.
        step_size: γ; None means η / N.
        momentum: μ of MI-FGSM; 1.0.
        norm: ``"Linf"`` (sign step, box projection) or ``"L2"`` (normalised step, ball projection).
        weighting: how (t, ε) is drawn and weighted: ``"uniform"`` or ``"edm"`` (module docstring).
        num_timesteps, beta_min, beta_max: the discrete VP schedule of ``"uniform"``.
        p_mean, p_std, sigma_data: EDM's log-normal noise distribution and data std (``"edm"``).
        sigma_min, sigma_max: σ drawn for ``"edm"`` are clamped into this range (EDM's sampler range).
    """

    eta: float = 8 / 255
    steps: int = 5
    step_size: float | None = None
    momentum: float = 1.0
    norm: str = "Linf"
    weighting: str = "uniform"
    num_timesteps: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def __post_init__(self) -> None:
        if not (isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool) and self.eta >= 0
                and math.isfinite(self.eta)):
            raise InputError(f"eta must be a finite number >= 0, got {self.eta!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise InputError(f"steps must be an int >= 0, got {self.steps!r}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise InputError(f"step_size must be positive (or None for eta / steps), got {self.step_size!r}")
        if not self.momentum >= 0:
            raise InputError(f"momentum must be >= 0, got {self.momentum!r}")
        if self.norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not (0 < self.sigma_min < self.sigma_max and self.p_std > 0 and self.sigma_data > 0):
            raise InputError("need 0 < sigma_min < sigma_max, p_std > 0 and sigma_data > 0")
        DiscreteVPSchedule(self.beta_min, self.beta_max, self.num_timesteps)  # validates the schedule

    @property
    def gamma(self) -> float:
        """The step size γ (η / N unless given)."""
        if self.step_size is not None:
            return float(self.step_size)
        return float(self.eta) / self.steps if self.steps else 0.0


# ------------------------------------------------------------------------------------------- purifier

def _per_image(v: torch.Tensor) -> torch.Tensor:
    """``[N]`` → ``[N, 1, 1, 1]`` for broadcasting over images."""
    return v.view(-1, *([1] * 3))


class LikelihoodMaximizationPurifier(Purifier):
    """RDC's likelihood maximisation as a robustkit :class:`~robustkit.defenses.Purifier`.

    Args:
        score_model: an *unconditional* noise predictor ``ε = model(x_t, t, None)`` (a
            :class:`~robustkit.diffusion.ScoreModel`; a CFG-trained U-Net uses its null label, an EDM
            unconditional checkpoint via :class:`~robustkit.diffusion.edm.EDMScoreModel`). Its weights are
            frozen in place (``requires_grad_(False)``) and it is kept in eval mode.
        config: a :class:`LikelihoodMaximizationConfig` (default: the paper's).

    Traits:
        stochastic (one random (t, ε) per step); ``nfe`` = N (each a forward and a backward pass of the
        network); gradients ``"bpda"`` (paper) or ``"exact"`` through :class:`PurifiedClassifier`.

    Shape:
        ``x [N, C, H, W]`` in ``[0, 1]`` → ``[N, C, H, W]`` in ``[0, 1]``, within η of ``x``.

    Reference:
        Chen, Dong et al., ICML 2024 (RDC), github.com/huanranchen/DiffusionClassifier.
    """

    stochastic = True

    def __init__(self, score_model: nn.Module, config: LikelihoodMaximizationConfig | None = None):
        super().__init__()
        if not isinstance(score_model, nn.Module):
            raise InputError(f"score_model must be a torch.nn.Module (a ScoreModel), got {type(score_model).__name__}")
        if config is None:
            config = LikelihoodMaximizationConfig()
        if not isinstance(config, LikelihoodMaximizationConfig):
            raise InputError(f"config must be a LikelihoodMaximizationConfig, got {type(config).__name__}")
        score_model.requires_grad_(False).eval()
        self.score_model = score_model
        self.config = config
        sched = DiscreteVPSchedule(config.beta_min, config.beta_max, config.num_timesteps)
        # Tables of the discrete schedule (float64 → float32 at use): time handed to the model, sqrt(ᾱ), sqrt(1 − ᾱ).
        self._t = sched.timesteps.clone()
        self._a = torch.sqrt(sched.alphas_cumprod64)
        self._s = torch.sqrt(1.0 - sched.alphas_cumprod64)
        self._sde = VPSDE(config.beta_min, config.beta_max)

    @property
    def nfe(self) -> int:
        return self.config.steps

    def train(self, mode: bool = True) -> "LikelihoodMaximizationPurifier":
        super().train(mode)
        self.score_model.eval()  # the purifier has no training mode
        return self

    def check_input_shape(self, input_shape: tuple[int, ...]) -> None:
        shape = getattr(self.score_model, "image_shape", None)
        if shape is not None and tuple(shape) != tuple(input_shape):
            raise InputError(f"the score model takes [N, {', '.join(map(str, shape))}] images, the classifier "
                             f"[N, {', '.join(map(str, input_shape))}]")

    def _sample(self, n: int, generator: torch.Generator, like: torch.Tensor):
        """One (t, a, s, w) per image for one step, drawn from ``generator`` (CPU) and moved to ``like``."""
        cfg = self.config
        if cfg.weighting == "uniform":
            k = torch.randint(0, cfg.num_timesteps, (n,), generator=generator)
            t, a, s = self._t[k], self._a[k], self._s[k]
            w = torch.ones(n, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            sigma = torch.exp(cfg.p_mean + cfg.p_std * z).clamp(cfg.sigma_min, cfg.sigma_max)
            t = self._sde.t_from_sigma(sigma)
            a = 1.0 / torch.sqrt(1.0 + sigma * sigma)
            s = sigma * a
            w = edm_lambda(sigma, cfg.sigma_data) * sigma * sigma  # λ‖D − x0‖² = λσ²‖ε̂ − ε‖²
        return tuple(v.to(like.device, like.dtype) for v in (t, a, s, w))

    def diffusion_loss(self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, s: torch.Tensor, w: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
        """Per-image unconditional loss ``w ‖ε_θ(a·(2x − 1) + s·ε, t) − ε‖²``. Shape: ``x [N, C, H, W]`` → ``[N]``."""
        x_t = _per_image(a) * (2.0 * x - 1.0) + _per_image(s) * noise
        eps = self.score_model(x_t, t, None)
        return w * (eps - noise).pow(2).flatten(1).sum(1)

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise InputError(f"x must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        cfg = self.config
        if generator is None:
            generator = torch.Generator()
            generator.seed()  # OS entropy; the global RNG is left alone
        create_graph = torch.is_grad_enabled() and x.requires_grad
        gamma = cfg.gamma
        n = x.shape[0]
        x_hat = x
        m = torch.zeros_like(x)
        lo, hi = (x - cfg.eta).clamp(min=0.0), (x + cfg.eta).clamp(max=1.0)
        for _ in range(cfg.steps):
            t, a, s, w = self._sample(n, generator, x)
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            with torch.enable_grad():
                xh = x_hat if create_graph else x_hat.detach().requires_grad_(True)
                loss = self.diffusion_loss(xh, t, a, s, w, noise).sum()
                (g,) = torch.autograd.grad(loss, xh, create_graph=create_graph)
            if not create_graph:
                g = g.detach()
            # MI-FGSM: accumulate L1-normalised gradients per image (Dong et al. 2018, Eq. 6).
            m = cfg.momentum * m + g / _per_image(g.abs().flatten(1).sum(1).clamp_min(1e-12))
            if cfg.norm == "Linf":
                x_hat = torch.minimum(torch.maximum(x_hat - gamma * m.sign(), lo), hi)
            else:
                step = m / _per_image(m.flatten(1).norm(dim=1).clamp_min(1e-12))
                delta = x_hat - gamma * step - x
                norm = _per_image(delta.flatten(1).norm(dim=1))
                delta = delta * torch.clamp(cfg.eta / norm.clamp_min(1e-12), max=1.0)
                x_hat = (x + delta).clamp(0.0, 1.0)
        return x_hat

    def extra_repr(self) -> str:
        return f"config={self.config}"
