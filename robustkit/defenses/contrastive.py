"""Contrastive-guided purification: DiffPure's reverse SDE steered by a contrastive loss on the classifier.

Bai et al. (ICML 2024) add a guidance term to DiffPure's noise prediction (their Eq. 8 in our notation):

    ε̃(x_k, t_k) = ε̂(x_k, t_k) + λ ∇_{x_k} ℓ(x_k, x_{k−1}),        λ = 500,

where ``x_{k−1}`` and ``x_k`` are two successive states of the Euler–Maruyama solve. The loss ``ℓ`` is a
contrastive loss on embeddings ``z = head(classifier.logits((x + 1)/2))``: the previous and the current
state of the *same* image are the positive pair, the other images of the batch are the negatives.
Since ``score = −ε̃/σ``, adding ``+λ∇ℓ`` to ε moves the state *down* the loss: successive states of one
image are pulled together in the classifier's (projected) output space and pushed away from the other
images'. The guided Euler–Maruyama step is DiffPure's step plus ``−β(t_k) h / σ(t_k) · λ∇ℓ``; we take
DiffPure's step from :func:`~robustkit.diffusion.euler_maruyama` unchanged and add that term.

The loss (``loss="debiased"``, the paper's) is the debiased hard-negative contrastive loss of Robinson
et al. (ICLR 2021, Eqs. 3–5), for each of the 2B anchors ``a`` of ``[z_prev; z_cur]`` with its positive
``p`` and the ``M = 2B − 2`` other embeddings as negatives, ``s(u, v) = exp(cos(u, v)/T)``::

    w_j  = s(a, n_j)^β / mean_j s(a, n_j)^β                 (importance weights of the hard negatives)
    N_g  = max( (Σ_j w_j s(a, n_j) − τ⁺ M s(a, p)) / (1 − τ⁺),  M e^{−1/T} )
    ℓ    = mean over anchors of −log( s(a, p) / (s(a, p) + N_g) )

With τ⁺ = 0 and β = 0 it is InfoNCE / NT-Xent (``loss="infonce"``). Defaults τ⁺ 0.1, β 1, T 1.

Head and gradients. ``online_head=False`` (default): the projection head is fixed (seeded init, no
training), so the guidance is a pure function of ``(x_k, x_{k−1})`` and :meth:`purify` is one exact
autograd graph. When a graph is being recorded, ``∇ℓ`` is taken with ``create_graph=True`` so the
attack's backward pass differentiates the guidance itself (second-order terms: Hessian-vector products
of the classifier and head). Cost per guided step: two classifier forwards, one backward, and in the
attack's backward a double backward through them. With ``checkpoint`` (DiffPure's config, on by default)
the guidance is checkpointed like the score-network step (``_CheckpointedGuidance``): its graph is
rebuilt in the backward pass instead of being kept for all ~100 steps, with the same gradient.
Precision: λ = 500 makes the guided trajectory amplify rounding. In float32, on ``unet.cifar10`` +
``resnet56.cifar10``, purified images differ from float64 ones (same noise) by up to 0.075 and the input
gradient has cosine 0.90 with float64's; plain DiffPure agrees to 3e-7 and cosine 1.0
(``bench/bench_contrastive_precision.py``). Attack in float64 when that matters.
``online_head=True`` is the paper's own code: the head is re-initialised (same seed) at the start of
every purification and trained online with Adam (lr 0.01), one step per guided solver step. The
guidance then depends on the head's training trajectory, which we do not differentiate: it enters the
graph as a constant, so the input gradient is DiffPure's with the guidance frozen — a *surrogate*
gradient, and :class:`ContrastivePurifiedClassifier` declares ``gradient="surrogate"``.

Batch dependence. The negatives are the other images of the batch, so an image's purification depends
on what it is purified with (a batch of one gets no guidance at all: ``M = 0``). With
``PurifiedClassifier(n_samples > 1)`` the copies of one image are each other's negatives. Evaluate and
attack with the batch composition you report. The purifier (when it guides at all) and the classifier
built on it declare ``batch_dependent`` in their traits, so the harness attacks and re-evaluates each
shard as one batch and counts an attack's queries on a subset of it (``partial_batch_queries``:
pyautoattack's APGD attacks only the points not yet broken, so it sees fewer negatives).

Randomness: exactly DiffPure's (one ``torch.Generator``: ε, then one draw per step); the guidance and
the head draw nothing (the head is initialised from its own seeded generator). With ``λ = 0`` the
purification is DiffPure's, bit for bit.

Example (Gaussian score model, a linear classifier on 4×4 images; 5 Euler steps)::

    >>> import torch, torch.nn as nn
    >>> import robustkit
    >>> from robustkit.defenses import ContrastiveGuidedPurifier, DiffPureConfig, GaussianScoreModel
    >>> clf = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), input_shape=(1, 4, 4))
    >>> p = ContrastiveGuidedPurifier(GaussianScoreModel((1, 4, 4)), clf, DiffPureConfig(dt=0.02))
    >>> p.guided_steps, p.guidance.guidance_scale
    (3, 500.0)
    >>> x = torch.rand(4, 1, 4, 4)
    >>> a = p.purify(x, torch.Generator().manual_seed(0)); b = p.purify(x, torch.Generator().manual_seed(0))
    >>> a.shape, torch.equal(a, b)
    (torch.Size([4, 1, 4, 4]), True)

Reference:
    Bai et al., "Diffusion Models Demand Contrastive Guidance for Adversarial Purification to Advance",
    ICML 2024, github.com/tenghuilee/ContrastDiffPurification (``src/contrastive_guided_diffusion.py``).
    Robinson et al., "Contrastive Learning with Hard Negative Samples", ICLR 2021 (the debiased loss).
    Chuang et al., "Debiased Contrastive Learning", NeurIPS 2020 (τ⁺).
    Nie et al., ICML 2022 (DiffPure).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..classifier import Classifier
from ..diffusion.solvers import euler_maruyama
from ..errors import InputError
from ..utils import check_positive_int, replace_checked
from .diffpure import DiffPureConfig, DiffPureNoise, DiffPurePurifier
from .purification import PurifiedClassifier

__all__ = ["CONTRASTIVE_LOSSES", "ContrastiveGuidanceConfig", "ContrastiveGuidedPurifier",
           "ContrastivePurifiedClassifier", "ContrastiveScoreModel", "ProjectionHead",
           "create_contrastive_purification", "debiased_contrastive_loss", "info_nce_loss"]

LossArg = Literal["debiased", "infonce"]
CONTRASTIVE_LOSSES = ("debiased", "infonce")


# ---------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ContrastiveGuidanceConfig:
    """The guidance's hyperparameters; defaults are the paper's (Bai et al. 2024, CIFAR-10).

    Attributes:
        guidance_scale: λ in ``ε̃ = ε̂ + λ∇ℓ`` (500). 0 turns the guidance off (DiffPure exactly).
        loss: ``"debiased"`` (Robinson et al.'s hard-negative loss, the paper's) or ``"infonce"``.
        tau_plus: τ⁺, the class prior of false negatives (0.1); in ``[0, 1)``.
        beta: β, the hardness concentration of the negatives' importance weights (1.0); ``>= 0``.
        temperature: T of ``exp(cos/T)`` (1.0).
        start_step: the first solver step (0-based) that is guided; step ``k`` contrasts ``x_k`` with
            ``x_{k−1}``, so ``>= 1`` (2: the official code's ``drift_counter_min``).
        online_head: train the head online during each purification (the official code); the input
            gradient is then not exact (module docstring).
        head_lr: Adam's learning rate for the online head (0.01).
        head_hidden: hidden width of the head (None: ``2 · num_classes``, as the official head).
        head_seed: seed of the head's initialisation (also its re-initialisation per purification).
    """

    guidance_scale: float = 500.0
    loss: LossArg = "debiased"
    tau_plus: float = 0.1
    beta: float = 1.0
    temperature: float = 1.0
    start_step: int = 2
    online_head: bool = False
    head_lr: float = 0.01
    head_hidden: int | None = None
    head_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("guidance_scale", "tau_plus", "beta", "temperature", "head_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        if self.guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.loss not in CONTRASTIVE_LOSSES:
            raise InputError(f"loss must be one of {CONTRASTIVE_LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.tau_plus < 1.0:
            raise InputError(f"tau_plus must be in [0, 1), got {self.tau_plus}")
        if self.beta < 0:
            raise InputError(f"beta must be >= 0, got {self.beta}")
        if self.temperature <= 0 or self.head_lr <= 0:
            raise InputError(f"temperature and head_lr must be positive, got {self.temperature}, {self.head_lr}")
        for name in ("start_step", "head_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"{name} must be an int, got {v!r}")
        if self.start_step < 1:
            raise InputError(f"start_step must be >= 1 (step k contrasts x_k with x_(k-1)), got {self.start_step}")
        check_positive_int("head_hidden", self.head_hidden, none_ok=True)
        if not isinstance(self.online_head, bool):
            raise InputError(f"online_head must be a bool, got {self.online_head!r}")


# ------------------------------------------------------------------------------------------------ losses

def _check_pair(z_prev: torch.Tensor, z_cur: torch.Tensor) -> None:
    if not (isinstance(z_prev, torch.Tensor) and isinstance(z_cur, torch.Tensor)):
        raise InputError("embeddings must be tensors")
    if z_prev.dim() != 2 or z_prev.shape != z_cur.shape:
        raise InputError(f"embeddings must be two [B, D] tensors of one shape, got {list(z_prev.shape)} and "
                         f"{list(z_cur.shape)}")


def _similarities(z_prev: torch.Tensor, z_cur: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s(a, p)`` per anchor ``[2B]`` and ``s(a, n_j)`` ``[2B, 2B − 2]`` (anchor and its positive left out)."""
    b = z_prev.shape[0]
    z = F.normalize(torch.cat([z_prev, z_cur], 0), dim=1)
    sim = torch.exp(z @ z.T / temperature)                              # [2B, 2B]
    idx = torch.arange(2 * b, device=z.device)
    partner = (idx + b) % (2 * b)                                       # the other state of the same image
    pos = sim[idx, partner]
    keep = torch.ones(2 * b, 2 * b, dtype=torch.bool, device=z.device)
    keep[idx, idx] = False
    keep[idx, partner] = False
    return pos, sim[keep].view(2 * b, 2 * b - 2)


def debiased_contrastive_loss(z_prev: torch.Tensor, z_cur: torch.Tensor, *, tau_plus: float = 0.1, beta: float = 1.0,
                              temperature: float = 1.0) -> torch.Tensor:
    """Robinson et al.'s debiased hard-negative contrastive loss of the pairs ``(z_prev[i], z_cur[i])``.

    Formula in the module docstring; symmetric (all 2B embeddings are anchors). A batch of one has no
    negatives (``M = 0``) and gives 0, as does InfoNCE.

    Shape:
        ``z_prev, z_cur``: ``[B, D]``; returns a scalar.

    Example::

        >>> import torch
        >>> z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        >>> a = debiased_contrastive_loss(z, z + 0.1, tau_plus=0.0, beta=0.0)
        >>> torch.allclose(a, info_nce_loss(z, z + 0.1))
        True
    """
    _check_pair(z_prev, z_cur)
    pos, neg = _similarities(z_prev, z_cur, temperature)
    m = neg.shape[1]
    if m == 0:
        return (pos * 0.0).sum()  # no negatives: the loss is log(1) = 0 (keeps the graph)
    imp = neg.pow(beta) if beta != 0 else torch.ones_like(neg)
    reweighted = (imp * neg).sum(1) / imp.mean(1)
    ng = (reweighted - tau_plus * m * pos) / (1.0 - tau_plus)
    ng = ng.clamp(min=m * math.exp(-1.0 / temperature))  # N_g's theoretical minimum (Robinson et al. Eq. 5)
    return -torch.log(pos / (pos + ng)).mean()


def info_nce_loss(z_prev: torch.Tensor, z_cur: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """InfoNCE / NT-Xent of the pairs ``(z_prev[i], z_cur[i])`` against the rest of the batch (symmetric).

    Shape:
        ``z_prev, z_cur``: ``[B, D]``; returns a scalar.
    """
    _check_pair(z_prev, z_cur)
    pos, neg = _similarities(z_prev, z_cur, temperature)
    return -torch.log(pos / (pos + neg.sum(1))).mean()


# -------------------------------------------------------------------------------------------------- head

class ProjectionHead(nn.Module):
    """A residual two-layer projection of logits: ``z = l + W₂ silu(W₁ l + b₁)``.

    Initialised from its own seeded generator (uniform ``±1/sqrt(fan_in)``, PyTorch's Linear bound),
    never from the global RNG; :meth:`reset` restores that initialisation.

    Shape:
        ``[N, num_classes]`` → ``[N, num_classes]``.
    """

    def __init__(self, num_classes: int, hidden: int, seed: int = 0):
        super().__init__()
        self.num_classes, self.hidden, self.seed = int(num_classes), int(hidden), int(seed)
        self.fc1 = nn.Linear(self.num_classes, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.num_classes, bias=False)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        for p, fan_in in ((self.fc1.weight, self.num_classes), (self.fc1.bias, self.num_classes),
                          (self.fc2.weight, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            # drawn in float32 whatever the head's dtype: the same initial values in any precision
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.fc2(F.silu(self.fc1(logits)))


# ---------------------------------------------------------------------------------------------- purifier

class ContrastiveGuidedPurifier(DiffPurePurifier):
    """DiffPure with contrastive guidance (module docstring): ``ε̃ = ε̂ + λ∇ℓ`` from ``start_step`` on.

    Args:
        score_model: as :class:`~robustkit.defenses.DiffPurePurifier` (frozen, eval mode).
        classifier: the robustkit :class:`~robustkit.Classifier` whose logits of the noisy states
            ``(x_t + 1)/2`` are embedded (usually the defended classifier itself). Not frozen or mutated.
        config: a :class:`~robustkit.defenses.DiffPureConfig`; ``sampler`` must be ``"sde"`` (the paper's).
        guidance: a :class:`ContrastiveGuidanceConfig` (default: the paper's).

    Attributes:
        head: the :class:`ProjectionHead` (fixed, or re-initialised and trained per purification).
        guided_steps: solver steps with guidance (``nfe − start_step``, 0 when λ = 0).

    Traits:
        stochastic (DiffPure's noise). Gradient: exact through :meth:`purify` with a fixed head
        (second-order terms included; see the cost in the module docstring); ``"surrogate"`` with
        ``online_head=True`` (the guidance is a constant of the graph); :meth:`purify_surrogate` is
        DiffPure's coarse, *unguided* solve on the same noise; no adjoint mode. ``nfe`` counts the two
        classifier forwards of each guided step. Use :class:`ContrastivePurifiedClassifier`, which
        declares these in its traits.

    Shape:
        ``x [N, C, H, W]`` in [0, 1] → ``[N, C, H, W]`` (not clamped unless ``config.clamp``).

    Reference:
        Bai et al., ICML 2024, github.com/tenghuilee/ContrastDiffPurification.
    """

    def __init__(self, score_model: nn.Module, classifier: Classifier, config: DiffPureConfig | None = None,
                 guidance: ContrastiveGuidanceConfig | None = None):
        config = DiffPureConfig() if config is None else config
        guidance = ContrastiveGuidanceConfig() if guidance is None else guidance
        if not isinstance(guidance, ContrastiveGuidanceConfig):
            raise InputError(f"guidance must be a ContrastiveGuidanceConfig, got {type(guidance).__name__}")
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a robustkit Classifier (see robustkit.wrap_classifier), got "
                             f"{type(classifier).__name__}")
        if isinstance(config, DiffPureConfig) and config.sampler != "sde":
            raise InputError(f"contrastive guidance steers the reverse SDE: sampler must be 'sde', got "
                             f"{config.sampler!r}")
        super().__init__(score_model, config)
        self.check_input_shape(tuple(classifier.input_shape))
        self.classifier = classifier
        self.guidance = guidance
        hidden = guidance.head_hidden or 2 * classifier.num_classes
        self.head = ProjectionHead(classifier.num_classes, hidden, guidance.head_seed)
        self.head.requires_grad_(guidance.online_head)
        self.online_head = guidance.online_head
        self.gradient = "surrogate" if guidance.online_head else "exact"
        self.supports_adjoint = False  # torchsde's adjoint would integrate the unguided SDE
        sde = config.sde()
        grid = self._sampler.grid
        t = torch.tensor(grid[:-1], dtype=torch.float64)
        self._grid = grid
        self._betas, self._stds = sde.beta(t).tolist(), sde.marginal(t).std.tolist()
        self.batch_dependent = self.guided_steps > 0  # the negatives are the other images of the batch

    # -- sizes ---------------------------------------------------------------------------------------------

    @property
    def guided_steps(self) -> int:
        if self.guidance.guidance_scale == 0:
            return 0
        return max(0, len(self._grid) - 1 - self.guidance.start_step)

    @property
    def nfe(self) -> int:
        return self._sampler.nfe + 2 * self.guided_steps * self.classifier.traits.forward_passes

    # -- the guidance ----------------------------------------------------------------------------------------

    def _loss_fn(self, z_prev: torch.Tensor, z_cur: torch.Tensor) -> torch.Tensor:
        g = self.guidance
        if g.loss == "infonce":
            return info_nce_loss(z_prev, z_cur, temperature=g.temperature)
        return debiased_contrastive_loss(z_prev, z_cur, tau_plus=g.tau_plus, beta=g.beta, temperature=g.temperature)

    def _embed(self, x_t: torch.Tensor) -> torch.Tensor:
        """The head's embedding of the classifier's logits of a noisy state (diffusion scaling → [0, 1])."""
        img = (x_t + 1.0) * 0.5
        size = tuple(self.classifier.input_shape[-2:])
        if tuple(img.shape[-2:]) != size:
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        logits = self.classifier.logits(img)
        return self.head(logits.to(self.head.fc1.weight.dtype)).to(x_t.dtype)

    def contrastive_loss(self, x_t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """``ℓ(x_t, x_prev)``: the configured loss between the embeddings of ``x_prev`` and ``x_t``."""
        return self._loss_fn(self._embed(x_prev), self._embed(x_t))

    def guidance_term(self, x_t: torch.Tensor, x_prev: torch.Tensor, t: torch.Tensor | float | None = None,
                      ) -> torch.Tensor:
        """``λ ∇_{x_t} ℓ(x_t, x_prev)`` (the guidance does not depend on ``t``; kept for the signature).

        When a graph is being recorded and ``x_t`` is in it (and the head is fixed) the gradient is taken
        with ``create_graph=True``: the result is differentiable in ``x_t`` and ``x_prev``. Otherwise it is
        a constant computed under a local ``enable_grad``. Does not train the online head.
        """
        lam = float(self.guidance.guidance_scale)
        if torch.is_grad_enabled() and x_t.requires_grad and not self.online_head:
            grad, = torch.autograd.grad(self.contrastive_loss(x_t, x_prev), x_t, create_graph=True)
            return lam * grad
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            grad, = torch.autograd.grad(self.contrastive_loss(x, x_prev.detach()), x)
        return lam * grad

    def guided_noise(self, x_t: torch.Tensor, x_prev: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``ε̃ = ε̂(x_t, t) + λ ∇_{x_t} ℓ(x_t, x_prev)`` (Bai et al. Eq. 8)."""
        return self.score_model(x_t, t) + self.guidance_term(x_t, x_prev, t)

    def _online_guidance(self, x_t: torch.Tensor, x_prev: torch.Tensor, optimizer: torch.optim.Optimizer,
                         ) -> torch.Tensor:
        """The official code's step: ``λ∇_x ℓ`` with the current head, then one Adam step on the head."""
        params = [p for p in self.head.parameters()]
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            loss = self.contrastive_loss(x, x_prev.detach())
            grads = torch.autograd.grad(loss, [x, *params])
        for p, g in zip(params, grads[1:]):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(self.guidance.guidance_scale) * grads[0]

    # -- purification ----------------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, noise: DiffPureNoise, checkpoint: bool) -> torch.Tensor:
        if self.guided_steps == 0:
            return super()._run(x, noise, checkpoint)  # λ = 0: DiffPure, the same code path
        if x.shape[0] == 1:
            warnings.warn("ContrastiveGuidedPurifier got a batch of one image: the contrastive loss has no negatives, "
                          "so the guidance is zero and this purification is plain DiffPure. The negatives are the "
                          "other images of the batch (robustkit.defenses.contrastive, 'Batch dependence').",
                          stacklevel=3)
        x_t = self.diffuse(x, noise.init)
        optimizer = None
        if self.online_head:
            self.head.reset()  # re-initialised per purification, as the official code
            optimizer = torch.optim.Adam(self.head.parameters(), lr=self.guidance.head_lr)
        grid, start = self._grid, self.guidance.start_step
        prev = None
        for k in range(len(grid) - 1):
            # DiffPure's own Euler–Maruyama step (checkpointed when asked), one step at a time.
            nxt = euler_maruyama(self.score_model, self._sampler.sde, x_t, grid[k], grid[k + 1], steps=1,
                                 noise=[noise.steps[k]], checkpoint=checkpoint)
            if k >= start:
                if optimizer is not None:
                    g = self._online_guidance(x_t, prev, optimizer)
                elif checkpoint and torch.is_grad_enabled() and x_t.requires_grad:
                    g = _CheckpointedGuidance.apply(x_t, prev, self)
                else:
                    g = self.guidance_term(x_t, prev)
                # ε̃ = ε̂ + g in the drift's −β h ε̃/σ term: the guided step is the plain one plus −β h g/σ.
                h = grid[k] - grid[k + 1]
                nxt = nxt - (self._betas[k] * h / self._stds[k]) * g
            prev, x_t = x_t, nxt
        return self._finish(x_t, tuple(x.shape[-2:]))

    def purify_adjoint(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise InputError("ContrastiveGuidedPurifier has no adjoint gradient (the adjoint SDE would be the unguided "
                         "one); use gradient='exact' (checkpointed) or 'surrogate'")

    def train(self, mode: bool = True) -> "ContrastiveGuidedPurifier":
        nn.Module.train(self, mode)
        self.score_model.eval()
        return self

    def extra_repr(self) -> str:
        g = self.guidance
        return (super().extra_repr() + f", guidance_scale={g.guidance_scale}, loss={g.loss!r}, "
                f"start_step={g.start_step}, online_head={g.online_head}")


class ContrastivePurifiedClassifier(PurifiedClassifier):
    """:class:`~robustkit.defenses.PurifiedClassifier` whose traits declare the guidance's gradient.

    Same arguments. With an online head (``purifier.gradient == "surrogate"``) an ``"exact"`` mode is
    declared ``"surrogate"``: the input gradient treats the guidance as a constant (its dependence on the
    head's online training is not differentiated), so it is not the gradient of the prediction.

    Traits:
        as :class:`PurifiedClassifier`, with ``gradient`` lowered to ``"surrogate"`` for an online head and
        ``batch_dependent`` unless the guidance is off (λ = 0 or no guided step).
    """

    def __init__(self, purifier: ContrastiveGuidedPurifier, classifier: Classifier, **kwargs: Any):
        if not isinstance(purifier, ContrastiveGuidedPurifier):
            raise InputError(f"purifier must be a ContrastiveGuidedPurifier, got {type(purifier).__name__}")
        super().__init__(purifier, classifier, **kwargs)
        if purifier.gradient == "surrogate" and self.traits.gradient == "exact":
            self.traits = dataclasses.replace(self.traits, gradient="surrogate")


# ------------------------------------------------------------------------------------------------ registry

class ContrastiveScoreModel(nn.Module):
    """What a contrastive-purification registry entry's factory returns: the score model and its guidance.

    Not a score model itself: :func:`~robustkit.defenses.create_defense` (or
    :func:`create_contrastive_purification`) builds the defense from it; calling it raises :class:`InputError`.
    """

    def __init__(self, score_model: nn.Module, guidance: ContrastiveGuidanceConfig | None = None):
        super().__init__()
        self.score_model = score_model
        self.guidance = ContrastiveGuidanceConfig() if guidance is None else guidance

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise InputError("a contrastive-purification entry's factory output is not a score model: build the "
                         "defense with robustkit.create_defense")


class _CheckpointedGuidance(torch.autograd.Function):
    """``λ∇_{x_t} ℓ(x_t, x_prev)`` keeping only its two inputs for the backward pass.

    Forward: the gradient without a graph. Backward: rebuild it with ``create_graph=True`` and take the
    vector–Jacobian product with the incoming gradient (Hessian-vector products of the classifier and
    head), the same numbers as differentiating the uncheckpointed graph. torch's own non-reentrant
    checkpoint is no use here: the ``autograd.grad`` inside the region unpacks its saved tensors during
    the forward, which makes it recompute them and keep the recomputed activations until the backward.
    """

    @staticmethod
    def forward(ctx, x_t: torch.Tensor, x_prev: torch.Tensor, purifier: "ContrastiveGuidedPurifier") -> torch.Tensor:
        ctx.save_for_backward(x_t, x_prev)
        ctx.purifier = purifier
        with torch.enable_grad():
            a = x_t.detach().requires_grad_(True)
            grad, = torch.autograd.grad(purifier.contrastive_loss(a, x_prev.detach()), a)
        return float(purifier.guidance.guidance_scale) * grad

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x_t, x_prev = ctx.saved_tensors
        with torch.enable_grad():
            a = x_t.detach().requires_grad_(True)
            b = x_prev.detach().requires_grad_(x_prev.requires_grad)
            g = ctx.purifier.guidance_term(a, b)  # a requires grad: built with create_graph=True
            inputs = (a, b) if b.requires_grad else (a,)
            grads = torch.autograd.grad(g, inputs, grad_out)
        return grads[0], (grads[1] if b.requires_grad else None), None


def create_contrastive_purification(name: str, *, pretrained: bool = False, classifier: Classifier | str | None = None,
                                    score_model: nn.Module | str | os.PathLike | None = None,
                                    score_checkpoint: str | os.PathLike | None = None,
                                    gradient: str | None = None, n_samples: int | None = None,
                                    vote: str | None = None, seed: int | None = None,
                                    **overrides: Any) -> ContrastivePurifiedClassifier:
    """Build a registered contrastive-guided purification defense (eval mode).

    Args:
        name: e.g. ``"contrastive_purification.cifar10"`` or ``"tiny_contrastive_purification.digits"``.
        pretrained, classifier, gradient, n_samples, vote, seed: as :func:`~robustkit.defenses.create_defense`
            (``gradient`` default: the entry's, lowered to ``"surrogate"`` in the traits for an online head).
        score_model, score_checkpoint: a score model (a module, a registered name with an optional weights
            file, or a training run's folder) replacing the entry's, as in
            :func:`~robustkit.defenses.create_diffpure`; the guidance is the entry's.
        **overrides: fields of :class:`~robustkit.defenses.DiffPureConfig` or
            :class:`ContrastiveGuidanceConfig`, e.g. ``dt=1e-2`` or ``online_head=True``.
    """
    from .registry import builder_entry, check_classifier_argument, resolve_classifier, resolve_score_model, stamp

    entry = builder_entry(name, ("ContrastiveGuidedPurification",), "a contrastive-purification", pretrained)
    cfg = entry.config
    pure_fields = {f.name for f in dataclasses.fields(DiffPureConfig)}
    guide_fields = {f.name for f in dataclasses.fields(ContrastiveGuidanceConfig)}
    unknown = sorted(set(overrides) - pure_fields - guide_fields)
    if unknown:
        raise InputError(f"unknown argument(s) {', '.join(unknown)}: create_contrastive_purification takes "
                         "pretrained, classifier, score_model, score_checkpoint, gradient, n_samples, vote, seed "
                         "and DiffPureConfig / "
                         "ContrastiveGuidanceConfig fields")
    pure = {k: v for k, v in overrides.items() if k in pure_fields}
    guide = {k: v for k, v in overrides.items() if k in guide_fields}
    purifier_cfg = replace_checked(cfg.purifier, **pure) if pure else cfg.purifier
    check_classifier_argument(name, cfg, classifier)
    replacement = resolve_score_model(name, score_model, score_checkpoint, pretrained)
    # the entry's weights are not loaded when its score model is replaced: only its guidance config is used
    models = entry.factory(pretrained and replacement is None)
    if not isinstance(models, ContrastiveScoreModel):
        raise InputError(f"{name}'s factory must return a ContrastiveScoreModel, got {type(models).__name__}")
    guidance = replace_checked(models.guidance, **guide) if guide else models.guidance
    clf = resolve_classifier(cfg, classifier, pretrained)
    purifier = ContrastiveGuidedPurifier(models.score_model if replacement is None else replacement, clf,
                                         purifier_cfg, guidance)
    defense = ContrastivePurifiedClassifier(purifier, clf, gradient=gradient or cfg.gradient,
                                            n_samples=cfg.n_samples if n_samples is None else n_samples,
                                            vote=vote or cfg.vote, seed=seed)
    return stamp(defense, name, cfg, pretrained)
