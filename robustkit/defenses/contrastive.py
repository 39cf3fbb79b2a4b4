"""Contrastive-guided purification: DiffPure's reverse SDE steered by a contrastive loss on the classifier.

Bai et al. (ICML 2024) add a guidance term to DiffPure's noise prediction (their Eq. 8 in our notation):

    ε̃(x_k, t_k) = ε̂(x_k, t_k) + λ ∇_{x_k} ℓ(x_k, x_{k−1}),        λ = 500,

where ``x_{k−1}`` and ``x_k`` are two successive states of the Euler–Maruyama solve. ``ℓ`` is a contrastive
loss on embeddings ``z = head(classifier.logits(x))`` of the two states of the whole batch. Since
``score = −ε̃/σ``, adding ``+λ∇ℓ`` to ε moves the state *down* the loss. The guided Euler–Maruyama step is
DiffPure's step plus ``−β(t_k) h / σ(t_k) · λ∇ℓ``; we take DiffPure's step from
:func:`~robustkit.diffusion.euler_maruyama` unchanged and add that term.

Variants (:class:`ContrastiveGuidanceConfig`, named in :data:`CONTRASTIVE_PRESETS`; records store the config
and its :attr:`~ContrastiveGuidanceConfig.variant`). The default, ``"official"``, is what the released code
(ContrastDiffPurification @ a1b2138, CIFAR-10 AutoAttack scripts) computes, reproduced to ~1e-14 in float64 on
vectors the official code produced (``tests/test_fidelity_contrastive.py``):

* loss :func:`official_contrastive_loss`: every previous/current pair of the batch, the full B×B matrix, is a
  positive (hard estimator, τ⁺ 0.1, β 1, T 1); a batch of one still has a non-zero loss;
* the classifier sees the raw ``[−1, 1]`` noisy state (``classifier_input="raw"``);
* the head is the official :class:`~robustkit.defenses.GatedProjectionHead` (three gated residual blocks, no
  biases, hidden 2K); every purification starts it from fresh weights (``nn.Linear``'s law) and takes one
  Adam step (lr 0.01) per guided step, after δ is read;
* guidance from solver step 1, the first step with a previous state (``drift_counter_min 0``).

``"paired"`` is robustkit's earlier reading: the two states of *one* image are the positive pair and the
other images the negatives (Robinson et al.'s debiased loss, ``loss="debiased"``), the classifier is shown
``(x_t + 1)/2``, a fixed seeded residual head, guidance from step 2. ``"official_bpda"`` starts at step 40,
as the official BPDA and ImageNet scripts do. Measured effects: ``docs/results/fidelity.md``.

Deliberate departures from the released code (the only ones): (1) the head's fresh initial weights are drawn
from the purification's own generator, after DiffPure's draws (:class:`ContrastiveNoise`), so a purification
is reproducible from its seed; the official code re-draws them from the global torch RNG after every defended
forward (``reset_drift_counter``). ``head_init="fixed"`` instead starts every purification from the head
module's weights (seeded by ``head_seed``, or given as ``initial_head``, e.g. the official head's weights).
(2) The official module keeps its cached previous state across forwards (``reset_drift_counter`` does not
clear it), so from the second defended forward on, solver step 0 is guided against the *previous call's*
last state whenever the shapes match; robustkit's purification is a function of its own input only and
never guides step 0.

Gradients. The whole purification is one exact autograd graph for every variant. When a graph is being
recorded, ``∇ℓ`` is taken with ``create_graph=True`` so the attack's backward pass differentiates the
guidance itself (Hessian-vector products of the classifier and head), and the online head's Adam steps are
written out of place (:mod:`~robustkit.defenses.contrastive_head`) so the trained weights stay functions of
the states that trained them: an exact-gradient attack is defined on the official algorithm too (the
authors evaluated with BPDA, ``gradient="bpda"``, which stays available). With ``checkpoint`` (DiffPure's
config, on by default) each guided step is checkpointed (``_CheckpointedGuidanceStep``): only its inputs (two
states and the head's weights and Adam moments) are kept and its graph is rebuilt in the backward pass, with
the same gradient. Caveat for attackers: Adam's first steps are nearly ``lr·sign(g)``, so the official map
curves on a scale of ~1e-6 in the input where a head gradient entry is small; its gradient is exact but
describes a very small neighbourhood. Precision: λ = 500 makes the guided trajectory amplify rounding. In
float32, on ``unet.cifar10`` + ``resnet56.cifar10`` with the paired variant, purified images differ from
float64 ones (same noise) by up to 0.075 and the input gradient has cosine 0.90 with float64's; plain DiffPure
agrees to 3e-7 and cosine 1.0 (``bench/bench_contrastive_precision.py``). Attack in float64 when that matters.

Batch dependence. The negatives (and, in the official loss, the positives) are the other images of the
batch, so an image's purification depends on what it is purified with. With ``PurifiedClassifier(n_samples
> 1)`` the copies of one image are in each other's batch. Evaluate and attack with the batch composition you
report. The purifier (when it guides at all) and the classifier built on it declare ``batch_dependent`` in
their traits, so the harness attacks and re-evaluates each shard as one batch and counts an attack's queries
on a subset of it (``partial_batch_queries``: pyautoattack's APGD attacks only the points not yet broken,
so it sees fewer negatives). The paired losses give a batch of one no guidance (a warning says so).

Randomness: DiffPure's (one ``torch.Generator``: ε, then one draw per step), then, with
``head_init="per_purification"``, the head's initial weights from the same generator; the guidance draws
nothing. DiffPure's draws are unchanged, and with ``λ = 0`` the purification is DiffPure's, bit for bit.

Example (Gaussian score model, a linear classifier on 4×4 images; 5 Euler steps, official variant)::

    >>> import torch, torch.nn as nn
    >>> import robustkit
    >>> from robustkit.defenses import ContrastiveGuidedPurifier, DiffPureConfig, GaussianScoreModel
    >>> clf = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), input_shape=(1, 4, 4))
    >>> p = ContrastiveGuidedPurifier(GaussianScoreModel((1, 4, 4)), clf, DiffPureConfig(dt=0.02))
    >>> p.guided_steps, p.guidance.guidance_scale, p.guidance.variant
    (4, 500.0, 'official')
    >>> x = torch.rand(4, 1, 4, 4)
    >>> a = p.purify(x, torch.Generator().manual_seed(0)); b = p.purify(x, torch.Generator().manual_seed(0))
    >>> a.shape, torch.equal(a, b)
    (torch.Size([4, 1, 4, 4]), True)

Reference:
    Bai et al., "Diffusion Models Demand Contrastive Guidance for Adversarial Purification to Advance",
    ICML 2024, github.com/tenghuilee/ContrastDiffPurification @ a1b2138 (``src/contrastive_guided_diffusion.py``,
    ``src/eval_sde_adv_contrastive.py``, ``run_scripts_contrastive/``).
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
from .contrastive_head import (CONTRASTIVE_HEADS, GatedProjectionHead, HeadArg, HeadState, ProjectionHead, build_head,
                               head_forward, online_head_update)
from .diffpure import DiffPureConfig, DiffPureNoise, DiffPurePurifier
from .purification import PurifiedClassifier

__all__ = ["CLASSIFIER_INPUTS", "CONTRASTIVE_LOSSES", "CONTRASTIVE_PRESETS", "HEAD_INITS", "ContrastiveGuidanceConfig",
           "ContrastiveGuidedPurifier", "ContrastiveNoise", "ContrastivePurificationConfig",
           "ContrastivePurifiedClassifier",
           "ContrastiveScoreModel", "GuidanceStep", "create_contrastive_purification", "debiased_contrastive_loss",
           "info_nce_loss", "official_contrastive_loss"]

LossArg = Literal["official", "debiased", "infonce"]
CONTRASTIVE_LOSSES = ("official", "debiased", "infonce")
InputArg = Literal["raw", "unit"]
CLASSIFIER_INPUTS = ("raw", "unit")
HeadInitArg = Literal["per_purification", "fixed"]
HEAD_INITS = ("per_purification", "fixed")


# ---------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class ContrastiveGuidanceConfig:
    """The guidance's hyperparameters; the defaults are the official code's (the ``"official"`` preset).

    The released code (ContrastDiffPurification @ a1b2138, the CIFAR-10 AutoAttack scripts) is what the
    paper's numbers were measured with, so its behaviour is the default. :data:`CONTRASTIVE_PRESETS` names the
    variants; :attr:`variant` says which one a config is.

    Attributes:
        guidance_scale: λ in ``ε̃ = ε̂ + λ∇ℓ`` (500, the scripts' ``delta_grad_mul``). 0: DiffPure exactly.
        loss: ``"official"`` (the released ``ContrastiveLoss``, hard estimator: all B×B previous/current pairs
            are positives, N = max(2B − 2, 2), similarity and ratio clamped at 1e-6), ``"debiased"`` (Robinson
            et al.'s loss with the pairs (previous_i, current_i) as positives) or ``"infonce"``.
        tau_plus: τ⁺, the class prior of false negatives (0.1); in ``[0, 1)``.
        beta: β, the hardness concentration of the negatives' importance weights (1.0); ``>= 0``.
        temperature: T of ``exp(cos/T)`` (1.0).
        start_step: the first guided solver step (0-based); step ``k`` contrasts ``x_k`` with ``x_{k−1}``, so
            ``>= 1``. 1 is the CIFAR-10 AutoAttack scripts' ``drift_counter_min 0`` (the official first call
            has no cached state); the BPDA and ImageNet scripts use 40; robustkit's paired variant 2.
        online_head: re-start the head from its initial weights at each purification and train it online,
            one Adam step per guided solver step (the official code). The Adam steps are unrolled, so
            gradients through the purification stay exact.
        head: ``"gated"`` (the official three gated residual blocks, no biases) or ``"residual"``
            (robustkit's two-layer residual head).
        head_lr: Adam's learning rate for the online head (0.01).
        head_hidden: hidden width of the head (None: ``2 · num_classes``, as the official head).
        head_init: where each purification's initial head weights come from: ``"per_purification"``, fresh
            from the purification's own generator after DiffPure's draws (the official code re-draws them at
            every purification, from the global RNG), or ``"fixed"``, the head module's weights every time
            (seeded by ``head_seed``, or passed in as ``initial_head``).
        head_seed: seed of the head module's weights (``head_init="fixed"``).
        classifier_input: what the classifier is shown: ``"raw"``, the ``[−1, 1]`` noisy state itself (the
            official code), or ``"unit"``, ``(x_t + 1)/2`` (the classifier's own input range).
    """

    guidance_scale: float = 500.0
    loss: LossArg = "official"
    tau_plus: float = 0.1
    beta: float = 1.0
    temperature: float = 1.0
    start_step: int = 1
    online_head: bool = True
    head: HeadArg = "gated"
    head_lr: float = 0.01
    head_hidden: int | None = None
    head_init: HeadInitArg = "per_purification"
    head_seed: int = 0
    classifier_input: InputArg = "raw"

    def __post_init__(self) -> None:
        for name in ("guidance_scale", "tau_plus", "beta", "temperature", "head_lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        if self.guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        for name, allowed in (("loss", CONTRASTIVE_LOSSES), ("head", CONTRASTIVE_HEADS),
                              ("classifier_input", CLASSIFIER_INPUTS), ("head_init", HEAD_INITS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
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

    @property
    def variant(self) -> str:
        """The name of the preset this config equals (:data:`CONTRASTIVE_PRESETS`), else ``"custom"``."""
        return next((name for name, cfg in CONTRASTIVE_PRESETS.items() if cfg == self), "custom")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ContrastiveGuidanceConfig":
        """The preset ``name`` of :data:`CONTRASTIVE_PRESETS`, with ``overrides`` (config fields) applied."""
        if name not in CONTRASTIVE_PRESETS:
            raise InputError(f"unknown contrastive-guidance preset {name!r}; choose from {sorted(CONTRASTIVE_PRESETS)}")
        return dataclasses.replace(CONTRASTIVE_PRESETS[name], **overrides)


#: The named variants. ``"official"``: the released code as the CIFAR-10 AutoAttack scripts run it (the
#: default); ``"official_bpda"``: the same with ``drift_counter_min 40`` (the BPDA and ImageNet scripts);
#: ``"paired"``: robustkit's earlier variant (positives = the two states of one image, a fixed seeded
#: residual head, the classifier shown ``(x_t + 1)/2``, guidance from step 2).
CONTRASTIVE_PRESETS: dict[str, ContrastiveGuidanceConfig] = {
    "official": ContrastiveGuidanceConfig(),
    "official_bpda": ContrastiveGuidanceConfig(start_step=40),
    "paired": ContrastiveGuidanceConfig(loss="debiased", start_step=2, online_head=False, head="residual",
                                        head_init="fixed", classifier_input="unit"),
}


@dataclass(frozen=True)
class ContrastivePurificationConfig:
    """What a contrastive-guided purification is, as benchmark records store it (``purifier_config``).

    Attributes:
        diffpure: the solver's :class:`~robustkit.defenses.DiffPureConfig`.
        guidance: the :class:`ContrastiveGuidanceConfig`.
        variant: ``guidance.variant`` (a preset name or ``"custom"``).
    """

    diffpure: DiffPureConfig
    guidance: ContrastiveGuidanceConfig
    variant: str


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


def official_contrastive_loss(z_prev: torch.Tensor, z_cur: torch.Tensor, *, tau_plus: float = 0.1, beta: float = 1.0,
                              temperature: float = 1.0) -> torch.Tensor:
    """The released code's contrastive loss (``ContrastiveLoss``, hard estimator), ``loss(x_1=z_prev, x_2=z_cur)``.

    With ``s(u, v) = exp(cos(u, v)/T)`` over the 2B embeddings ``[z_prev; z_cur]``:

    * negatives: row ``i`` of ``s`` without columns ``i mod B`` and ``i mod B + B`` (2B − 2 per row); for
      B = 1 only column 1 is dropped, so each row keeps one entry. Clamped below at 1e-6;
    * positives: the **full B×B matrix** ``pos[i, j] = s(z_prev_i, z_cur_j)``, stacked twice to ``[2B, B]``;
    * ``N = max(2B − 2, 2)``, importance weights ``imp = neg^β``,
      ``N_g = (Σ_row imp·neg / mean_row imp − τ⁺ N pos) / (1 − τ⁺)`` ``[2B, B]``, clamped below at ``N e^{−1/T}``;
    * loss = ``−mean log clamp(pos/(pos + N_g), 1e-6)`` over all 2B × B entries.

    A batch of one is not degenerate here: its loss, and so its guidance, is non-zero.

    Shape:
        ``z_prev, z_cur``: ``[B, D]``; returns a scalar.

    Reference:
        ContrastDiffPurification @ a1b2138, ``src/contrastive_guided_diffusion.py`` (``ContrastiveLoss``).

    Example::

        >>> import torch
        >>> z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        >>> official_contrastive_loss(z, z + 0.1).shape
        torch.Size([])
    """
    _check_pair(z_prev, z_cur)
    b = z_prev.shape[0]
    z = torch.cat([z_prev, z_cur], 0)
    sim = torch.exp(F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=-1) / temperature)  # [2B, 2B]
    keep = torch.ones(b, 2 * b, dtype=torch.bool, device=z.device)
    if b == 1:
        keep[0, 1] = False
    else:
        rows = torch.arange(b, device=z.device)
        keep[rows, rows] = False
        keep[rows, rows + b] = False
    neg = sim[keep.repeat(2, 1)].view(2 * b, -1).clamp(min=1e-6)
    pos = torch.exp(F.cosine_similarity(z_prev.unsqueeze(1), z_cur.unsqueeze(0), dim=-1) / temperature).repeat(2, 1)
    n = max(2 * b - 2, 2)
    imp = torch.exp(beta * torch.log(neg))
    reweighted = (imp * neg).sum(-1, keepdim=True) / imp.mean(-1, keepdim=True)
    ng = ((reweighted - tau_plus * n * pos) / (1.0 - tau_plus)).clamp(min=n * math.e ** (-1.0 / temperature))
    return -torch.log((pos / (pos + ng)).clamp(min=1e-6)).mean()


# ---------------------------------------------------------------------------------------------- purifier

@dataclass(frozen=True)
class ContrastiveNoise(DiffPureNoise):
    """All the randomness of one guided purification: DiffPure's draws and the head's initial weights.

    Attributes:
        init, steps: as :class:`~robustkit.defenses.DiffPureNoise`.
        head: the head's initial weights (``head.named_parameters()`` order) for ``head_init="per_purification"``,
            drawn from the purification's generator after DiffPure's draws; None: the head module's weights.
    """

    head: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class GuidanceStep:
    """One guided solver step's result: the guidance ``δ = λ ∇_{x_t} ℓ`` and the online head after its update.

    Attributes:
        delta: ``λ ∇_{x_t} ℓ(x_t, x_prev)``, added to the noise prediction (``[N, C, H, W]``).
        head: the head's :class:`~robustkit.defenses.contrastive_head.HeadState` after this step: with
            ``online_head``, after its Adam step (δ used the state *before* it, as the official code);
            otherwise the given state unchanged (None when none was given).
    """

    delta: torch.Tensor
    head: HeadState | None


class ContrastiveGuidedPurifier(DiffPurePurifier):
    """DiffPure with contrastive guidance (module docstring): ``ε̃ = ε̂ + λ∇ℓ`` from ``start_step`` on.

    Args:
        score_model: as :class:`~robustkit.defenses.DiffPurePurifier` (frozen, eval mode).
        classifier: the robustkit :class:`~robustkit.Classifier` whose logits of the noisy states are embedded
            (usually the defended classifier itself; the official scripts use it too). Not frozen or mutated.
        config: a :class:`~robustkit.defenses.DiffPureConfig`; ``sampler`` must be ``"sde"`` (the paper's).
        guidance: a :class:`ContrastiveGuidanceConfig` (default: the official code's).
        initial_head: the projection head, a module of the configured kind, e.g. the official head's weights
            loaded into a :class:`~robustkit.defenses.GatedProjectionHead`; None: a new head seeded with
            ``guidance.head_seed``. With ``head_init="fixed"`` its weights start every purification; with
            ``"per_purification"`` they are used only where no drawn weights are given (:meth:`guidance_term`,
            a plain :class:`~robustkit.defenses.DiffPureNoise`).

    Attributes:
        head: the projection head module; a purification never changes it (the weights it trains live in a
            :class:`~robustkit.defenses.HeadState`).
        guided_steps: solver steps with guidance (``nfe − start_step``, 0 when λ = 0).

    Traits:
        stochastic (DiffPure's noise). Gradient: exact through :meth:`purify` (second-order terms, and with
        an online head its unrolled Adam steps, included; cost in the module docstring); :meth:`purify_surrogate`
        is DiffPure's coarse, *unguided* solve on the same noise; no adjoint mode. ``nfe`` counts the two
        classifier forwards of each guided step. Batch-dependent (the negatives, and with the official loss
        the positives, are the batch). Use :class:`ContrastivePurifiedClassifier`, which declares these.

    Shape:
        ``x [N, C, H, W]`` in [0, 1] → ``[N, C, H, W]`` (not clamped unless ``config.clamp``).

    Reference:
        Bai et al., ICML 2024, github.com/tenghuilee/ContrastDiffPurification.
    """

    #: not batched across EOT draws: its noise carries a head per purification, and guidance is batch-dependent
    supports_draw_blocks = False

    def __init__(self, score_model: nn.Module, classifier: Classifier, config: DiffPureConfig | None = None,
                 guidance: ContrastiveGuidanceConfig | None = None, initial_head: nn.Module | None = None):
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
        k, head = classifier.num_classes, initial_head
        if head is None:
            head = build_head(guidance.head, k, guidance.head_hidden or 2 * k, guidance.head_seed)
        expected = GatedProjectionHead if guidance.head == "gated" else ProjectionHead
        if not isinstance(head, expected) or head.num_classes != k:
            raise InputError(f"initial_head must be a {expected.__name__} on {k} classes "
                             f"(guidance.head={guidance.head!r}), got {type(head).__name__}")
        self.head = head.requires_grad_(False)
        self.online_head = guidance.online_head
        self.supports_adjoint = False  # torchsde's adjoint would integrate the unguided SDE
        sde = config.sde()
        grid = self._sampler.grid
        t = torch.tensor(grid[:-1], dtype=torch.float64)
        self._grid = grid
        self._betas, self._stds = sde.beta(t).tolist(), sde.marginal(t).std.tolist()
        self.batch_dependent = self.guided_steps > 0  # the negatives are the other images of the batch

    @property
    def config_record(self) -> ContrastivePurificationConfig:
        """The solver's and the guidance's settings together, as records store them."""
        return ContrastivePurificationConfig(self.config, self.guidance, self.guidance.variant)

    # -- randomness ------------------------------------------------------------------------------------------

    def draw_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> DiffPureNoise:
        """DiffPure's draws (:meth:`~robustkit.defenses.DiffPurePurifier.draw_noise`), then, for
        ``head_init="per_purification"``, the head's initial weights, from the same generator."""
        if generator is None:
            generator = torch.Generator(device=x.device)
            generator.seed()
        base = super().draw_noise(x, generator)
        if self.guidance.head_init == "fixed" or self.guided_steps == 0:
            return base
        return ContrastiveNoise(base.init, base.steps, self.head.draw_weights(generator))

    def _check_noise(self, x: torch.Tensor, noise: DiffPureNoise) -> None:
        super()._check_noise(x, noise)
        weights = getattr(noise, "head", None)
        if weights is not None:
            shapes = [tuple(p.shape) for p in self.head.parameters()]
            if len(weights) != len(shapes) or any(tuple(w.shape) != s for w, s in zip(weights, shapes)):
                raise InputError(f"noise.head must hold {len(shapes)} tensors of shapes {shapes} (the head's "
                                 "parameters), got " + str([tuple(w.shape) for w in weights]))

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
        loss = official_contrastive_loss if g.loss == "official" else debiased_contrastive_loss
        return loss(z_prev, z_cur, tau_plus=g.tau_plus, beta=g.beta, temperature=g.temperature)

    def _embed(self, x_t: torch.Tensor, weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """The head's embedding (``weights``: the online head's, None: the module's) of the classifier's
        logits of a noisy state, shown raw (official) or as ``(x_t + 1)/2``."""
        img = x_t if self.guidance.classifier_input == "raw" else (x_t + 1.0) * 0.5
        size = tuple(self.classifier.input_shape[-2:])
        if tuple(img.shape[-2:]) != size:
            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        logits = self.classifier.logits(img)
        first = next(self.head.parameters())
        logits = logits.to(first.dtype)
        z = self.head(logits) if weights is None else head_forward(self.head, weights, logits)
        return z.to(x_t.dtype)

    def contrastive_loss(self, x_t: torch.Tensor, x_prev: torch.Tensor,
                         weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """``ℓ(x_t, x_prev)``: the configured loss between the embeddings of ``x_prev`` and ``x_t``."""
        return self._loss_fn(self._embed(x_prev, weights), self._embed(x_t, weights))

    def initial_head_state(self) -> HeadState:
        """The online head at the start of a purification: :attr:`head`'s weights, Adam's moments at 0."""
        return HeadState.initial(self.head)

    def guidance_step(self, x_t: torch.Tensor, x_prev: torch.Tensor, head: HeadState | None = None, *,
                      create_graph: bool | None = None) -> GuidanceStep:
        """One guided step: ``δ = λ ∇_{x_t} ℓ(x_t, x_prev)`` with the head state ``head`` (None: the
        module :attr:`head`'s weights), then, with ``online_head`` and a state given, one Adam step on it with
        ``∇_θ ℓ`` (the official order).

        ``create_graph`` (default: grad mode is on and ``x_t`` requires grad): differentiate through the
        step, so δ and the updated head are functions of ``x_t``, ``x_prev`` and ``head``'s tensors (the
        official code reads ``x_prev``'s logits under no_grad; that only skips a gradient it does not use).
        Otherwise everything is computed as constants under a local ``enable_grad``.

        Example (the official head trained over two steps)::

            >>> import torch, torch.nn as nn, robustkit
            >>> from robustkit.defenses import ContrastiveGuidedPurifier, GaussianScoreModel
            >>> clf = robustkit.wrap_classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), input_shape=(1, 4, 4))
            >>> p = ContrastiveGuidedPurifier(GaussianScoreModel((1, 4, 4)), clf)
            >>> a, b, c = torch.randn(3, 4, 1, 4, 4).unbind(0)
            >>> s1 = p.guidance_step(b, a, p.initial_head_state()); s2 = p.guidance_step(c, b, s1.head)
            >>> s2.delta.shape, s2.head.step
            (torch.Size([4, 1, 4, 4]), 2)
        """
        if create_graph is None:
            create_graph = torch.is_grad_enabled() and x_t.requires_grad
        lam = float(self.guidance.guidance_scale)
        train = head is not None and self.online_head

        def leaf(t: torch.Tensor) -> torch.Tensor:  # a tensor to differentiate with respect to
            return t if create_graph and t.requires_grad else t.detach().requires_grad_(True)

        with torch.enable_grad():
            x_t = leaf(x_t)
            x_prev = x_prev if create_graph else x_prev.detach()
            weights = None
            if head is not None:
                weights = tuple(leaf(w) if train else (w if create_graph else w.detach()) for w in head.weights)
            loss = self.contrastive_loss(x_t, x_prev, weights)
            grads = torch.autograd.grad(loss, (x_t, *(weights if train else ())), create_graph=create_graph)
            new_head = head
            if train:
                if not create_graph:
                    head = HeadState(tuple(w.detach() for w in weights), tuple(m.detach() for m in head.exp_avg),
                                     tuple(v.detach() for v in head.exp_avg_sq), head.step)
                new_head = online_head_update(head, grads[1:], self.guidance.head_lr)
        return GuidanceStep(lam * grads[0], new_head)

    def guidance_term(self, x_t: torch.Tensor, x_prev: torch.Tensor, t: torch.Tensor | float | None = None,
                      ) -> torch.Tensor:
        """``λ ∇_{x_t} ℓ(x_t, x_prev)`` with the head module's weights; no training.

        Differentiable in ``x_t`` and ``x_prev`` when a graph is being recorded and ``x_t`` is in it (the
        guidance does not depend on ``t``; kept for the signature).
        """
        return self.guidance_step(x_t, x_prev).delta

    def guided_noise(self, x_t: torch.Tensor, x_prev: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``ε̃ = ε̂(x_t, t) + λ ∇_{x_t} ℓ(x_t, x_prev)`` (Bai et al. Eq. 8; fixed head)."""
        return self.score_model(x_t, t) + self.guidance_term(x_t, x_prev, t)

    # -- purification ----------------------------------------------------------------------------------------

    def _run(self, x: torch.Tensor, noise: DiffPureNoise, checkpoint: bool) -> torch.Tensor:
        if self.guided_steps == 0:
            return super()._run(x, noise, checkpoint)  # λ = 0: DiffPure, the same code path
        if x.shape[0] == 1 and self.guidance.loss != "official":
            warnings.warn("ContrastiveGuidedPurifier got a batch of one image: the paired contrastive loss has no "
                          "negatives, so the guidance is zero and this purification is plain DiffPure. The "
                          "negatives are the other images of the batch (robustkit.defenses.contrastive, "
                          "'Batch dependence').", stacklevel=3)
        x_t = self.diffuse(x, noise.init)
        weights = getattr(noise, "head", None)  # this purification's draw, or the module's weights
        head = HeadState.initial(self.head if weights is None else weights)  # a fresh start per purification
        grid, start = self._grid, self.guidance.start_step
        prev = None
        for k in range(len(grid) - 1):
            # DiffPure's own Euler–Maruyama step (checkpointed when asked), one step at a time.
            nxt = euler_maruyama(self.score_model, self._sampler.sde, x_t, grid[k], grid[k + 1], steps=1,
                                 noise=[noise.steps[k]], checkpoint=checkpoint)
            if k >= start:
                if checkpoint and torch.is_grad_enabled() and x_t.requires_grad:
                    step = _CheckpointedGuidanceStep.run(self, x_t, prev, head)
                else:
                    step = self.guidance_step(x_t, prev, head)
                head = step.head
                # ε̃ = ε̂ + δ in the drift's −β h ε̃/σ term: the guided step is the plain one plus −β h δ/σ.
                h = grid[k] - grid[k + 1]
                nxt = nxt - (self._betas[k] * h / self._stds[k]) * step.delta
            prev, x_t = x_t, nxt
        return self._finish(x_t, tuple(x.shape[-2:]))

    def purify_adjoint(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise InputError("ContrastiveGuidedPurifier has no adjoint gradient (the adjoint SDE would be the unguided "
                         "one); use gradient='exact' (checkpointed), 'bpda' or 'surrogate'")

    def train(self, mode: bool = True) -> "ContrastiveGuidedPurifier":
        nn.Module.train(self, mode)
        self.score_model.eval()
        return self

    def extra_repr(self) -> str:
        g = self.guidance
        return (super().extra_repr() + f", variant={g.variant!r}, guidance_scale={g.guidance_scale}, loss={g.loss!r}, "
                f"start_step={g.start_step}, online_head={g.online_head}, head={g.head!r}, "
                f"classifier_input={g.classifier_input!r}")


class ContrastivePurifiedClassifier(PurifiedClassifier):
    """:class:`~robustkit.defenses.PurifiedClassifier` whose record states the guidance.

    Same arguments. ``config.purifier_config`` is a :class:`ContrastivePurificationConfig` (solver, guidance
    and variant name), so benchmark records store which variant was evaluated.

    Traits:
        as :class:`PurifiedClassifier`, with ``batch_dependent`` unless the guidance is off (λ = 0 or no
        guided step). ``"exact"`` is exact for every variant (the online head's Adam steps are unrolled);
        ``"bpda"`` is the paper's own evaluation (identity backward through the purification).
    """

    def __init__(self, purifier: ContrastiveGuidedPurifier, classifier: Classifier, **kwargs: Any):
        if not isinstance(purifier, ContrastiveGuidedPurifier):
            raise InputError(f"purifier must be a ContrastiveGuidedPurifier, got {type(purifier).__name__}")
        super().__init__(purifier, classifier, **kwargs)
        self.config = dataclasses.replace(self.config, purifier_config=purifier.config_record)


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


class _CheckpointedGuidanceStep(torch.autograd.Function):
    """One :meth:`ContrastiveGuidedPurifier.guidance_step` keeping only its inputs for the backward pass.

    Inputs: ``x_t``, ``x_prev`` and, for an online head, its state's tensors (weights, Adam moments);
    outputs: δ and the updated state's tensors. Forward: the step without a graph. Backward: rebuild it
    with ``create_graph=True`` and take the vector–Jacobian product with the incoming gradients
    (Hessian-vector products of the classifier and head, and through the unrolled Adam step), the same
    numbers as differentiating the uncheckpointed graph. torch's own non-reentrant checkpoint is no use
    here: the ``autograd.grad`` inside the region unpacks its saved tensors during the forward, which makes
    it recompute them and keep the recomputed activations until the backward.
    """

    @staticmethod
    def run(purifier: "ContrastiveGuidedPurifier", x_t: torch.Tensor, x_prev: torch.Tensor,
            head: HeadState | None) -> GuidanceStep:
        state = () if head is None else head.tensors()
        out = _CheckpointedGuidanceStep.apply(purifier, -1 if head is None else head.step, x_t, x_prev, *state)
        if head is None or not purifier.online_head:
            return GuidanceStep(out[0], head)  # a fixed head's state passes through unchanged
        return GuidanceStep(out[0], HeadState.from_tensors(out[1:], head.step + 1))

    @staticmethod
    def _step(purifier, step, x_t, x_prev, state, create_graph):
        head = None if step < 0 else HeadState.from_tensors(state, step)
        out = purifier.guidance_step(x_t, x_prev, head, create_graph=create_graph)
        return (out.delta,) + (out.head.tensors() if head is not None and purifier.online_head else ())

    @staticmethod
    def forward(ctx, purifier, step, x_t, x_prev, *state):
        ctx.save_for_backward(x_t, x_prev, *state)
        ctx.purifier, ctx.step = purifier, step
        return _CheckpointedGuidanceStep._step(purifier, step, x_t, x_prev, state, create_graph=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outs):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(bool(n)) for t, n in zip(saved, needs)]
            outs = _CheckpointedGuidanceStep._step(ctx.purifier, ctx.step, inputs[0], inputs[1], tuple(inputs[2:]),
                                                   create_graph=True)
            pairs = [(o, g) for o, g in zip(outs, grad_outs) if o.requires_grad and g is not None]
            wrt = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
                         if pairs and wrt else [None] * len(wrt))
        return (None, None, *[next(grads) if t.requires_grad else None for t in inputs])


def create_contrastive_purification(name: str, *, pretrained: bool = False, classifier: Classifier | str | None = None,
                                    score_model: nn.Module | str | os.PathLike | None = None,
                                    score_checkpoint: str | os.PathLike | None = None,
                                    gradient: str | None = None, n_samples: int | None = None,
                                    vote: str | None = None, seed: int | None = None, preset: str | None = None,
                                    **overrides: Any) -> ContrastivePurifiedClassifier:
    """Build a registered contrastive-guided purification defense (eval mode).

    Args:
        name: e.g. ``"contrastive_purification.cifar10"`` or ``"tiny_contrastive_purification.digits"``.
        pretrained, classifier, gradient, n_samples, vote, seed: as :func:`~robustkit.defenses.create_defense`
            (``gradient`` default: the entry's; ``"exact"`` is exact for every variant, ``"bpda"`` is the
            paper's evaluation).
        score_model, score_checkpoint: a score model (a module, a registered name with an optional weights
            file, or a training run's folder) replacing the entry's, as in
            :func:`~robustkit.defenses.create_diffpure`; the guidance is the entry's.
        preset: a :data:`CONTRASTIVE_PRESETS` name replacing the entry's guidance (e.g. ``"paired"``).
        **overrides: fields of :class:`~robustkit.defenses.DiffPureConfig` or
            :class:`ContrastiveGuidanceConfig` (applied after ``preset``), e.g. ``dt=1e-2`` or ``start_step=40``.
    """
    from .registry import builder_entry, check_classifier_argument, resolve_classifier, resolve_score_model, stamp

    entry = builder_entry(name, ("ContrastiveGuidedPurification",), "a contrastive-purification", pretrained)
    cfg = entry.config
    pure_fields = {f.name for f in dataclasses.fields(DiffPureConfig)}
    guide_fields = {f.name for f in dataclasses.fields(ContrastiveGuidanceConfig)}
    unknown = sorted(set(overrides) - pure_fields - guide_fields)
    if unknown:
        raise InputError(f"unknown argument(s) {', '.join(unknown)}: create_contrastive_purification takes "
                         "pretrained, classifier, score_model, score_checkpoint, gradient, n_samples, vote, seed, "
                         "preset and DiffPureConfig / ContrastiveGuidanceConfig fields")
    pure = {k: v for k, v in overrides.items() if k in pure_fields}
    guide = {k: v for k, v in overrides.items() if k in guide_fields}
    purifier_cfg = replace_checked(cfg.purifier, **pure) if pure else cfg.purifier
    check_classifier_argument(name, cfg, classifier)
    replacement = resolve_score_model(name, score_model, score_checkpoint, pretrained)
    # the entry's weights are not loaded when its score model is replaced: only its guidance config is used
    models = entry.factory(pretrained and replacement is None)
    if not isinstance(models, ContrastiveScoreModel):
        raise InputError(f"{name}'s factory must return a ContrastiveScoreModel, got {type(models).__name__}")
    guidance = models.guidance if preset is None else ContrastiveGuidanceConfig.preset(preset)
    guidance = replace_checked(guidance, **guide) if guide else guidance
    clf = resolve_classifier(cfg, classifier, pretrained)
    purifier = ContrastiveGuidedPurifier(models.score_model if replacement is None else replacement, clf,
                                         purifier_cfg, guidance)
    defense = ContrastivePurifiedClassifier(purifier, clf, gradient=gradient or cfg.gradient,
                                            n_samples=cfg.n_samples if n_samples is None else n_samples,
                                            vote=vote or cfg.vote, seed=seed)
    return stamp(defense, name, cfg, pretrained)
