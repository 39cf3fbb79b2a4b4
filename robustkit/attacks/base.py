"""The Attack contract: a final ``__call__`` around a subclass's ``perturb``.

``Attack.__call__(model, x, y)`` does, for every attack alike: input validation, eval mode, ``reset()``
of test-time state, counting of forward/backward passes, projection of the result onto the threat
model (norm ball ∩ [0, 1]), and verification with a fresh forward. Subclasses write only ``perturb``.

Models whose prediction depends on the batch (``traits.batch_threat_model``: they adapt at test time,
or are ``batch_dependent``) are attacked under the batch threat model: the unit is the batch ``x`` as
given. For a model that adapts, every query the attack makes, like the verification, is ``reset()``
followed by a forward, so the attack differentiates exactly the function that is scored (a query never
sees a model already adapted to the attack's earlier iterates). An attack that queries subsets of ``x``
(pyautoattack's APGD and AutoAttack attack only the points still classified right) changes the batch the
defense sees: such queries are counted in ``info["partial_batch_queries"]`` and warned about; the
harness's default attacks for adapting models (transfer, ``pgd-eot``) query whole batches (see
:mod:`robustkit.eval.benchmark`).

Example::

    >>> import robustkit
    >>> from robustkit.attacks import PGD
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    >>> x, y = robustkit.load_dataset("digits", n_examples=16)
    >>> res = PGD(eps=0.1, steps=10, step_size=0.025, seed=0)(clf, x, y)
    >>> res.x_adv.shape, res.robust.dtype
    (torch.Size([16, 1, 8, 8]), torch.bool)
    >>> bool(((res.x_adv - x).abs() <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

import abc
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import torch
import torch.nn as nn

from ..classifier import Classifier, check_images, check_labels
from ..errors import InputError

Norm = Literal["Linf", "L2"]
NORMS = ("Linf", "L2")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``x_adv`` onto ``{x': ||x' - x||_norm <= eps} ∩ [0, 1]^d`` (per example).

    For L2 the ball projection is applied first, then the box clip, which keeps the result inside
    both sets (the clip can only shrink the perturbation's norm).

    Points already inside both sets are returned bit for bit: the projection never round-trips them
    through ``x + (x_adv - x)``, which in floating point is not ``x_adv`` (it moves ~1e-9 per pixel).
    That makes the projection idempotent, and wrapped attacks (pyautoattack) return exactly the points
    the original code returns, not points that differ from them in the last bits.
    """
    if norm == "Linf":
        # the Linf ball is a box: clamp coordinate-wise, as pyautoattack does (min/max, no subtraction)
        out = torch.clamp(x_adv, min=x - eps, max=x + eps)
    elif norm == "L2":
        delta = x_adv - x
        n = delta.flatten(1).norm(dim=1)
        outside = (n > eps).view(-1, *([1] * (x.dim() - 1)))
        scale = (eps / n.clamp_min(1e-12)).view(-1, *([1] * (x.dim() - 1)))
        out = torch.where(outside, x + delta * scale, x_adv)
    else:
        raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
    return out.clamp(0.0, 1.0)


def perturbation_norm(x_adv: torch.Tensor, x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example ``||x_adv - x||`` in the given norm."""
    d = (x_adv - x).flatten(1)
    return d.abs().amax(dim=1) if norm == "Linf" else d.norm(dim=1)


@contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then restore every submodule's own flag.

    ``module.train(was_training)`` would not restore: it sets the flag *recursively*, so a wrapper
    built around an eval-mode classifier (``nn.Module`` starts in training mode) would switch the
    wrapped classifier to training mode, and BatchNorm would then use batch statistics and update its
    running statistics on every later forward.
    """
    flags = [(m, m.training) for mod in modules if mod is not None for m in mod.modules()]
    for mod in modules:
        if mod is not None:
            mod.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass
class Perturbation:
    """What ``perturb`` may return instead of a bare tensor: the points plus attack-specific details
    (e.g. AutoAttack's per-sub-attack cascade), merged into ``AttackResult.info``."""

    x_adv: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes:
        x_adv: adversarial examples ``[N, C, H, W]``, inside the threat model.
        robust: bool ``[N]``: the model classified the example correctly both clean and (on the
            verification forward) under attack.
        clean_correct: bool ``[N]``: correct on the clean input.
        forwards, backwards: examples passed forward / backward through the model during the attack
            (verification excluded), i.e. the attack's cost in per-example model evaluations.
        info: the attack's protocol (name, norm, eps, steps, EOT, restarts, seed, ...) and extras.
        pred: long ``[N]``: the class predicted on the verification forward of ``x_adv`` (None when the
            result was built elsewhere).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    clean_correct: torch.Tensor
    forwards: int
    backwards: int
    info: dict[str, Any] = field(default_factory=dict)
    pred: torch.Tensor | None = None

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean()) if self.clean_correct.numel() else float("nan")


class _Counting(nn.Module):
    """Wraps a classifier and counts the examples it forwards and back-propagates.

    For a model that adapts at test time it also calls ``reset()`` before every query (the batch threat
    model): each query is then the very function the verification forward evaluates (``reset()`` +
    forward of the whole batch), instead of a model that has adapted to the attack's earlier iterates.
    For every model under the batch threat model it counts the queries on another number of points than
    the batch's.
    """

    def __init__(self, model: Classifier, batch_size: int):
        super().__init__()
        self.model = model
        self.reset_per_query = bool(model.traits.adapts_at_test_time)
        self.per_batch = bool(model.traits.batch_threat_model)
        self.batch_size = batch_size
        self.partial_batch_queries = 0  # queries of a batch-dependent model on fewer/more points than the batch
        self.forwards = 0
        self.backwards = 0

    @property
    def traits(self):
        """The wrapped classifier's traits, for attacks that adapt to them (e.g. PGD's ``early_stop="auto"``)."""
        return self.model.traits

    @property
    def num_classes(self) -> int:
        """The wrapped classifier's number of classes (e.g. AutoAttack validates its target count against it)."""
        return self.model.num_classes

    def _count_backward(self, n: int):
        def hook(grad: torch.Tensor) -> None:
            self.backwards += n
        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reset_per_query:
            self.model.reset()
        if self.per_batch:
            self.partial_batch_queries += int(x.shape[0] != self.batch_size)
        out = self.model(x)
        self.forwards += x.shape[0]
        if out.requires_grad:
            out.register_hook(self._count_backward(x.shape[0]))
        return out


class Attack(abc.ABC):
    """Base class of every attack; subclasses implement :meth:`perturb` only.

    Args:
        eps: perturbation budget in pixel space ([0, 1] images).
        norm: ``"Linf"`` or ``"L2"``.
        seed: seeds the attack's own ``torch.Generator`` (random starts, ...); the global RNG is untouched.
    """

    name = "attack"

    def __init__(self, *, eps: float, norm: Norm = "Linf", seed: int = 0):
        if norm not in NORMS:
            raise InputError(f"norm must be one of {NORMS}, got {norm!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise InputError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        self.norm: Norm = norm
        self.seed = int(seed)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override Attack.__call__; implement perturb()")

    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor | Perturbation:
        """Return adversarial examples for ``(x, y)`` (optionally with details as a :class:`Perturbation`);
        the caller projects and verifies them."""

    def protocol(self) -> dict[str, Any]:
        """The attack's settings as plain values, stored with every result."""
        return {"attack": self.name, "norm": self.norm, "eps": self.eps, "seed": self.seed}

    def __call__(self, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        if not isinstance(model, Classifier):
            raise InputError(f"model must be a robustkit Classifier (see robustkit.wrap_classifier), "
                             f"got {type(model).__name__}")
        check_images(x, model.input_shape)
        check_labels(y, x.shape[0], model.num_classes)
        with eval_mode(model):
            model.reset()
            counted = _Counting(model, x.shape[0])
            with torch.no_grad():
                clean_correct = model(x).argmax(1) == y
            model.reset()
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
            out = self.perturb(counted, x.detach(), y, generator)
            details = out.info if isinstance(out, Perturbation) else {}
            x_adv = (out.x_adv if isinstance(out, Perturbation) else out).detach()
            if x_adv.shape != x.shape:
                raise RuntimeError(f"{type(self).__name__}.perturb returned shape {tuple(x_adv.shape)}, "
                                   f"expected {tuple(x.shape)}")
            x_adv = project(x_adv, x, self.eps, self.norm)
            x_adv = torch.where(clean_correct.view(-1, *([1] * (x.dim() - 1))), x_adv, x)
            model.reset()
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
            robust = clean_correct & (pred == y)
        info = self.protocol()
        info["n_examples"] = int(x.shape[0])
        info["gradient"] = model.traits.gradient
        if counted.reset_per_query:
            info["test_time_state"] = "reset() before every query and before the verification forward"
        if counted.per_batch:
            info["partial_batch_queries"] = counted.partial_batch_queries
            if counted.partial_batch_queries:
                kind = "test-time-adapting" if counted.reset_per_query else "batch-dependent"
                warnings.warn(f"{type(self).__name__} queried the {kind} {type(model).__name__} "
                              f"{counted.partial_batch_queries} time(s) on a subset of the batch (e.g. only the "
                              "points not yet broken): the defense then sees a different batch than the "
                              "one that is scored, so the attack optimises the wrong function; prefer "
                              "full-batch attacks (pgd, pgd-eot) for such models", RuntimeWarning, stacklevel=2)
        info.update(details)
        return AttackResult(x_adv=x_adv, robust=robust, clean_correct=clean_correct,
                            forwards=counted.forwards, backwards=counted.backwards, info=info, pred=pred)
