"""The Classifier contract, shared by every model and every defense.

A :class:`Classifier` maps float images ``[N, C, H, W]`` in ``[0, 1]`` to logits ``[N, K]``.
Normalisation lives *inside* the classifier (the RobustBench convention), so every attack budget is
expressed in pixel space. ``traits`` declares what an evaluator must know to attack it honestly.

Example (a tiny model wrapped with its normalisation)::

    >>> import torch, torch.nn as nn
    >>> import robustkit
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    >>> clf = robustkit.wrap_classifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    ...                                 input_shape=(3, 4, 4))
    >>> clf.num_classes, clf.input_shape
    (5, (3, 4, 4))
    >>> clf(torch.rand(2, 3, 4, 4)).shape
    torch.Size([2, 5])
    >>> clf(torch.rand(2, 3, 4, 4) + 2)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    robustkit.errors.InputError: images must lie in [0, 1] ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn as nn

from .errors import InputError
from .utils import check_positive_int

__all__ = [
    "Classifier",
    "DefenseTraits",
    "InputError",
    "WrappedClassifier",
    "check_images",
    "check_labels",
    "wrap_classifier",
]

GradientMode = Literal["exact", "bpda", "surrogate"]
_GRADIENT_MODES = ("exact", "bpda", "surrogate")

#: Values this far outside [0, 1] are still accepted (float rounding in attacks' projections).
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class DefenseTraits:
    """What an evaluator must know about a classifier to attack it honestly.

    Attributes:
        stochastic: two forwards on the same input may disagree (e.g. diffusion purification).
            Such models need EOT attacks and repeated re-evaluation.
        adapts_at_test_time: the model changes its own state from the inputs it sees (e.g. TEA);
            ``reset()`` restores the initial state.
        gradient: how attacks obtain input gradients: ``"exact"`` (autograd through everything),
            ``"bpda"`` (identity through a non-differentiable part) or ``"surrogate"`` (gradients of
            a cheaper process than the one that predicts).
        forward_passes: network evaluations per prediction (RobustBench's ``number_forward_passes``).
        batch_dependent: an example's prediction depends on the other examples of its batch, with no
            state kept between forwards (e.g. contrastive-guided purification, whose negatives are the
            other images). The batch is then part of the defense: such a model is attacked and scored
            under the batch threat model (see :attr:`batch_threat_model`).
        generative: the logits are class-conditional likelihoods (a generative classifier, e.g. RDC's
            diffusion classifier): their gaps can run into the thousands and saturate the softmax, so
            cross-entropy gradients vanish. Attacks and sanity checks with ``loss="auto"`` then use the
            margin loss, and ``attacks="auto"`` relies on scale-free losses (margin / DLR).
    """

    stochastic: bool = False
    adapts_at_test_time: bool = False
    gradient: GradientMode = "exact"
    forward_passes: int = 1
    batch_dependent: bool = False
    generative: bool = False

    def __post_init__(self) -> None:
        if self.gradient not in _GRADIENT_MODES:
            raise InputError(f"gradient must be one of {_GRADIENT_MODES}, got {self.gradient!r}")
        check_positive_int("forward_passes", self.forward_passes)
        for name in ("stochastic", "adapts_at_test_time", "batch_dependent", "generative"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def batch_threat_model(self) -> bool:
        """True when a prediction depends on the batch (``batch_dependent``, or ``adapts_at_test_time``:
        the model adapts on the batch it sees). The harness then attacks each shard as one batch, never a
        subset, and re-evaluates it as that batch; attacks count (and warn about) queries on a subset.

        >>> DefenseTraits(batch_dependent=True).batch_threat_model, DefenseTraits().batch_threat_model
        (True, False)
        """
        return self.adapts_at_test_time or self.batch_dependent


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_images(x: object, input_shape: Sequence[int] | None = None, *, name: str = "images") -> torch.Tensor:
    """Validate a batch of images against the classifier contract and return it.

    Raises :class:`InputError` for: not a tensor, rank other than 4, wrong ``[C, H, W]``, a
    non-floating dtype, NaN/Inf, or values outside ``[0, 1]`` by more than ``RANGE_TOLERANCE``.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    expected = "[N, " + ", ".join(str(s) for s in input_shape) + "]" if input_shape else "[N, C, H, W]"
    if x.dim() != 4:
        raise InputError(f"expected {name} of shape {expected} (rank 4), got rank {x.dim()} shape {_shape(x)}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(f"expected {name} of shape {expected}, got {_shape(x)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype} "
                         "(convert uint8 images with x.float() / 255)")
    if x.numel() == 0:
        return x
    with torch.no_grad():  # validation only reads values; it must not enter the autograd graph
        if not bool(torch.isfinite(x).all()):
            n_bad = int((~torch.isfinite(x)).sum())
            raise InputError(f"{name} contain {n_bad} NaN/Inf value(s)")
        lo, hi = torch.aminmax(x)
        lo, hi = float(lo), float(hi)
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(f"{name} must lie in [0, 1] (tolerance {RANGE_TOLERANCE:g}), got values in "
                         f"[{lo:.6g}, {hi:.6g}]; normalisation belongs inside the classifier")
    return x


def check_labels(y: object, n: int, num_classes: int) -> torch.Tensor:
    """Validate integer labels for ``n`` examples of a ``num_classes``-way classifier."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"expected labels of shape [{n}], got {_shape(y)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be an integer tensor, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes - 1}], got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


class Classifier(nn.Module):
    """Base class: images ``[N, C, H, W]`` in ``[0, 1]`` → logits ``[N, K]``.

    Subclasses implement :meth:`logits`; :meth:`forward` validates the input first, so every model and
    defense rejects bad input the same way. Override :meth:`reset` if the model keeps test-time state.

    Shape:
        input ``[N, *input_shape]`` float in [0, 1]; output ``[N, num_classes]``.
    """

    traits: DefenseTraits = DefenseTraits()

    def __init__(self, num_classes: int, input_shape: Sequence[int], traits: DefenseTraits | None = None):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2, got {num_classes!r}")
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise InputError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
        self.num_classes = num_classes
        self.input_shape = input_shape
        if traits is not None:
            self.traits = traits

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Compute logits for already validated images."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.input_shape)
        return self.logits(x)

    def reset(self) -> None:
        """Drop test-time state (no-op for stateless models)."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, input_shape={self.input_shape}, traits={self.traits}"


def _as_channel_buffer(values: Sequence[float] | float | torch.Tensor, channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.repeat(channels)
    if t.numel() != channels:
        raise InputError(f"{what} must have 1 or {channels} values (one per channel), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} must be finite, got {t.tolist()}")
    return t.view(1, channels, 1, 1)


class WrappedClassifier(Classifier):
    """A plain network with its input normalisation inside: ``net((x - mean) / std)``.

    Built by :func:`wrap_classifier`; the network is ``self.net``.
    """

    def __init__(self, net: nn.Module, *, num_classes: int, input_shape: Sequence[int],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 traits: DefenseTraits | None = None):
        super().__init__(num_classes, input_shape, traits)
        self.net = net
        c = self.input_shape[0]
        self.normalize = mean is not None or std is not None
        mean_t = _as_channel_buffer(0.0 if mean is None else mean, c, "mean")
        std_t = _as_channel_buffer(1.0 if std is None else std, c, "std")
        if bool((std_t <= 0).any()):
            raise InputError(f"std must be positive, got {std_t.flatten().tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self.net(x)
        if out.dim() != 2 or out.shape[1] != self.num_classes:
            raise InputError(f"the wrapped network returned {_shape(out)}, expected [N, {self.num_classes}] logits")
        return out


def wrap_classifier(module: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                    traits: DefenseTraits | None = None, name: str | None = None) -> Classifier:
    """Make any ``nn.Module`` a :class:`Classifier` with normalisation inside.

    Args:
        module: maps normalised images to logits.
        mean, std: per-channel normalisation applied before ``module`` (None: identity).
        num_classes: number of logits; inferred by one forward on zeros when omitted.
        input_shape: ``(C, H, W)``; taken from ``module.input_shape`` when omitted, else required.
        traits: declared traits (default: deterministic, exact gradients, one forward pass).
        name: what records, reports and the leaderboard call the model (default: the module's class
            name, e.g. ``"ResNet"``); e.g. ``wrap_classifier(net, name="resnet50-at", ...)``.

    The module is put in eval mode; wrapping a :class:`Classifier` again is an error (its
    normalisation and validation already live inside).
    """
    if isinstance(module, Classifier):
        raise InputError("module is already a robustkit Classifier; wrap the underlying network instead")
    if not isinstance(module, nn.Module):
        raise InputError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if input_shape is None:
        input_shape = getattr(module, "input_shape", None)
        if input_shape is None:
            raise InputError("input_shape=(C, H, W) is required: it cannot be read from the module")
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 128
                             or not name.isprintable()):
        raise InputError(f"name must be a non-empty printable string of at most 128 characters, got {name!r:.80}")
    input_shape = tuple(int(s) for s in input_shape)
    if num_classes is None:
        num_classes = _infer_num_classes(module, input_shape, mean, std)
    clf = WrappedClassifier(module, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std,
                            traits=traits)
    clf.name = name if name is not None else type(module).__name__
    return clf.eval()


def _infer_num_classes(module: nn.Module, input_shape: tuple[int, ...], mean, std) -> int:
    probe = WrappedClassifier(module, num_classes=2, input_shape=input_shape, mean=mean, std=std)
    try:
        p = next(module.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = torch.full((2, *input_shape), 0.5, device=device, dtype=dtype)
            out = module((x - probe.mean.to(device, dtype)) / probe.std.to(device, dtype))
    finally:
        module.train(was_training)
    if out.dim() != 2 or out.shape[1] < 2:
        raise InputError(f"could not infer num_classes: the module returned {_shape(out)} for input "
                         f"[2, {', '.join(map(str, input_shape))}]; expected [N, K] logits with K >= 2")
    return int(out.shape[1])

