"""The Purifier contract and :class:`PurifiedClassifier`, the defended model ``classifier(purify(x))``.

A *purifier* maps images in ``[0, 1]`` to images (``purify(x, generator=None) -> x``), usually by
diffusing them and denoising them back. ``PurifiedClassifier(purifier, classifier)`` is the defense:
a robustkit :class:`~robustkit.Classifier` whose declared :class:`~robustkit.DefenseTraits` say that it
is stochastic and how attacks get its input gradient. How the gradient crosses the purifier is a
*mode of the pair*, chosen once at construction (never switched inside ``forward``):

==============  ======================================================================================
``exact``       autograd through every solver step, each step checkpointed (its activations are
                recomputed in the backward pass), with the noise of one forward drawn up front and held
                fixed, so the gradient is the exact gradient of the very computation that predicted.
``adjoint``     torchsde's stochastic adjoint (``sdeint_adjoint``) through the reverse SDE, with the
                purifier's weights frozen (input adjoints only), as DiffPure's own evaluation. Exact up to
                the adjoint solver's discretisation; reported as ``"exact"`` in the traits (their Literal
                has no finer word) and as ``"adjoint"`` in ``config.gradient``.
``bpda``        the purifier's backward is the identity (Athalye et al. 2018): a custom autograd
                Function whose forward is the real purification, computed without a graph.
``surrogate``   forward through the real purifier, backward through a cheaper one with the same noise
                (e.g. 20 Euler steps of dt = 5e-3 instead of 100 of 1e-3, Lee & Kim 2023), glued with a
                straight-through sum that is exact in value: ``real.detach() + (surr − surr.detach())``.
==============  ======================================================================================

Randomness. The purifier draws only from the ``torch.Generator`` it is handed. A PurifiedClassifier
built with ``seed=<int>`` owns a private generator (one stream, advancing call after call; the global
RNG is never touched). With ``seed=None`` (default) each forward takes one 63-bit seed from torch's
global RNG, so that ``torch.manual_seed`` — and :func:`robustkit.benchmark`'s per-shard seeding —
make the defense reproducible, exactly as it does for dropout.

EOT as one batch. :meth:`PurifiedClassifier.draw_logits` evaluates ``E`` draws (the ``E`` forwards an
EOT loop would make one after another) as one forward of ``x`` repeated ``E`` times, and gives the same
logits draw for draw: the ``E`` per-forward generators are taken from their source in the sequential
order and handed to the purifier as :class:`DrawBlocks`, and a purifier that accepts them
(``supports_draw_blocks``, e.g. DiffPure, which draws all the noise of a purification up front) draws
rows ``[k·M, (k+1)·M)`` from generator ``k`` *draw-major* — all of draw 0's noise, then all of draw 1's —
which is exactly the sequence of draws of the sequential forwards, even when they share one private
stream (``seed=<int>``). A defense that cannot be batched across draws (a batch-dependent purifier or
classifier, the adjoint mode whose Brownian motion is one per call, a stochastic classifier such as RDC's
whose noise is shared by the batch, a purifier without draw blocks) is evaluated draw by draw.
:func:`robustkit.attacks.base.eot_logits` is the entry point attacks use.

Example (a tiny Gaussian score model and the bundled digits CNN; a fraction of a second)::

    >>> import torch, robustkit
    >>> from robustkit.defenses import DiffPureConfig, DiffPurePurifier, GaussianScoreModel, PurifiedClassifier
    >>> purifier = DiffPurePurifier(GaussianScoreModel((1, 8, 8), mean=0.0, std=0.6),
    ...                             DiffPureConfig(t_star=0.05, dt=1e-2))
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> defense = PurifiedClassifier(purifier, clf, gradient="exact", n_samples=2, seed=0)
    >>> defense.traits.stochastic, defense.traits.gradient, defense.traits.forward_passes
    (True, 'exact', 12)
    >>> x, y = robustkit.load_dataset("digits", n_examples=4)
    >>> x = x.requires_grad_()
    >>> defense(x).shape
    torch.Size([4, 10])
    >>> torch.nn.functional.cross_entropy(defense(x), y).backward()
    >>> bool(x.grad.abs().sum() > 0)
    True

Reference:
    Nie et al., "Diffusion Models for Adversarial Purification" (DiffPure), ICML 2022,
    github.com/NVlabs/DiffPure; Athalye, Carlini, Wagner, ICML 2018 (BPDA); Lee & Kim, "Robust
    Evaluation of Diffusion-Based Adversarial Purification", ICCV 2023 (surrogate process);
    Li et al., "Scalable Gradients for Stochastic Differential Equations", AISTATS 2020 (torchsde adjoint).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn as nn

from ..classifier import Classifier, DefenseTraits, check_images, module_placement
from ..errors import InputError
from ..utils import check_positive_int

log = logging.getLogger(__name__)

__all__ = [
    "DrawBlocks",
    "GRADIENT_MODES",
    "VOTES",
    "Purifier",
    "PurifiedClassifier",
    "PurifiedClassifierConfig",
    "SurrogatePurification",
]

GradientModeArg = Literal["exact", "adjoint", "bpda", "surrogate"]
VoteArg = Literal["logits", "majority"]
GRADIENT_MODES = ("exact", "adjoint", "bpda", "surrogate")
VOTES = ("logits", "majority")

#: Weight of the mean-softmax tie-break in majority votes: far below one vote, far above float eps.
_TIE_BREAK = 1e-3


# -------------------------------------------------------------------------------------------- contract

@dataclass(frozen=True)
class SurrogatePurification:
    """One purification computed twice with the same noise: by the real process and by a cheaper one.

    Attributes:
        value: the real purification (what the defense classifies); carries no graph.
        surrogate: the cheaper process's output, differentiable with respect to the input.
    """

    value: torch.Tensor
    surrogate: torch.Tensor


@dataclass(frozen=True)
class DrawBlocks:
    """The randomness of ``E`` draws stacked in one batch: rows ``[k·M, (k+1)·M)`` of a ``[E·M, ...]``
    input are draw ``k`` and take their noise from ``generators[k]``, as a purification of those ``M`` rows
    alone with that generator would. Accepted as the ``generator`` of purifiers with
    ``supports_draw_blocks``; the same generator object may appear several times (a private stream shared
    by successive forwards): blocks are drawn in order, all of one before the next.

    Shape:
        the purified input ``[E·M, C, H, W]``, ``E = len(generators)``.
    """

    generators: tuple[torch.Generator, ...]

    def __post_init__(self) -> None:
        if not self.generators or not all(isinstance(g, torch.Generator) for g in self.generators):
            raise InputError(f"DrawBlocks needs at least one torch.Generator, got {self.generators!r}")

    def split(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Generator]]:
        """``[(rows of draw k, generator k)]`` for a batch of ``E·M`` rows."""
        e = len(self.generators)
        if x.shape[0] % e:
            raise InputError(f"a batch of {x.shape[0]} rows cannot hold {e} equal draw blocks")
        m = x.shape[0] // e
        return [(x[k * m:(k + 1) * m], g) for k, g in enumerate(self.generators)]


class Purifier(nn.Module):
    """Base class of purifiers: ``purify(x, generator=None) -> x``, images ``[N, C, H, W]`` in ``[0, 1]``.

    Subclasses implement :meth:`purify` (differentiable with respect to ``x``: no ``torch.no_grad()``
    inside) and set :attr:`stochastic`; they may implement :meth:`purify_adjoint` and
    :meth:`purify_surrogate` to offer those gradient modes to :class:`PurifiedClassifier`. The output
    may leave ``[0, 1]`` slightly (DiffPure does not clamp); :class:`PurifiedClassifier` hands it to
    the classifier's ``logits`` as is.

    Attributes:
        stochastic: two purifications of the same input differ.
        batch_dependent: an image's purification depends on the other images of the batch.
        nfe: network evaluations per purification of one batch (for ``forward_passes``).
        supports_adjoint, supports_surrogate: which optional gradient modes are implemented.
        supports_draw_blocks: :meth:`purify` and :meth:`purify_surrogate` accept a :class:`DrawBlocks`
            as ``generator`` (EOT draws as one batch; module docstring).

    Shape:
        ``x``: ``[N, C, H, W]`` in ``[0, 1]``; returns the same shape.
    """

    stochastic: bool = True
    batch_dependent: bool = False
    supports_adjoint: bool = False
    supports_surrogate: bool = False
    supports_draw_blocks: bool = False

    @property
    def nfe(self) -> int:
        """Network evaluations per purification (a batch counts once)."""
        raise NotImplementedError

    @property
    def adjoint_nfe(self) -> int:
        """Network evaluations of one forward in adjoint mode (default: :attr:`nfe`)."""
        return self.nfe

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify ``x``; randomness only from ``generator`` (a fresh OS-seeded one when None)."""
        raise NotImplementedError

    def purify_adjoint(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Purify with an adjoint backward pass (optional)."""
        raise InputError(f"{type(self).__name__} has no adjoint gradient; use gradient='exact'")

    def purify_surrogate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> SurrogatePurification:
        """The real purification and a cheaper, differentiable one with the same noise (optional)."""
        raise InputError(f"{type(self).__name__} has no surrogate process; use gradient='exact' or 'bpda'")

    def check_input_shape(self, input_shape: tuple[int, ...]) -> None:
        """Raise :class:`InputError` if images of ``(C, H, W) = input_shape`` cannot be purified."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.purify(x, generator)


# ------------------------------------------------------------------------------------- gradient modes

class _IdentityBackward(torch.autograd.Function):
    """BPDA: the forward returns the (graph-less) purified images, the backward passes gradients through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 (x: the edge)
        return purified.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _exact(purifier: Purifier, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return purifier.purify(x, generator)


def _adjoint(purifier: Purifier, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return purifier.purify_adjoint(x, generator)


def _bpda(purifier: Purifier, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        purified = purifier.purify(x.detach(), generator)
    if purified.shape != x.shape:
        raise InputError(f"BPDA needs a purifier that keeps the shape, got {list(purified.shape)} for "
                         f"{list(x.shape)}")
    return _IdentityBackward.apply(x, purified)


def _surrogate(purifier: Purifier, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if not (torch.is_grad_enabled() and x.requires_grad):
        # Nothing will be differentiated: the surrogate would only cost time. Same noise draws as below.
        with torch.no_grad():
            return purifier.purify(x, generator)
    pair = purifier.purify_surrogate(x, generator)
    # Straight-through: the value is exactly the real purification (surr − surr.detach() is exactly 0),
    # the gradient is the surrogate's.
    return pair.value.detach() + (pair.surrogate - pair.surrogate.detach())


_GRADIENTS: dict[str, Callable[[Purifier, torch.Tensor, "torch.Generator | DrawBlocks"], torch.Tensor]] = {
    "exact": _exact, "adjoint": _adjoint, "bpda": _bpda, "surrogate": _surrogate}


# ---------------------------------------------------------------------------------------------- votes

def _vote_logits(logits: torch.Tensor) -> torch.Tensor:
    """Mean logits over the samples (``[S, N, K] -> [N, K]``); differentiable (EOT in the forward)."""
    return logits.mean(0)


def _vote_majority(logits: torch.Tensor) -> torch.Tensor:
    """Log vote shares of the samples' argmax classes; ties go to the higher mean softmax.

    A vote has zero gradient almost everywhere, so the returned scores carry the gradient of the mean
    logits (straight-through); their value is ``log((votes + 1e-3 · mean softmax) / S)``.
    """
    s, _, k = logits.shape
    votes = nn.functional.one_hot(logits.detach().argmax(-1), k).to(logits.dtype).sum(0)
    mean = logits.mean(0)
    scores = torch.log((votes + _TIE_BREAK * mean.detach().softmax(-1)) / s)
    return scores + (mean - mean.detach())


_VOTES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"logits": _vote_logits, "majority": _vote_majority}


# ------------------------------------------------------------------------------------ the defended model

def module_name(module: nn.Module | None) -> str | None:
    """A module's registry name, else its class name; None for None."""
    return None if module is None else getattr(module, "name", type(module).__name__)


@dataclass(frozen=True)
class PurifiedClassifierConfig:
    """What a :class:`PurifiedClassifier` is (stored in benchmark records as ``defense_config``).

    Attributes:
        purifier: the purifier's class name; purifier_config: its hyperparameters (e.g.
            :class:`~robustkit.defenses.DiffPureConfig`).
        classifier: the classifier's registry name (or class name).
        score_model: the purifier's diffusion model's registry name (or class name); None for a purifier
            without one.
        gradient: the gradient mode, finer than the traits' (``"adjoint"`` is reported as ``"exact"``).
        n_samples: purifications per input; vote: how their predictions are combined.
        seed: the private generator's seed, or None (one seed per forward from torch's global RNG).
    """

    purifier: str
    purifier_config: Any
    classifier: str
    score_model: str | None
    gradient: str
    n_samples: int
    vote: str
    seed: int | None


class PurifiedClassifier(Classifier):
    """The defense ``classifier(purify(x))``, with the purifier's gradient mode and sample voting.

    Args:
        purifier: a :class:`Purifier` (e.g. :class:`~robustkit.defenses.DiffPurePurifier`).
        classifier: a robustkit :class:`~robustkit.Classifier`; it receives the purified images
            unvalidated (its ``logits``), since an unclamped purification may leave ``[0, 1]`` slightly.
        gradient: ``"exact"`` | ``"adjoint"`` | ``"bpda"`` | ``"surrogate"`` (module docstring).
        n_samples: purifications per input, run as one batch of ``n_samples · N``.
        vote: ``"logits"`` (mean logits, differentiable) or ``"majority"`` (argmax votes; the gradient
            is the mean logits', so with ``n_samples > 1`` and an exact mode the traits say
            ``"surrogate"``).
        seed: None (a seed per forward from torch's global RNG) or an int (a private generator).

    Traits:
        ``stochastic`` when the purifier (or the classifier) is; ``gradient`` from the mode
        (``adjoint`` → ``"exact"``); ``forward_passes = n_samples · (purifier NFE + classifier
        forward passes)``, the network evaluations of one prediction (the surrogate's extra ones, spent
        only when a gradient is asked for, are not counted); ``adapts_at_test_time`` from the classifier;
        ``batch_dependent`` when the purifier or the classifier is.

    Shape:
        input ``[N, *classifier.input_shape]`` in ``[0, 1]``; output ``[N, num_classes]``.

    Reference:
        Nie et al., ICML 2022 (DiffPure), github.com/NVlabs/DiffPure (``eval_sde_adv.py``, ``SDE_Adv_Model``).
    """

    def __init__(self, purifier: Purifier, classifier: Classifier, *, gradient: GradientModeArg = "exact",
                 n_samples: int = 1, vote: VoteArg = "logits", seed: int | None = None):
        if not isinstance(purifier, Purifier):
            raise InputError(f"purifier must be a robustkit Purifier, got {type(purifier).__name__}")
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a robustkit Classifier (see robustkit.wrap_classifier), "
                             f"got {type(classifier).__name__}")
        if gradient not in GRADIENT_MODES:
            raise InputError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        check_positive_int("n_samples", n_samples)
        if vote not in VOTES:
            raise InputError(f"vote must be one of {VOTES}, got {vote!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        if gradient == "adjoint" and not purifier.supports_adjoint:
            raise InputError(f"{type(purifier).__name__} (with this config) has no adjoint gradient; "
                             "use gradient='exact' (checkpointed: exact, memory nearly flat in the steps)")
        if gradient == "surrogate" and not purifier.supports_surrogate:
            raise InputError(f"{type(purifier).__name__} has no surrogate process; use 'exact' or 'bpda'")
        purifier.check_input_shape(tuple(classifier.input_shape))

        ct = classifier.traits
        mode = {"adjoint": "exact"}.get(gradient, gradient)
        if vote == "majority" and n_samples > 1 and mode == "exact":
            mode = "surrogate"  # the vote's gradient is the mean logits', not the vote's own
        if mode == "exact" and ct.gradient != "exact":
            mode = ct.gradient  # the weaker link decides
        nfe = purifier.adjoint_nfe if gradient == "adjoint" else purifier.nfe
        traits = DefenseTraits(stochastic=bool(purifier.stochastic or ct.stochastic),
                               adapts_at_test_time=ct.adapts_at_test_time, gradient=mode,
                               forward_passes=n_samples * (nfe + ct.forward_passes),
                               batch_dependent=bool(purifier.batch_dependent or ct.batch_dependent),
                               generative=ct.generative)
        super().__init__(classifier.num_classes, classifier.input_shape, traits)
        self.purifier = purifier
        self.classifier = classifier
        self.gradient = gradient
        self.n_samples = n_samples
        self.vote = vote
        self.seed = seed
        self._purify = _GRADIENTS[gradient]
        self._vote = _VOTES[vote] if n_samples > 1 else _vote_logits  # one sample: nothing to vote on
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)
        self.name = f"purified({module_name(classifier)})"
        self.config = PurifiedClassifierConfig(
            purifier=type(purifier).__name__, purifier_config=getattr(purifier, "config", None),
            classifier=module_name(classifier),
            score_model=module_name(getattr(purifier, "score_model", None)), gradient=gradient,
            n_samples=n_samples, vote=vote, seed=seed)

    @property
    def base_classifier(self) -> Classifier:
        """The undefended classifier (used by the benchmark's transfer check)."""
        return self.classifier

    def manual_seed(self, seed: int) -> "PurifiedClassifier":
        """Switch to (or re-seed) a private generator: from now on the global RNG is not used."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.config = dataclasses.replace(self.config, seed=seed)
        return self

    def _call_generator(self) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        # One draw from the global CPU RNG per forward (see the module docstring: benchmark seeding).
        seed = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))
        return torch.Generator().manual_seed(seed)

    def purify(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The purified images of one forward (validated input; the configured gradient mode)."""
        check_images(x, self.input_shape)
        return self._purify(self.purifier, x, generator if generator is not None else self._call_generator())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        n = self.n_samples
        xs = x if n == 1 else x.repeat(n, *([1] * (x.dim() - 1)))  # rows r·N + i: sample r of example i
        purified = self._purify(self.purifier, xs, self._call_generator())
        out = self.classifier.logits(purified)
        return self._vote(out.view(n, x.shape[0], -1))

    @property
    def batches_draws(self) -> bool:
        """:meth:`draw_logits` evaluates its draws as one batch (else one by one; module docstring)."""
        t = self.traits
        return (t.stochastic and self.purifier.supports_draw_blocks and self.gradient != "adjoint"
                and not t.batch_threat_model and not self.classifier.traits.stochastic)

    def draw_logits(self, x: torch.Tensor, draws: int) -> torch.Tensor:
        """The logits of ``draws`` successive forwards of ``x``, ``[draws, N, K]``: row ``k`` is what the
        ``k``-th of ``draws`` calls ``self(x)`` would return (draw for draw, up to the float rounding of a
        larger batch), computed as one forward of ``draws · n_samples · N`` rows when
        :attr:`batches_draws`, else call by call. Differentiable as the forwards are.

        Shape:
            ``x`` ``[N, C, H, W]`` in ``[0, 1]`` → ``[draws, N, num_classes]``.

        Example::

            >>> import torch, robustkit
            >>> d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02)
            >>> x, _ = robustkit.load_dataset("digits", n_examples=3)
            >>> _ = torch.manual_seed(0); batched = d.draw_logits(x, 4)
            >>> _ = torch.manual_seed(0); one_by_one = torch.stack([d(x) for _ in range(4)])
            >>> d.batches_draws, batched.shape, torch.allclose(batched, one_by_one, atol=1e-5)
            (True, torch.Size([4, 3, 10]), True)
        """
        check_positive_int("draws", draws)
        device, dtype = module_placement(self)
        x = check_images(x, self.input_shape, dtype=dtype, device=device)
        if not self.batches_draws:
            return torch.stack([self.logits(x) for _ in range(draws)])
        n = self.n_samples
        xs = x.repeat(draws * n, *([1] * (x.dim() - 1)))  # rows (k·n + r)·N + i: sample r of draw k of example i
        blocks = DrawBlocks(tuple(self._call_generator() for _ in range(draws)))  # the sequential order
        out = self.classifier.logits(self._purify(self.purifier, xs, blocks)).view(draws, n, x.shape[0], -1)
        return torch.stack([self._vote(o) for o in out.unbind(0)])

    def reset(self) -> None:
        self.classifier.reset()

    def extra_repr(self) -> str:
        return (f"gradient={self.gradient!r}, n_samples={self.n_samples}, vote={self.vote!r}, seed={self.seed}, "
                f"traits={self.traits}")
