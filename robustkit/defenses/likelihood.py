"""Likelihood maximisation (RDC's purifier): push an input up the diffusion model's ELBO.

Two update rules (``update``), both ``N`` steps with one fresh noise level and ``ε`` per step and image:

* ``"adam"`` (default) — the released code, ``EDMEulerIntegralLM.likelihood_maximization_T1`` as the
  demo ``RDCN+TK.py`` calls it (huanranchen/DiffusionClassifier @ 8a82504): on the ``[-1, 1]`` image ``x̂``,
  ``loss = mean((D(x̂ + σε; σ) − x̂)²)`` over the batch *and* the pixels, with the target ``x̂`` not
  detached (the gradient flows through both), one ``torch.optim.Adam`` step (lr 0.1, betas (0.9, 0.999),
  eps 1e-8), then a per-image L2 projection onto radius ``adam_l2_radius`` around the input (100 on the
  ``[0, 1]`` scale as released: inert), and finally ``clamp((x̂ + 1)/2, 0, 1)``; ``σ ~ U[0.4, 0.6]``.
  The paper's reported numbers come from this code, hence the default. Not reproduced: the released
  function reseeds every global RNG with ``set_seed(1)`` on each call (the same draws every call);
  here the draws come from the caller's generator, or are passed in (``u``, ``noise``).
* ``"mifgsm"`` — the paper's text (Chen, Dong et al., ICML 2024, Sec. 3.3): minimise the *unconditional*
  diffusion loss ``ℓ(x̂) = w ‖ε_θ(x̂_t, t) − ε‖²`` over ``x̂`` with ``‖x̂ − x‖ ≤ η`` by MI-FGSM (Dong et al.,
  CVPR 2018). The repository's only MI-FGSM maximiser (``likelihood_maximization_in_expectation``) is
  never called and cannot run as released (shared specs README, official §6), so this is our reading::

    g = ∇_x̂ ℓ(x̂),   m ← μ·m + g / ‖g‖₁,   x̂ ← Π_{B(x, η) ∩ [0,1]}(x̂ − γ·sign(m))     (Linf)
                                           x̂ ← Π_{B(x, η) ∩ [0,1]}(x̂ − γ·m / ‖m‖₂)   (L2)

with η = 8/255, N = 5, μ = 1, γ = η/N. Norms are per image.

The noise level of each step (``sigma_law``), from one uniform draw ``u ∈ [0, 1)`` per step and image:

* ``"uniform"`` (default, the released demo) — ``σ = u·(σ_high − σ_low) + σ_low`` with ``[0.4, 0.6]``;
* ``"training"`` — the model's training law, by ``weighting``: ``"uniform"`` a DDPM step ``k = ⌊u T⌋`` of the
  :class:`~robustkit.diffusion.DiscreteVPSchedule` (weight 1, the DDPM loss; robustkit's U-Nets) or
  ``"edm"`` ``ln σ = P_mean + P_std Φ⁻¹(u)`` (EDM's log-normal; only 12 % of its draws fall in [0.4, 0.6]).

MI-FGSM's per-step weight is 1 (``weighting="uniform"``) or ``λ(σ)·σ²`` (``"edm"``: EDM's training loss
``λ(σ)‖D − x₀‖²`` in ε-space, since ``D − x₀ = σ(ε − ε̂)``). Any ScoreModel works with either law: a
σ is handed to it at the VP time with that σ, or to an EDM model's denoiser directly. The draws ``u`` and
``ε`` can be passed to :meth:`LikelihoodMaximizationPurifier.purify` (they are then not drawn).

Gradient modes (of :class:`~robustkit.defenses.PurifiedClassifier`): ``"bpda"`` (the paper's protocol:
identity backward) or ``"exact"``: when the input requires a gradient the inner gradients are taken
with ``create_graph=True``, so autograd differentiates through every step (for Linf the ``sign`` has zero
derivative almost everywhere, so the exact gradient flows through the projections and the ``x`` the
ball is centred on; for L2 the normalised step contributes second-order terms too; Adam's update is
written out, so its moments are differentiated as well).

Randomness comes only from the generator handed to :meth:`LikelihoodMaximizationPurifier.purify`
(never the global RNG).

Example (the bundled 8×8 digits U-Net; a fraction of a second)::

    >>> import torch, robustkit
    >>> from robustkit.diffusion import create_score_model
    >>> from robustkit.defenses import LikelihoodMaximizationPurifier
    >>> from robustkit.defenses import LikelihoodMaximizationConfig
    >>> model = create_score_model("tiny_unet.digits", pretrained=True)
    >>> x, _ = robustkit.load_dataset("digits", n_examples=3)
    >>> x_hat = LikelihoodMaximizationPurifier(model).purify(x, torch.Generator().manual_seed(0))  # released
    >>> x_hat.shape, bool(x_hat.min() >= 0 and x_hat.max() <= 1)
    (torch.Size([3, 1, 8, 8]), True)
    >>> paper = LikelihoodMaximizationPurifier(model, LikelihoodMaximizationConfig(update="mifgsm"))
    >>> bool((paper.purify(x, torch.Generator().manual_seed(0)) - x).abs().max() <= 8 / 255 + 1e-6)
    True

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

__all__ = ["LikelihoodMaximizationConfig", "LikelihoodMaximizationPurifier", "EDMTimeWeights", "edm_lambda",
           "edm_sigma_density", "edm_time_weights", "WEIGHTINGS", "SIGMA_DENSITIES"]

WeightingArg = Literal["uniform", "edm"]
WEIGHTINGS = ("uniform", "edm")
NORMS = ("Linf", "L2")
UPDATES = ("adam", "mifgsm")
SIGMA_LAWS = ("uniform", "training")
#: ``"official"``: the released code's density, with its bracket slip; ``"lognormal"``: the density as defined.
SIGMA_DENSITIES = ("official", "lognormal")


# --------------------------------------------------------------------------------------- EDM weighting

def edm_lambda(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight λ(σ) = (σ² + σ_data²) / (σ·σ_data)² (Karras et al. 2022, Table 1). Shape: any → same."""
    return (sigma * sigma + sigma_data ** 2) / (sigma * sigma_data) ** 2


def edm_sigma_density(sigma: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2, *,
                      density: str = "lognormal") -> torch.Tensor:
    """Density *over σ* of EDM's training noise levels, ``ln σ ~ N(P_mean, P_std²)`` (a log-normal).

    ``p(σ) = exp(−(ln σ − P_mean)² / (2 P_std²)) / (σ · P_std · sqrt(2π))``: the normal density of ``ln σ``
    times the Jacobian ``d ln σ / dσ = 1/σ``, so ``∫ f(σ) p(σ) dσ = E_{ln σ ~ N}[f(σ)]``. A Riemann sum over a
    σ grid with spacing Δσ therefore uses weights ``p(σ_k) Δσ`` (a sum over a ln σ grid would drop the 1/σ).

    The RDC authors' code writes the exponent as ``-(ln σ − P_mean)² / 2 * P_std²``, which Python parses as
    ``−(ln σ − P_mean)² · P_std² / 2``: P_std² multiplies instead of divides (with P_std = 1.2 the
    Gaussian in ln σ has std 1/1.2 ≈ 0.83 instead of 1.2, and the normalising constant no longer matches).
    ``density="lognormal"`` is the density as defined; ``density="official"`` reproduces the released
    expression, operation for operation (the paper's numbers were computed with it). With P_std = 1.2 the
    slip moves the ε-space weight of RDC's σ grid away from σ ≥ 1 (32 % there, against 55 %).
    Shape: any → same.
    """
    if density == "official":
        # RDC EDMDC.reset_param, as released: ``-((ln σ - P_mean) ** 2) / 2 * P_std**2``
        return 1 / (sigma * p_std * math.sqrt(2 * math.pi)) * torch.exp(
            -((torch.log(sigma) - p_mean) ** 2) / 2 * p_std ** 2)
    if density != "lognormal":
        raise InputError(f"density must be one of {SIGMA_DENSITIES}, got {density!r}")
    z = (torch.log(sigma) - p_mean) / p_std
    return torch.exp(-0.5 * z * z) / (sigma * p_std * math.sqrt(2.0 * math.pi))


@dataclass(frozen=True)
class EDMTimeWeights:
    """RDC's σ grid and weights (each ``[T]``): ``weight = lam · p_x · dt`` multiplies the per-pixel
    ``‖D(x₀ + σε; σ, y) − x₀‖²`` of each grid point (x-space; ``weight·σ²`` is the ε-space weight)."""

    sigma: torch.Tensor
    dt: torch.Tensor
    p_x: torch.Tensor
    lam: torch.Tensor
    weight: torch.Tensor


def edm_time_weights(timesteps: torch.Tensor, *, density: str = "official", p_mean: float = -1.2,
                     p_std: float = 1.2, sigma_data: float = 0.5) -> EDMTimeWeights:
    """The left-Riemann weights of RDC's EDM ELBO on the σ points ``timesteps`` (``[T + 1]``, increasing).

    ``σ_k = timesteps[k]``, ``dt_k = timesteps[k + 1] − timesteps[k]`` (k < T), ``λ = (σ² + σ_d²)/(σ σ_d)²``
    and ``weight = λ · p(σ) · dt``, in the dtype of ``timesteps`` and in the released code's order of
    operations (RDC ``EDMEulerIntegralDC.reset_param`` and ``unet_loss_without_grad``), so a float32
    ``torch.linspace(1e-4, 3, 1001)`` reproduces the released class default to float32 rounding.

    Shape: ``[T + 1]`` → each field ``[T]``.

    Example::

        >>> import torch
        >>> w = edm_time_weights(torch.linspace(1e-4, 3, 1001, dtype=torch.float64))
        >>> round(float(w.weight.sum()), 6)
        33.469047
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1 or timesteps.numel() < 2:
        raise InputError(f"timesteps must be a 1-d tensor of >= 2 σ points, got {getattr(timesteps, 'shape', timesteps)}")
    if not bool((timesteps[1:] > timesteps[:-1]).all()) or float(timesteps[0]) <= 0:
        raise InputError("timesteps must be positive and increasing")
    sigma = timesteps[:-1]
    dt = timesteps[1:] - timesteps[:-1]
    p_x = edm_sigma_density(sigma, p_mean, p_std, density=density)
    lam = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
    return EDMTimeWeights(sigma, dt, p_x, lam, lam * p_x * dt)


# --------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class LikelihoodMaximizationConfig:
    """Hyperparameters of likelihood maximisation (defaults: the released demo, see the module docstring).

    Attributes:
        update: ``"adam"`` (the released code; default) or ``"mifgsm"`` (the paper's text).
        steps: N, gradient steps (one noise level and ε each); 5 in both.
        sigma_law: ``"uniform"`` (σ ~ U[sigma_low, sigma_high], released; default) or ``"training"`` (the
            model's training law, by ``weighting``).
        sigma_low, sigma_high: the uniform law's range; 0.4, 0.6 as released.
        lr: Adam's learning rate on the ``[-1, 1]`` image; 0.1 as released.
        adam_l2_radius: Adam's per-image L2 bound around the input on the ``[0, 1]`` scale (None: none);
            100 as released (``eps=100``, i.e. 200 in ``[-1, 1]``), which never binds on 32×32 images.
        eta: MI-FGSM's ball radius around the input (pixel scale [0, 1]); 8/255.
        step_size: MI-FGSM's γ; None means η / N.
        momentum: μ of MI-FGSM; 1.0.
        norm: MI-FGSM's ``"Linf"`` (sign step, box projection) or ``"L2"`` (normalised step, ball projection).
        weighting: the training law of ``sigma_law="training"`` and MI-FGSM's loss weight: ``"uniform"``
            (DDPM) or ``"edm"``.
        num_timesteps, beta_min, beta_max: the discrete VP schedule of ``"uniform"``.
        p_mean, p_std, sigma_data: EDM's log-normal noise distribution and data std (``"edm"``).
        sigma_min, sigma_max: σ drawn from EDM's log-normal are clamped into this range (EDM's sampler range).
    """

    update: str = "adam"
    steps: int = 5
    sigma_law: str = "uniform"
    sigma_low: float = 0.4
    sigma_high: float = 0.6
    lr: float = 0.1
    adam_l2_radius: float | None = 100.0
    eta: float = 8 / 255
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
        if self.update not in UPDATES:
            raise InputError(f"update must be one of {UPDATES}, got {self.update!r}")
        if self.sigma_law not in SIGMA_LAWS:
            raise InputError(f"sigma_law must be one of {SIGMA_LAWS}, got {self.sigma_law!r}")
        if not (isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool) and self.eta >= 0
                and math.isfinite(self.eta)):
            raise InputError(f"eta must be a finite number >= 0, got {self.eta!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise InputError(f"steps must be an int >= 0, got {self.steps!r}")
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise InputError(f"step_size must be positive (or None for eta / steps), got {self.step_size!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        if self.adam_l2_radius is not None and not self.adam_l2_radius > 0:
            raise InputError(f"adam_l2_radius must be positive or None, got {self.adam_l2_radius!r}")
        if not 0 < self.sigma_low <= self.sigma_high:
            raise InputError(f"need 0 < sigma_low <= sigma_high, got {self.sigma_low!r}, {self.sigma_high!r}")
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
        """MI-FGSM's step size γ (η / N unless given)."""
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
        config: a :class:`LikelihoodMaximizationConfig` (default: the released demo's Adam update).

    Traits:
        stochastic (one random (σ, ε) per step and image); ``nfe`` = N (each a forward and a backward pass of the
        network); gradients ``"bpda"`` (paper) or ``"exact"`` through :class:`PurifiedClassifier`.

    Shape:
        ``x [N, C, H, W]`` in ``[0, 1]`` → ``[N, C, H, W]`` in ``[0, 1]`` (``"mifgsm"``: within η of ``x``).

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
        shape = getattr(self.score_model, "input_shape", None)
        if shape is not None and tuple(shape) != tuple(input_shape):
            raise InputError(f"the score model takes [N, {', '.join(map(str, shape))}] images, the classifier "
                             f"[N, {', '.join(map(str, input_shape))}]")

    def levels(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map uniform draws ``u ∈ [0, 1)`` to noise levels by ``sigma_law``: ``(σ, t)`` (float64, VP time t).

        Shape: ``u [N]`` → ``σ [N]``, ``t [N]``.
        """
        cfg = self.config
        if cfg.sigma_law == "uniform":
            # the released σ = u·(t_max − t_min) + t_min, in u's dtype (RDC's uniform_noise)
            sigma = (u * (cfg.sigma_high - cfg.sigma_low) + cfg.sigma_low).to(torch.float64)
            return sigma, self._sde.t_from_sigma(sigma)
        if cfg.weighting == "uniform":
            k = (u.to(torch.float64) * cfg.num_timesteps).long().clamp(0, cfg.num_timesteps - 1)
            return self._s[k] / self._a[k], self._t[k].to(torch.float64)
        z = torch.special.ndtri(u.to(torch.float64))
        sigma = torch.exp(cfg.p_mean + cfg.p_std * z).clamp(cfg.sigma_min, cfg.sigma_max)
        return sigma, self._sde.t_from_sigma(sigma)

    def denoise(self, x0: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``D(x0 + σ ε; σ)`` of the unconditional model, for ``x0`` in ``[-1, 1]``: an EDM model's denoiser
        directly, any other ScoreModel at the VP time with that σ (``D = x_σ − σ ε̂(a x_σ, t)``).

        Shape: ``x0, noise [N, C, H, W]``, ``sigma, t [N]`` (x0's dtype and device) → ``[N, C, H, W]``.
        """
        x_noisy = x0 + _per_image(sigma) * noise
        if hasattr(self.score_model, "denoise"):
            return self.score_model.denoise(x_noisy, sigma, None)
        a = torch.rsqrt(1.0 + sigma * sigma)
        return x_noisy - _per_image(sigma) * self.score_model(_per_image(a) * x_noisy, t, None)

    def diffusion_loss(self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, s: torch.Tensor, w: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
        """Per-image unconditional loss ``w ‖ε_θ(a·(2x − 1) + s·ε, t) − ε‖²``. Shape: ``x [N, C, H, W]`` → ``[N]``."""
        x_t = _per_image(a) * (2.0 * x - 1.0) + _per_image(s) * noise
        eps = self.score_model(x_t, t, None)
        return w * (eps - noise).pow(2).flatten(1).sum(1)

    def _draws(self, x: torch.Tensor, generator: torch.Generator | None, u: torch.Tensor | None,
               noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The uniforms ``[N_steps, N]`` and noises ``[N_steps, N, C, H, W]`` of a call: given, or drawn."""
        steps, n = self.config.steps, x.shape[0]
        if (u is None) != (noise is None):
            raise InputError("pass both u and noise (the draws of every step), or neither")
        if u is None:
            if generator is None:
                generator = torch.Generator()
                generator.seed()  # OS entropy; the global RNG is left alone
            draws = [(torch.rand(n, generator=generator), torch.randn(x.shape, generator=generator))
                     for _ in range(steps)]
            u = torch.stack([d[0] for d in draws]) if draws else torch.zeros(0, n)
            noise = torch.stack([d[1] for d in draws]) if draws else torch.zeros(0, *x.shape)
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (steps, n):
            raise InputError(f"u must have shape [{steps}, {n}] (steps, images), got {list(getattr(u, 'shape', []))}")
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (steps, *x.shape):
            raise InputError(f"noise must have shape [{steps}, {', '.join(map(str, x.shape))}], got "
                             f"{list(getattr(noise, 'shape', []))}")
        if bool(((u < 0) | (u >= 1)).any()):
            raise InputError("u must lie in [0, 1)")
        return u, noise.to(x.device, x.dtype)

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None, *, u: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Likelihood-maximised ``x`` (``[0, 1]``). ``u`` ``[N_steps, N]`` and ``noise`` ``[N_steps, N, C, H, W]``
        are the uniform level draws and ε of every step: drawn from ``generator`` (OS entropy if None;
        never the global RNG) unless given."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise InputError(f"x must be a tensor [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
        u, noise = self._draws(x, generator, u, noise)
        create_graph = torch.is_grad_enabled() and x.requires_grad
        if self.config.update == "adam":
            return self._adam(x, u, noise, create_graph)
        return self._mifgsm(x, u, noise, create_graph)

    def _adam(self, x: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, create_graph: bool) -> torch.Tensor:
        cfg = self.config
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, as released
        x0 = 2.0 * x - 1.0
        z = x0
        m = torch.zeros_like(x0)
        v = torch.zeros_like(x0)
        for k in range(cfg.steps):
            sigma, t = (c.to(x.device, x.dtype) for c in self.levels(u[k]))
            with torch.enable_grad():
                zz = z if create_graph else z.detach().requires_grad_(True)
                # F.mse_loss(D, x) as released: mean over batch and pixels, the target not detached
                loss = (self.denoise(zz, sigma, t, noise[k]) - zz).pow(2).mean()
                (g,) = torch.autograd.grad(loss, zz, create_graph=create_graph)
            if not create_graph:
                g = g.detach()
            # torch.optim.Adam's step, written out so that it can be differentiated
            m = torch.lerp(m, g, 1 - beta1)
            v = v * beta2 + (1 - beta2) * g * g
            bc1, bc2 = 1 - beta1 ** (k + 1), 1 - beta2 ** (k + 1)
            # (v clamped at 1e-30 only so sqrt's derivative stays finite where g = 0; eps = 1e-8 dominates there)
            z = z - (cfg.lr / bc1) * m / (v.clamp_min(1e-30).sqrt() / math.sqrt(bc2) + eps)
            if cfg.adam_l2_radius is not None:
                radius = 2.0 * cfg.adam_l2_radius  # the [0, 1] radius on the [-1, 1] scale
                d = z - x0
                dist = _per_image(d.flatten(1).norm(dim=1))
                z = torch.where(dist > radius, x0 + d / dist.clamp_min(1e-12) * radius, z)
        return ((z + 1) / 2).clamp(0.0, 1.0)

    def _mifgsm(self, x: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, create_graph: bool) -> torch.Tensor:
        cfg = self.config
        gamma = cfg.gamma
        x_hat = x
        m = torch.zeros_like(x)
        lo, hi = (x - cfg.eta).clamp(min=0.0), (x + cfg.eta).clamp(max=1.0)
        for k in range(cfg.steps):
            sigma, t = self.levels(u[k])
            a = torch.rsqrt(1.0 + sigma * sigma)
            w = edm_lambda(sigma, cfg.sigma_data) * sigma * sigma if cfg.weighting == "edm" \
                else torch.ones_like(sigma)  # λ‖D − x0‖² = λσ²‖ε̂ − ε‖²
            t, a, s, w = (c.to(x.device, x.dtype) for c in (t, a, sigma * a, w))
            with torch.enable_grad():
                xh = x_hat if create_graph else x_hat.detach().requires_grad_(True)
                loss = self.diffusion_loss(xh, t, a, s, w, noise[k]).sum()
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
