"""RDC: a diffusion model as a classifier (``DiffusionClassifier``), behind likelihood maximisation.

:class:`DiffusionClassifier` turns a class-conditional noise predictor into a classifier through Bayes'
rule on the diffusion ELBO (Chen, Dong et al., ICML 2024, Eq. 5–7)::

    logit_y(x) = −L_y(x) + log π_y,     L_y(x) = Σ_k w_k ‖ε_θ(a_k x₀ + s_k ε_k, t_k, y) − ε_k‖²,   x₀ = 2x − 1

summed over *every* step k of a fixed grid (no sampling of t), with ONE noise ε_k per step shared by all
classes (and by default by all images of the call; per-image noise can be passed in): common random
numbers, so class differences are not swamped by noise differences. Two grids (``weighting``):

* ``"uniform"`` — the T steps of the :class:`~robustkit.diffusion.DiscreteVPSchedule` with equal weights (the
  DDPM loss; robustkit's CFG-trained U-Nets ``tiny_unet.digits`` / ``unet.cifar10``);
* ``"edm"`` — RDC's σ grid: ``σ_k`` the first T of T + 1 evenly spaced points in [σ_min, σ_max] = [1e-4, 3],
  ``dt_k = σ_{k+1} − σ_k``, and ``λ(σ_k) p(σ_k) dt_k ‖D − x₀‖²`` a left Riemann sum of
  ``∫ λ(σ) p(σ) E‖D(x₀ + σε; σ, y) − x₀‖² dσ``, EDM's own training objective
  (:func:`~robustkit.defenses.likelihood.edm_time_weights`). ``sigma_density`` picks p: ``"official"``
  (default) the released expression with its bracket slip, on the released float32 grid, which the
  paper's numbers used; ``"lognormal"`` the log-normal density as defined, on an exact float64 grid
  (see :func:`~robustkit.defenses.likelihood.edm_sigma_density`). A model with an EDM denoiser
  (:class:`~robustkit.diffusion.edm.EDMScoreModel`) is evaluated in σ-space as released (``‖D − x₀‖²``);
  any other at the VP time with the same σ in ε-space (``D − x₀ = σ(ε − ε̂)``: weight ``λ p dt σ²``).

Scale (``reduction``): ``"mean"`` (default, the released code's) averages the squared error over the C·H·W
values and, on the uniform grid, over the steps; ``"sum"`` sums both (the ELBO itself, the exact Bayes
posterior). They differ only by a constant factor (the softmax temperature): the prediction is the same,
but with ``"sum"`` the softmax of a confident model saturates in float32 and cross-entropy gradients vanish
(15 of 16 ``tiny_rdc.digits`` images gave an exactly zero CE input gradient), so CE attacks see nothing.

Cost and speed options (``mode``, chosen at construction):

* ``"full"`` — all K classes on the evaluated grid: K·T' network calls per image. ``stride`` > 1 keeps every
  stride-th step (T' = T/stride, the weights scaled by T/T' so logits keep the full sum's scale).
* ``"adaptive"`` — all classes on ``coarse_steps`` steps, then only the ``keep`` best classes on
  ``fine_steps`` (nested, evenly spaced). Logits are the per-class estimates ``(T/n) Σ w ℓ`` on each class's
  own steps; eliminated classes are capped below the refined ones so the prediction is the refined winner.
* ``"guaranteed"`` — the same prediction as ``"full"``, by branch and bound: every term is ≥ 0, so a partial
  sum (scaled by T/T' like the full one) is a *lower* bound on the full L_y. No useful *upper* bound on the
  remaining terms exists for a general network (‖ε̂ − ε‖ is unbounded), so we never eliminate on estimates:
  the current leader c gets its full, exact L_c; a rival y is dropped only when its partial sum already
  exceeds L_c (then L_y ≥ partial > L_c); otherwise it gets more steps, and if it completes with
  L_y < L_c it becomes the leader. Ties in the full sum are broken like ``argmax`` (lower index). A relative
  slack of ``1e-4`` on the test absorbs float rounding between differently composed network batches.
  Its cost depends on how clearly x is classified (measured in ``bench/bench_rdc.py``); ``forward_passes``
  declares the worst case K·T'.

Each class's evaluated steps are a prefix of one coarse-to-fine order of the grid, and every sum is taken
over a ``[N, K, T']`` table of terms in grid order, so a class evaluated on all steps gets the full mode's
sum in the same order (terms may differ in the last bits only because network batches are composed
differently; the guaranteed mode's slack covers that).

Memory and gradients: rows (image, class, step) are evaluated ``chunk_size`` at a time (None: the per-device
size measured in ``bench/bench_rdc_chunk.py``, :data:`CHUNK_SIZES`); when a gradient is
needed each chunk is wrapped in :func:`torch.utils.checkpoint.checkpoint`, so only the chunk's per-row
scalars are kept and its activations are recomputed in the backward pass: memory is bounded by one chunk,
not by T'. The gradient is the exact gradient of the computed logits (``traits.gradient = "exact"``).

Randomness: ``seed=None`` draws one seed per forward from torch's global RNG (so ``torch.manual_seed`` and
the benchmark's seeding make it reproducible, as in :class:`~robustkit.defenses.PurifiedClassifier`);
``seed=int`` owns a private generator; ``fixed_noise=True`` (needs a seed) re-seeds it every forward, so the
classifier is a deterministic function (``traits.stochastic = False``).

Example (the bundled digits U-Net, every 50th of its 1000 steps; about a second)::

    >>> import torch, robustkit
    >>> from robustkit.diffusion import create_score_model
    >>> from robustkit.defenses import DiffusionClassifier, DiffusionClassifierConfig
    >>> dc = DiffusionClassifier(create_score_model("tiny_unet.digits", pretrained=True),
    ...                          DiffusionClassifierConfig(stride=50), seed=0)
    >>> dc.traits.forward_passes, dc.traits.gradient
    (200, 'exact')
    >>> x, y = robustkit.load_dataset("digits", n_examples=4)
    >>> dc(x).shape
    torch.Size([4, 10])

Reference:
    Chen, Dong, Zhu, Su et al., "Robust Classification via a Single Diffusion Model", ICML 2024,
    github.com/huanranchen/DiffusionClassifier; Li et al., "Your Diffusion Model is Secretly a Zero-Shot
    Classifier", ICCV 2023 (common noise across classes); Karras et al., NeurIPS 2022 (EDM weighting).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..classifier import Classifier, DefenseTraits, check_images
from ..diffusion.schedule import VPSDE, DiscreteVPSchedule
from ..errors import InputError
from ..utils import check_positive_int, replace_checked
from .likelihood import (SIGMA_DENSITIES, WEIGHTINGS, LikelihoodMaximizationConfig, LikelihoodMaximizationPurifier,
                         edm_time_weights)
from .purification import PurifiedClassifier, PurifiedClassifierConfig, module_name

__all__ = ["DiffusionClassifier", "DiffusionClassifierConfig", "RDCScoreModels", "RobustDiffusionClassifier",
           "RDCConfig", "create_rdc", "timestep_grid", "default_chunk_size", "CHUNK_SIZES", "MODES"]

MODES = ("full", "adaptive", "guaranteed")
REDUCTIONS = ("mean", "sum")
#: Rows per network batch when ``chunk_size=None``, per device type, chosen by measurement
#: (``bench/bench_rdc_chunk.py``; docs/results/performance.md, "RDC chunk size"): on CPU every size from
#: 256 to 2048 rows took 0.63-0.70x the released loop's time, 512 the least. No GPU has been measured yet.
CHUNK_SIZES = {"cpu": 512}


def default_chunk_size(device: torch.device | str) -> int:
    """The measured chunk size for a device type (:data:`CHUNK_SIZES`); a device type without a measurement
    gets the CPU's (measure it with ``bench/bench_rdc_chunk.py --device ...`` and add it there)."""
    return CHUNK_SIZES.get(torch.device(device).type, CHUNK_SIZES["cpu"])


@dataclass(frozen=True)
class DiffusionClassifierConfig:
    """Hyperparameters of :class:`DiffusionClassifier` (defaults: the released code's full sum over T = 1000).

    Attributes:
        weighting: ``"uniform"`` (DDPM steps, w = 1) or ``"edm"`` (σ grid, EDM's λ·p weight).
        num_timesteps: T, the grid size (DDPM steps, or σ points).
        stride: evaluate every stride-th step only (T' = ceil(T / stride)); 1 is the paper.
        beta_min, beta_max: the VP schedule (of the model's training).
        sigma_min, sigma_max, p_mean, p_std, sigma_data: the EDM grid and weight.
        sigma_density: the EDM weight's density over σ: ``"official"`` (default; the released code's, with
            its bracket slip, on its float32 grid) or ``"lognormal"`` (as defined, float64 grid).
        reduction: ``"mean"`` (default; the released code's scale: mean over the C·H·W values and, on the
            uniform grid, over the steps) or ``"sum"`` (the ELBO's sums: exact Bayes). Only the logits'
            scale (softmax temperature) differs.
        log_prior: log π_y per class added to the logits (None: uniform prior, nothing added).
        mode: ``"full"`` | ``"adaptive"`` | ``"guaranteed"`` (module docstring).
        coarse_steps, fine_steps, keep: the adaptive schedule (steps out of T'; classes kept).
        block_steps: steps added per round to each undecided class in ``"guaranteed"`` mode.
        chunk_size: rows (image, class, step) per network batch; None: :func:`default_chunk_size` of the
            input's device (measured).
    """

    weighting: str = "uniform"
    num_timesteps: int = 1000
    stride: int = 1
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 1e-4
    sigma_max: float = 3.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    sigma_density: str = "official"
    reduction: str = "mean"
    log_prior: tuple[float, ...] | None = None
    mode: str = "full"
    coarse_steps: int = 25
    fine_steps: int = 250
    keep: int = 2
    block_steps: int = 50
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise InputError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.reduction not in REDUCTIONS:
            raise InputError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.sigma_density not in SIGMA_DENSITIES:
            raise InputError(f"sigma_density must be one of {SIGMA_DENSITIES}, got {self.sigma_density!r}")
        for name in ("num_timesteps", "stride", "coarse_steps", "fine_steps", "keep", "block_steps"):
            check_positive_int(name, getattr(self, name))
        if self.chunk_size is not None:
            check_positive_int("chunk_size", self.chunk_size)
        if self.num_timesteps < 2:
            raise InputError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if not (0 < self.sigma_min < self.sigma_max and self.p_std > 0 and self.sigma_data > 0):
            raise InputError("need 0 < sigma_min < sigma_max, p_std > 0 and sigma_data > 0")
        if self.log_prior is not None:
            object.__setattr__(self, "log_prior", tuple(float(v) for v in self.log_prior))
        VPSDE(self.beta_min, self.beta_max)  # validates β
        if self.weighting == "uniform":
            DiscreteVPSchedule(self.beta_min, self.beta_max, self.num_timesteps)  # validates T against β_max

    @property
    def evaluated_steps(self) -> int:
        """T', the steps of the grid actually evaluated."""
        return len(range(0, self.num_timesteps, self.stride))


@dataclass(frozen=True)
class _Grid:
    t: torch.Tensor      # [T'] VP time handed to the model
    a: torch.Tensor      # [T'] mean coefficient of x_t
    s: torch.Tensor      # [T'] noise coefficient of x_t
    w: torch.Tensor      # [T'] ε-space weight of ‖ε̂ − ε‖², already scaled by T / T' (and 1/T for a "mean")
    sigma: torch.Tensor  # [T'] σ = s / a
    w_x: torch.Tensor    # [T'] σ-space weight of ‖D − x₀‖² (= w / σ²), scaled alike


def timestep_grid(config: DiffusionClassifierConfig) -> _Grid:
    """The evaluated grid of a config, float64, each field ``[T']`` (see the module docstring)."""
    n = config.num_timesteps
    if config.weighting == "uniform":
        sched = DiscreteVPSchedule(config.beta_min, config.beta_max, n)
        t = sched.timesteps.to(torch.float64)
        a = torch.sqrt(sched.alphas_cumprod64)
        s = torch.sqrt(1.0 - sched.alphas_cumprod64)
        sigma = s / a
        # the released VP classifier averages over the steps (nn.MSELoss over t and pixels)
        w = torch.full((n,), 1.0 / n if config.reduction == "mean" else 1.0, dtype=torch.float64)
        w_x = w / (sigma * sigma)
    else:
        if config.sigma_density == "official":
            # the released grid: torch.linspace(1e-4, 3, T + 1) in float32, weights computed in float32
            grid = torch.linspace(config.sigma_min, config.sigma_max, n + 1)
        else:
            grid = torch.linspace(config.sigma_min, config.sigma_max, n + 1, dtype=torch.float64)
        ew = edm_time_weights(grid, density=config.sigma_density, p_mean=config.p_mean, p_std=config.p_std,
                              sigma_data=config.sigma_data)
        sigma, w_x = ew.sigma.to(torch.float64), ew.weight.to(torch.float64)
        t = VPSDE(config.beta_min, config.beta_max).t_from_sigma(sigma)
        a = 1.0 / torch.sqrt(1.0 + sigma * sigma)
        s = sigma * a
        w = w_x * sigma * sigma
    keep = torch.arange(0, n, config.stride)
    scale = n / keep.numel()
    return _Grid(t[keep], a[keep], s[keep], w[keep] * scale, sigma[keep], w_x[keep] * scale)


def _coarse_to_fine(n: int, first: Sequence[int]) -> torch.Tensor:
    """An order of ``range(n)`` starting with ``first``, then ever finer strided passes."""
    seen = [False] * n
    order: list[int] = []
    for i in first:
        if not seen[i]:
            seen[i] = True
            order.append(i)
    stride = 1 << max(0, (n - 1).bit_length())
    while stride >= 1:
        for i in range(stride // 2 if stride > 1 else 0, n, stride):
            if not seen[i]:
                seen[i] = True
                order.append(i)
        stride //= 2
    return torch.tensor(order, dtype=torch.long)


def _even(n: int, k: int) -> list[int]:
    """k evenly spaced positions in range(n) (centred in their cells)."""
    k = min(k, n)
    return [int((j + 0.5) * n / k) for j in range(k)]


class DiffusionClassifier(Classifier):
    """A class-conditional diffusion model as a classifier: ``logit_y = −Σ_k w_k ‖ε̂_θ(x_k, t_k, y) − ε_k‖²``.

    Args:
        score_model: a conditional noise predictor ``ε = model(x_t, t, y)`` (a
            :class:`~robustkit.diffusion.ScoreModel` with ``num_classes``); frozen in place, eval mode.
        config: a :class:`DiffusionClassifierConfig`.
        seed: None (one seed per forward from the global RNG) or an int (a private generator).
        fixed_noise: re-seed the private generator every forward (deterministic; needs ``seed``).

    Attributes:
        last_nfe: network rows evaluated by the last call (for benchmarks).

    Traits:
        ``stochastic`` unless ``fixed_noise``; ``gradient="exact"`` (checkpointed chunks);
        ``forward_passes``: K·T' (full, and the worst case of guaranteed), K·coarse + keep·(fine − coarse)
        (adaptive) — network evaluations per image.

    Shape:
        ``x [N, *score_model.input_shape]`` in ``[0, 1]`` → logits ``[N, K]``.

    Reference:
        Chen, Dong et al., ICML 2024, github.com/huanranchen/DiffusionClassifier.
    """

    def __init__(self, score_model: nn.Module, config: DiffusionClassifierConfig | None = None, *,
                 seed: int | None = None, fixed_noise: bool = False):
        if not isinstance(score_model, nn.Module):
            raise InputError(f"score_model must be a ScoreModel, got {type(score_model).__name__}")
        k = getattr(score_model, "num_classes", None)
        shape = getattr(score_model, "input_shape", None)
        if not isinstance(k, int) or k < 2 or shape is None:
            raise InputError("score_model must be a class-conditional ScoreModel (num_classes >= 2, input_shape)")
        config = DiffusionClassifierConfig() if config is None else config
        if not isinstance(config, DiffusionClassifierConfig):
            raise InputError(f"config must be a DiffusionClassifierConfig, got {type(config).__name__}")
        if config.log_prior is not None and len(config.log_prior) != k:
            raise InputError(f"log_prior needs {k} values (one per class), got {len(config.log_prior)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        if fixed_noise and seed is None:
            raise InputError("fixed_noise=True needs an int seed")
        n_eval = config.evaluated_steps
        if config.mode == "adaptive":
            fine = min(config.fine_steps, n_eval)
            coarse = len(set(_even(fine, min(config.coarse_steps, fine))))
            keep = min(config.keep, k)
            passes = k * coarse + keep * (fine - coarse)
        else:
            passes = k * n_eval
        super().__init__(k, shape, DefenseTraits(stochastic=not fixed_noise, gradient="exact",
                                                 forward_passes=passes, generative=True))
        score_model.requires_grad_(False).eval()
        self.score_model = score_model
        self.config = config
        self.seed = seed
        self.fixed_noise = bool(fixed_noise)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._grid = timestep_grid(config)
        # RDC's EDM setting is evaluated in σ-space through the denoiser, as released
        self._sigma_space = config.weighting == "edm" and callable(getattr(score_model, "denoise", None))
        if config.mode == "adaptive":
            fine_pos = _even(n_eval, config.fine_steps)
            coarse_pos = [fine_pos[j] for j in sorted(set(_even(len(fine_pos), config.coarse_steps)))]
            self._order = _coarse_to_fine(n_eval, coarse_pos + fine_pos)
            self._n_coarse, self._n_fine = len(coarse_pos), len(fine_pos)
        else:
            coarse_pos = _even(n_eval, config.coarse_steps)
            self._order = _coarse_to_fine(n_eval, coarse_pos)
            self._n_coarse, self._n_fine = len(coarse_pos), n_eval
        self._predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = {
            "full": self._full, "adaptive": self._adaptive, "guaranteed": self._guaranteed}[config.mode]
        self.last_nfe = 0
        self.name = f"diffusion_classifier({module_name(score_model)})"

    def train(self, mode: bool = True) -> "DiffusionClassifier":
        super().train(mode)
        self.score_model.eval()  # classification has no training mode
        return self

    # -- noise ------------------------------------------------------------------------------------------

    def _call_generator(self) -> torch.Generator:
        if self.generator is not None:
            if self.fixed_noise:
                self.generator.manual_seed(self.seed)
            return self.generator
        return torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (), dtype=torch.int64)))

    def draw_noise(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ε per evaluated step, ``[T', C, H, W]`` (CPU, float32), shared by all classes and images.

        (:meth:`losses` also takes per-image noise ``[N, T', C, H, W]``, as the released code draws it.)
        """
        gen = generator if generator is not None else self._call_generator()
        return torch.randn((self.config.evaluated_steps, *self.input_shape), generator=gen)

    # -- the terms ---------------------------------------------------------------------------------------

    def _chunk_terms(self, x0: torch.Tensor, noise: torch.Tensor, img: torch.Tensor, cls: torch.Tensor,
                     pos: torch.Tensor) -> torch.Tensor:
        g = self._grid
        dt = x0.dtype
        eps = noise[img, pos] if noise.dim() == 5 else noise[pos]
        pos = pos.cpu()  # the grid tables live on the CPU
        if self._sigma_space:
            # as released: D(x₀ + σε; σ, y) against x₀, weighted by λ p dt
            sigma = g.sigma[pos].to(x0.device, dt)
            target = x0[img]
            err = (self.score_model.denoise(target + sigma.view(-1, 1, 1, 1) * eps, sigma, cls) - target).pow(2)
            w = g.w_x[pos].to(x0.device, dt)
        else:
            t = g.t[pos].to(x0.device, dt)
            a = g.a[pos].to(x0.device, dt).view(-1, 1, 1, 1)
            s = g.s[pos].to(x0.device, dt).view(-1, 1, 1, 1)
            err = (self.score_model(a * x0[img] + s * eps, t, cls) - eps).pow(2)
            w = g.w[pos].to(x0.device, dt)
        err = err.flatten(1).mean(1) if self.config.reduction == "mean" else err.flatten(1).sum(1)
        return w * err

    def terms(self, x: torch.Tensor, noise: torch.Tensor, img: torch.Tensor, cls: torch.Tensor,
              pos: torch.Tensor) -> torch.Tensor:
        """Weighted terms ``w_k ‖ε̂(x_k, t_k, y) − ε_k‖²`` of rows ``(img, cls, pos)``, chunked (and
        checkpointed when a gradient is needed). Shape: index tensors ``[R]`` → ``[R]``."""
        x0 = 2.0 * x - 1.0
        noise = noise.to(x.device, x.dtype)
        img, cls, pos = (v.to(x.device) for v in (img, cls, pos))
        need_grad = torch.is_grad_enabled() and x0.requires_grad
        out = []
        size = self.config.chunk_size or default_chunk_size(x.device)
        for lo in range(0, img.numel(), size):
            sl = slice(lo, lo + size)
            if need_grad:
                out.append(checkpoint(self._chunk_terms, x0, noise, img[sl], cls[sl], pos[sl], use_reentrant=False))
            else:
                out.append(self._chunk_terms(x0, noise, img[sl], cls[sl], pos[sl]))
        self.last_nfe += int(img.numel())
        return torch.cat(out) if out else x0.new_zeros(0)

    def _fill(self, x, noise, table, img, cls, pos):
        if img.numel() == 0:
            return table
        return table.index_put((img.to(x.device), cls.to(x.device), pos.to(x.device)),
                               self.terms(x, noise, img, cls, pos))

    # -- modes -------------------------------------------------------------------------------------------

    def _rows(self, n: int, classes: torch.Tensor, positions: torch.Tensor):
        """All (image, class, position) rows, image-major."""
        i, c, p = torch.meshgrid(torch.arange(n), classes, positions, indexing="ij")
        return i.reshape(-1), c.reshape(-1), p.reshape(-1)

    def _full(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, k, tp = x.shape[0], self.num_classes, self.config.evaluated_steps
        table = x.new_zeros(n, k, tp)
        table = self._fill(x, noise, table, *self._rows(n, torch.arange(k), torch.arange(tp)))
        return -table.sum(-1)

    def _estimates(self, table: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Per-(image, class) estimate of L: (T'/n) × the partial sum over the n evaluated steps."""
        tp = self.config.evaluated_steps
        return table.sum(-1) * (tp / counts.clamp_min(1).to(table.dtype))

    def _adaptive(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.num_classes
        tp = self.config.evaluated_steps
        table = x.new_zeros(n, k, tp)
        coarse = self._order[: self._n_coarse]
        table = self._fill(x, noise, table, *self._rows(n, torch.arange(k), coarse))
        counts = torch.full((n, k), self._n_coarse, dtype=torch.long)
        keep = min(self.config.keep, k)
        with torch.no_grad():
            kept = self._estimates(table, counts.to(x.device)).topk(keep, dim=1, largest=False).indices.cpu()
        extra = self._order[self._n_coarse: self._n_fine]
        if extra.numel():
            i = torch.arange(n).view(n, 1, 1).expand(n, keep, extra.numel())
            c = kept.view(n, keep, 1).expand(n, keep, extra.numel())
            p = extra.view(1, 1, -1).expand(n, keep, extra.numel())
            table = self._fill(x, noise, table, i.reshape(-1), c.reshape(-1), p.reshape(-1))
            counts.scatter_(1, kept, self._n_fine)
        logits = -self._estimates(table, counts.to(x.device))
        refined = torch.zeros(n, k, dtype=torch.bool)
        refined.scatter_(1, kept, True)
        refined = refined.to(x.device)
        # Cap eliminated classes just below the weakest refined class: the prediction is the refined winner.
        floor = logits.masked_fill(~refined, float("inf")).amin(1, keepdim=True)
        capped = torch.minimum(logits, floor - floor.detach().abs() * 1e-6 - 1e-12)
        return torch.where(refined, logits, capped)

    def _guaranteed(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.num_classes
        tp = self.config.evaluated_steps
        order = self._order
        table = x.new_zeros(n, k, tp)
        n0 = self._n_coarse
        table = self._fill(x, noise, table, *self._rows(n, torch.arange(k), order[:n0]))
        counts = torch.full((n, k), n0, dtype=torch.long)
        with torch.no_grad():
            leader = self._estimates(table, counts.to(x.device)).argmin(1).cpu()
        # The leader's full, exact loss.
        rest = order[n0:]
        i = torch.arange(n).repeat_interleave(rest.numel())
        table = self._fill(x, noise, table, i, leader.repeat_interleave(rest.numel()), rest.repeat(n))
        counts[torch.arange(n), leader] = tp
        done = torch.zeros(n, k, dtype=torch.bool)
        done[torch.arange(n), leader] = True
        slack = 1e-4
        while True:
            with torch.no_grad():
                # The grid weights already carry T / T', so a partial sum bounds the full one from below.
                partial = table.sum(-1).detach().cpu().double()
            best = partial[torch.arange(n), leader]
            # Complete rivals: exact comparison (ties go to the lower index, like argmax of the logits).
            complete = (counts == tp) & ~done
            for ii, yy in complete.nonzero().tolist():
                done[ii, yy] = True
                if partial[ii, yy] < best[ii] or (partial[ii, yy] == best[ii] and yy < int(leader[ii])):
                    leader[ii] = yy
                    best[ii] = partial[ii, yy]
            # Sound elimination: partial sums of non-negative terms bound the full sum from below.
            dropped = partial > best.view(-1, 1) * (1 + slack) + 1e-12
            done |= dropped & (counts < tp)
            active = ~done
            if not bool(active.any()):
                break
            rows_i, rows_c, rows_p = [], [], []
            for ii, yy in active.nonzero().tolist():
                c0 = int(counts[ii, yy])
                p = order[c0: c0 + self.config.block_steps]
                rows_i.append(torch.full((p.numel(),), ii, dtype=torch.long))
                rows_c.append(torch.full((p.numel(),), yy, dtype=torch.long))
                rows_p.append(p)
                counts[ii, yy] = c0 + p.numel()
            table = self._fill(x, noise, table, torch.cat(rows_i), torch.cat(rows_c), torch.cat(rows_p))
        logits = -self._estimates(table, counts.to(x.device))
        # Incomplete classes were dropped with partial > L_leader, and their estimate ≥ partial: they stay below.
        win = torch.zeros(n, k, dtype=torch.bool, device=x.device)
        win[torch.arange(n), leader.to(x.device)] = True
        floor = logits.masked_fill(~win, float("inf")).amin(1, keepdim=True)
        capped = torch.minimum(logits, floor - floor.detach().abs() * 1e-6 - 1e-12)
        return torch.where(win | (counts == tp).to(x.device), logits, capped)

    # -- public ------------------------------------------------------------------------------------------

    def losses(self, x: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The configured mode's ``L_y(x)`` estimates ``[N, K]`` for validated ``x``, with given or drawn noise.

        ``noise``: ``[T', C, H, W]`` (one ε per evaluated step, shared by the images) or ``[N, T', C, H, W]``
        (one per image and step, as the released code draws it); drawn from ``generator`` (or the
        classifier's own randomness) when None.
        """
        check_images(x, self.input_shape)
        tp = self.config.evaluated_steps
        if noise is None:
            noise = self.draw_noise(generator)
        shapes = ((tp, *self.input_shape), (x.shape[0], tp, *self.input_shape))
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) not in shapes:
            dims = ", ".join(map(str, self.input_shape))
            raise InputError(f"noise must have shape [{tp}, {dims}] or [{x.shape[0]}, {tp}, {dims}], got "
                             f"{list(getattr(noise, 'shape', []))}")
        self.last_nfe = 0
        return -self._predict(x, noise)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.last_nfe = 0
        out = self._predict(x, self.draw_noise())
        if self.config.log_prior is not None:
            out = out + torch.tensor(self.config.log_prior, dtype=out.dtype, device=out.device)
        return out

    def extra_repr(self) -> str:
        return f"config={self.config}, seed={self.seed}, fixed_noise={self.fixed_noise}, traits={self.traits}"


# ------------------------------------------------------------------------------------------------- RDC

class RDCScoreModels(nn.Module):
    """The networks of one RDC setting: the conditional classifier model and the unconditional purifier model.

    For a CFG-trained U-Net both are the same module (``y=None`` is its null label); RDC's EDM setting has
    two checkpoints. ``classifier_config`` / ``purifier_config`` are the setting's hyperparameters.
    """

    def __init__(self, conditional: nn.Module, unconditional: nn.Module,
                 classifier_config: DiffusionClassifierConfig, purifier_config: LikelihoodMaximizationConfig):
        super().__init__()
        self.conditional = conditional
        self.unconditional = unconditional
        self.classifier_config = classifier_config
        self.purifier_config = purifier_config


@dataclass(frozen=True)
class RDCConfig(PurifiedClassifierConfig):
    """What a :class:`RobustDiffusionClassifier` is (stored in benchmark records as ``defense_config``): the
    purified-classifier fields plus ``classifier_config``, the :class:`DiffusionClassifierConfig` (its
    variants: ``reduction``, ``sigma_density``, ...; ``purifier_config`` holds likelihood maximisation's)."""

    classifier_config: DiffusionClassifierConfig | None = None


class RobustDiffusionClassifier(PurifiedClassifier):
    """RDC: ``DiffusionClassifier(LikelihoodMaximizationPurifier(x))`` as one defended classifier.

    Args:
        conditional: the class-conditional ScoreModel of the diffusion classifier.
        unconditional: the unconditional ScoreModel of likelihood maximisation (default: ``conditional``
            with ``y=None``, i.e. a CFG-trained model's null label).
        classifier_config, purifier_config: the two parts' hyperparameters (defaults: the released code's).
        gradient: ``"bpda"`` through likelihood maximisation (the paper's protocol; default) or ``"exact"``.
        seed: None (per-forward seeds from the global RNG) or an int: private generators for both parts.
        fixed_noise: the diffusion classifier's noise is fixed (needs ``seed``); the purifier stays random.

    Traits:
        stochastic (likelihood maximisation draws (t, ε)); gradient ``"bpda"`` or ``"exact"``;
        forward_passes = N (purifier) + the classifier's (K·T' = 10,000 with the defaults).

    Shape:
        ``x [N, C, H, W]`` in ``[0, 1]`` → logits ``[N, K]``.

    Reference:
        Chen, Dong et al., ICML 2024, github.com/huanranchen/DiffusionClassifier.

    Example::

        >>> import torch, robustkit
        >>> from robustkit.defenses import create_rdc
        >>> rdc = create_rdc("tiny_rdc.digits", pretrained=True, seed=0, stride=100)
        >>> rdc.traits.stochastic, rdc.traits.gradient, rdc.traits.forward_passes
        (True, 'bpda', 105)
        >>> x, _ = robustkit.load_dataset("digits", n_examples=2)
        >>> rdc(x).shape
        torch.Size([2, 10])
    """

    def __init__(self, conditional: nn.Module, unconditional: nn.Module | None = None, *,
                 classifier_config: DiffusionClassifierConfig | None = None,
                 purifier_config: LikelihoodMaximizationConfig | None = None, gradient: str = "bpda",
                 seed: int | None = None, fixed_noise: bool = False):
        if gradient not in ("bpda", "exact"):
            raise InputError(f"gradient must be 'bpda' or 'exact' for RDC, got {gradient!r}")
        purifier = LikelihoodMaximizationPurifier(conditional if unconditional is None else unconditional,
                                                  purifier_config)
        clf_seed = None if seed is None else seed + 1
        classifier = DiffusionClassifier(conditional, classifier_config, seed=clf_seed, fixed_noise=fixed_noise)
        super().__init__(purifier, classifier, gradient=gradient, seed=seed)
        fields = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(PurifiedClassifierConfig)}
        self.config = RDCConfig(**fields, classifier_config=classifier.config)


def create_rdc(name: str, *, pretrained: bool = False, score_model: nn.Module | str | os.PathLike | None = None,
               score_checkpoint: str | os.PathLike | None = None, gradient: str | None = None,
               seed: int | None = None, fixed_noise: bool = False,
               purifier_options: dict | None = None, **classifier_overrides) -> RobustDiffusionClassifier:
    """Build a registered RDC defense (``rdc.cifar10``, ``rdc_unet.cifar10``, ``tiny_rdc.digits``), eval mode.

    Args:
        name: a registered RDC name (:func:`robustkit.list_defenses` ``("*rdc*")``).
        pretrained: load the published weights (missing: :class:`~robustkit.CheckpointError` naming the file).
        score_model: a class-conditional :class:`~robustkit.diffusion.ScoreModel` with a null label (CFG
            training), a registered score-model name (e.g. ``"dit_tiny.digits"``) or a training run's
            folder (see :func:`~robustkit.defenses.create_diffpure`), replacing the entry's
            models: it classifies and, with ``y=None``, drives likelihood maximisation. It must take the
            entry's image shape; the VP schedule and weighting stay the entry's (override them with
            ``beta_min=``, ``weighting=``, ...). The record names it.
        score_checkpoint: weights for the named ``score_model`` (see :func:`~robustkit.defenses.create_diffpure`).
        gradient: ``"bpda"`` (default, the paper's) or ``"exact"``.
        seed, fixed_noise: see :class:`RobustDiffusionClassifier`.
        purifier_options: :class:`~robustkit.defenses.LikelihoodMaximizationConfig` fields replacing the
            entry's, e.g. ``{"update": "mifgsm", "sigma_law": "training"}`` (the paper's text).
        **classifier_overrides: :class:`DiffusionClassifierConfig` fields, e.g. ``mode="adaptive"``, ``stride=10``,
            ``reduction="sum"``, ``sigma_density="lognormal"``.
    """
    from .registry import builder_entry, resolve_score_model, stamp

    entry = builder_entry(name, ("RDC",), "an RDC", pretrained)
    if "classifier" in classifier_overrides:
        raise InputError(f"{name} classifies with its diffusion model (Bayes' rule over class-conditional "
                         "losses); it takes no classifier")
    unknown = sorted(set(classifier_overrides) - {f.name for f in dataclasses.fields(DiffusionClassifierConfig)})
    if unknown:
        raise InputError(f"unknown argument(s) {', '.join(unknown)}: create_rdc takes pretrained, score_model, "
                         "score_checkpoint, gradient, seed, fixed_noise and DiffusionClassifierConfig fields")
    purifier_options = dict(purifier_options or {})
    unknown = sorted(set(purifier_options) - {f.name for f in dataclasses.fields(LikelihoodMaximizationConfig)})
    if unknown:
        raise InputError(f"unknown purifier option(s) {', '.join(unknown)}: purifier_options takes "
                         "LikelihoodMaximizationConfig fields")
    replacement = resolve_score_model(name, score_model, score_checkpoint, pretrained)
    if replacement is not None:
        _check_rdc_score_model(name, replacement, entry.config.input_shape)
    # with a replacement the entry's weights are not loaded: only its configs are used
    models = entry.factory(pretrained and replacement is None)
    conditional, unconditional = ((models.conditional, models.unconditional) if replacement is None
                                  else (replacement, None))
    cfg = models.classifier_config
    if classifier_overrides:
        cfg = replace_checked(cfg, **classifier_overrides)
    rdc = RobustDiffusionClassifier(conditional, unconditional, classifier_config=cfg,
                                    purifier_config=dataclasses.replace(models.purifier_config, **purifier_options),
                                    gradient=gradient or entry.config.gradient, seed=seed, fixed_noise=fixed_noise)
    return stamp(rdc, name, entry.config, pretrained)


def _check_rdc_score_model(name: str, model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """A replacement RDC score model classifies (class-conditional), purifies unconditionally (a null label)
    and takes the entry's images."""
    shape = getattr(model, "input_shape", None)
    if shape is None or tuple(shape) != tuple(input_shape):
        raise InputError(f"{name} classifies [N, {', '.join(map(str, input_shape))}] images; the score model takes "
                         f"{'an unknown shape' if shape is None else '[N, ' + ', '.join(map(str, shape)) + ']'}")
    k = getattr(model, "num_classes", None)
    if not isinstance(k, int) or k < 2:
        raise InputError(f"{name} needs a class-conditional score model (num_classes >= 2) to classify by Bayes' "
                         f"rule; {module_name(model)} has num_classes={k!r}")
    if getattr(model, "null_label", None) is None:
        raise InputError(f"{name}'s likelihood maximisation runs the score model with y=None: it needs a null "
                         f"label (classifier-free-guidance training); "
                         f"{module_name(model)} has none")
