"""The Attack contract: a final ``__call__`` around a subclass's ``perturb``.

``Attack.__call__(model, x, y)`` does, for every attack alike: input validation, eval mode, ``reset()``
of test-time state, counting of forward/backward passes, projection of the result onto the threat
model (norm ball ∩ [0, 1]), and verification with a fresh forward. Subclasses write only ``perturb``.

An attack never changes the model it attacks. Every query runs in eval mode (the counting wrapper
never passes a train/eval switch through to the classifier, and puts back in eval mode a model that an
attack switched by reaching past it); the verification forward runs in eval mode; the training flag of
every submodule is restored afterwards; and a state tensor that the attack changed on a model that does
not adapt at test time (e.g. BatchNorm statistics updated by a forward in training mode) is restored
before the verification, with a warning and ``info["model_state_restored"]``. Found with torchattacks,
which saves and restores "the model's" mode: a fresh wrapper is in training mode, so its attacks left the
classifier in training mode and the verification forward updated 57 BatchNorm tensors of a ResNet-20
and scored it in training mode (``tests/test_attacks_model_state.py`` runs every registered attack).

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
import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Union

import torch
import torch.nn as nn

from ..classifier import Classifier, check_images, check_labels, module_placement
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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state_dict (on the CPU, so a GPU run's memory is not doubled)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _restore(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> list[str]:
    """Put back every state tensor of ``model`` that differs from ``snapshot``; return their names."""
    state = model.state_dict()
    changed = [k for k, v in state.items()
               if k not in snapshot or v.shape != snapshot[k].shape or not torch.equal(v.detach().cpu(), snapshot[k])]
    with torch.no_grad():
        for k in changed:
            if k in snapshot and state[k].shape == snapshot[k].shape:
                state[k].copy_(snapshot[k])
    return changed


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
        # A fresh nn.Module is in training mode; attacks that save and restore "the model's" mode
        # (torchattacks) would then switch the classifier to training mode when they finish.
        self.training = False
        self.train_mode_queries = 0  # queries that found a submodule in training mode (put back in eval first)
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

    def train(self, mode: bool = True) -> "_Counting":
        """Set this wrapper's flag only: an attack never switches the wrapped classifier's mode."""
        self.training = bool(mode)
        return self

    def _count_backward(self, n: int):
        def hook(grad: torch.Tensor) -> None:
            self.backwards += n
        return hook

    def _to_eval(self) -> None:
        if any(m.training for m in self.model.modules()):  # e.g. torchattacks' set_model_training_mode
            self.train_mode_queries += 1
            self.model.eval()

    def _count(self, out: torch.Tensor, n: int) -> torch.Tensor:
        self.forwards += n
        if out.requires_grad:
            out.register_hook(self._count_backward(n))
        return out

    def draw_logits(self, x: torch.Tensor, draws: int) -> torch.Tensor:
        """``draws`` forwards of ``x`` as one batch (the model's ``draw_logits``; only for a model that
        ``batches_draws``, which excludes the batch threat model), counted as ``draws`` forwards."""
        self._to_eval()
        return self._count(self.model.draw_logits(x, draws), draws * x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reset_per_query:
            self.model.reset()
        if self.per_batch:
            self.partial_batch_queries += int(x.shape[0] != self.batch_size)
        self._to_eval()
        return self._count(self.model(x), x.shape[0])


#: forward-equivalents of one forward + backward (the backward of a network costs about twice its forward)
GRAD_COST = 3.0
log = logging.getLogger(__name__)

#: Default of the attacks' ``eot_batch``: ``"auto"`` sizes a batched EOT forward by its input, at most
#: :data:`AUTO_EOT_ELEMENTS` input values (256 CIFAR-10 images, 12,288 8×8 digits, 5 ImageNet images at
#: 224×224), so that memory grows with the image size as little as it does for CIFAR-10. A batched forward
#: never holds fewer rows than the attack's batch (one draw).
EOT_BATCH = "auto"
AUTO_EOT_ELEMENTS = 256 * 3 * 32 * 32

#: ``eot_batch``: rows (draws × examples) per batched forward, ``"auto"``, or None (all draws at once).
EotBatch = Union[int, None, Literal["auto"]]


def check_eot_batch(eot_batch: EotBatch) -> EotBatch:
    """Validate an ``eot_batch`` option: a positive int (rows per forward; 1: the draws one by one), ``"auto"``
    (:data:`EOT_BATCH`) or None (all draws at once)."""
    if eot_batch is None or eot_batch == "auto":
        return eot_batch
    if isinstance(eot_batch, bool) or not isinstance(eot_batch, int) or eot_batch < 1:
        raise InputError(f"eot_batch must be a positive int (rows per batched EOT forward), 'auto' or None, "
                         f"got {eot_batch!r}")
    return eot_batch


def draws_per_forward(x: torch.Tensor, draws: int, max_batch: EotBatch) -> int:
    """How many of ``draws`` EOT draws of the batch ``x`` one forward holds under ``max_batch`` (≥ 1)."""
    if max_batch is None:
        return draws
    n = max(x.shape[0], 1)
    rows = AUTO_EOT_ELEMENTS // max(x[0].numel() if x.shape[0] else 1, 1) if max_batch == "auto" else max_batch
    return max(1, min(draws, rows // n))


def batches_draws(model: nn.Module) -> bool:
    """Whether ``model`` (or the classifier inside the harness's counting wrapper) evaluates EOT draws as
    one batch (``draw_logits``, e.g. :class:`~robustkit.defenses.PurifiedClassifier` over DiffPure)."""
    inner = model.model if isinstance(model, _Counting) else model
    return bool(getattr(inner, "batches_draws", False))


def eot_chunks(model: nn.Module, x: torch.Tensor, draws: int, *,
               max_batch: EotBatch = EOT_BATCH) -> Iterator[torch.Tensor]:
    """The logits of ``draws`` EOT draws of ``x``, ``[e, N, K]`` per chunk of ``e`` draws, in draw order.

    For a model that :func:`batches_draws`, each chunk is one forward of ``x`` repeated ``e`` times with
    ``e · N <= max_batch`` rows (at least one draw; ``"auto"``: :data:`EOT_BATCH`; None: all draws at once),
    and equals ``e`` successive
    forwards draw for draw (up to the float rounding of a larger batch). Any other model is called once per
    draw, as a sequential EOT loop does. A classifier opts in by defining ``batches_draws`` (True) and
    ``draw_logits(x, draws) -> [draws, N, K]`` with that equality (as
    :meth:`~robustkit.defenses.PurifiedClassifier.draw_logits` does). Chunks are computed lazily, so a caller that differentiates each
    chunk before asking for the next holds one chunk's graph at a time.

    Shape:
        ``x`` ``[N, C, H, W]``; yields ``[e, N, K]`` with the ``e`` summing to ``draws``.
    """
    per = draws_per_forward(x, draws, max_batch) if batches_draws(model) else 1
    done = 0
    while done < draws:
        e = min(per, draws - done)
        yield model(x).unsqueeze(0) if e == 1 else model.draw_logits(x, e)
        done += e


def eot_logits(model: nn.Module, x: torch.Tensor, draws: int, *, max_batch: EotBatch = EOT_BATCH) -> torch.Tensor:
    """The logits of ``draws`` EOT draws of ``x``, ``[draws, N, K]`` (:func:`eot_chunks`, concatenated).

    Example::

        >>> import torch, robustkit
        >>> d = robustkit.create_defense("tiny_diffpure.digits", pretrained=True, t_star=0.02)
        >>> x, _ = robustkit.load_dataset("digits", n_examples=2)
        >>> eot_logits(d, x, 3).shape
        torch.Size([3, 2, 10])
    """
    return torch.cat(list(eot_chunks(model, x, draws, max_batch=max_batch)))


def _progress_range(n: int, what: str) -> Iterator[int]:
    from ..utils import progress_bar

    group = max(1, math.ceil(n / 10))
    t0 = time.perf_counter()
    bar = progress_bar(total=n, desc=what, unit="step")
    try:
        for i in range(n):
            yield i
            bar.update(1)
            if (i + 1) % group == 0 or i + 1 == n:
                log.info("%s: step %d/%d (%.0f s)", what, i + 1, n, time.perf_counter() - t0)
    finally:
        bar.close()


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

    def estimated_passes(self) -> float | None:
        """Upper bound on the attack's cost per example, in forward-equivalents of the attacked model (a
        forward counts 1, a forward with its backward ``GRAD_COST``), from its settings; None if unknown.
        Used to size the sanity checks against the attack budget (:mod:`robustkit.eval.checks`)."""
        return None

    def _steps(self, n: int, what: str | None = None) -> Iterator[int]:
        """``range(n)`` that shows progress: a tqdm bar on a terminal, and a log line (INFO, ``-v``) per
        group of about a tenth of the steps, with the time spent."""
        return _progress_range(n, what or self.name)

    def __call__(self, model: Classifier, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        if not isinstance(model, Classifier):
            raise InputError(f"model must be a robustkit Classifier (see robustkit.wrap_classifier), "
                             f"got {type(model).__name__}")
        device, dtype = module_placement(model)  # documented conversions: x to the model's dtype, y to int64
        x = check_images(x, model.input_shape, dtype=dtype, device=device)
        y = check_labels(y, x.shape[0], model.num_classes, device=x.device)
        with eval_mode(model):
            entry_state = {} if model.traits.adapts_at_test_time else _snapshot(model)
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
            # The verification scores the model as it was given, in eval mode: whatever the attack did to
            # a model that does not adapt (BatchNorm statistics updated in training mode, ...) is undone.
            # (A model that adapts at test time changes its state by design; reset() governs it.)
            model.eval()
            altered = [] if model.traits.adapts_at_test_time else _restore(model, entry_state)
            model.reset()
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
            robust = clean_correct & (pred == y)
        info = self.protocol()
        info["verification"] = "eval mode, reset(), one forward of the projected points"
        if counted.train_mode_queries:
            info["train_mode_queries_put_in_eval"] = counted.train_mode_queries
        if altered:
            info["model_state_restored"] = altered
            warnings.warn(f"{type(self).__name__} changed {len(altered)} state tensor(s) of "
                          f"{type(model).__name__} during the attack (first: {altered[0]}); they were restored "
                          "before the verification forward, so the score is the given model's, but the attack's "
                          "later queries saw a changed model", RuntimeWarning, stacklevel=2)
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
