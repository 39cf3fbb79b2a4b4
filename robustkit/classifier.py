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

import itertools
import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

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
    "kept_placement",
    "module_placement",
    "resolve_device",
    "wrap_classifier",
]

GradientMode = Literal["exact", "bpda", "surrogate"]
_GRADIENT_MODES = ("exact", "bpda", "surrogate")

#: Floating dtypes whose values are checked as they are; others (float8) are checked as float32.
_CHECKED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

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


def check_images(x: object, input_shape: Sequence[int] | None = None, *, name: str = "images",
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Validate a batch of images against the classifier contract and return it, converted.

    Raises :class:`InputError` for: not a tensor, a sparse or meta tensor, rank other than 4, wrong
    ``[C, H, W]``, a non-floating dtype (integer, bool, complex; uint8 gets a hint), NaN/Inf, values
    outside ``[0, 1]`` by more than ``RANGE_TOLERANCE``, or (with ``device``) images on another device.

    Conversion (documented, differentiable): with ``dtype`` given, floating images of another precision
    (float16, bfloat16, float64, float8) are returned as ``x.to(dtype)``, after the range check in their own
    precision. :meth:`Classifier.forward` passes the classifier's own dtype, so a float32 model accepts
    float16/bfloat16/float64 images and a float64 model float32 ones. Without ``dtype`` x is returned as is.

    >>> check_images(torch.full((1, 1, 2, 2), 0.5, dtype=torch.float16), dtype=torch.float32).dtype
    torch.float32
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided or x.device.type == "meta":
        raise InputError(f"{name} must be a dense tensor with values, got layout {x.layout} on {x.device}")
    expected = "[N, " + ", ".join(str(s) for s in input_shape) + "]" if input_shape else "[N, C, H, W]"
    if x.dim() != 4:
        raise InputError(f"expected {name} of shape {expected} (rank 4), got rank {x.dim()} shape {_shape(x)}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(f"expected {name} of shape {expected}, got {_shape(x)}")
    if not x.is_floating_point():
        hint = " (convert uint8 images with x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise InputError(f"{name} must be a floating-point tensor in [0, 1], got dtype {x.dtype}{hint}")
    if device is not None and x.device != device:
        raise InputError(f"{name} are on {x.device} but the classifier is on {device}; move them with "
                         f"x.to({str(device)!r})")
    if x.numel():
        with torch.no_grad():  # validation only reads values; it must not enter the autograd graph
            v = x if x.dtype in _CHECKED_DTYPES else x.float()  # float8 has no isfinite/aminmax kernels
            if not bool(torch.isfinite(v).all()):
                n_bad = int((~torch.isfinite(v)).sum())
                raise InputError(f"{name} contain {n_bad} NaN/Inf value(s)")
            lo, hi = torch.aminmax(v)
            lo, hi = float(lo), float(hi)
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise InputError(f"{name} must lie in [0, 1] (tolerance {RANGE_TOLERANCE:g}), got values in "
                             f"[{lo:.6g}, {hi:.6g}]; normalisation belongs inside the classifier")
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def check_labels(y: object, n: int, num_classes: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Validate integer labels for ``n`` examples of a ``num_classes``-way classifier; return them as int64.

    Conversion (documented): labels of any integer dtype (uint8 to uint64, int8 to int32) are returned as
    int64, and moved to ``device`` when given (the images' device). Floating, complex and bool labels,
    other shapes and values outside ``[0, num_classes - 1]`` raise :class:`InputError`.

    >>> check_labels(torch.tensor([1, 0], dtype=torch.uint8), 2, 10).dtype
    torch.int64
    """
    if not isinstance(y, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if y.layout != torch.strided or y.device.type == "meta":
        raise InputError(f"labels must be a dense tensor with values, got layout {y.layout} on {y.device}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"expected labels of shape [{n}], got {_shape(y)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be an integer tensor, got dtype {y.dtype}")
    y = y.to(device=device, dtype=torch.int64)  # first: uint16/32/64 have no min/max kernels
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes - 1}], got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


def resolve_device(device: object) -> torch.device:
    """``device`` (a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` or a CUDA
    index) as a ``torch.device`` this machine has; anything else raises :class:`InputError`.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    robustkit.errors.InputError: device must be cpu, cuda, cuda:N or mps, got 'gpu'
    """
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise InputError(f"device must be a string like 'cpu' or 'cuda:0' or a torch.device, got {device!r}")
    try:
        d = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {str(d)!r} asked for, but CUDA is not available here; use device='cpu'")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise InputError(f"device {str(d)!r} asked for, but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("device 'mps' asked for, but MPS is not available here; use device='cpu'")
    elif d.type != "cpu":
        raise InputError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    return d


def module_placement(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and dtype of a module's first floating parameter (else buffer); ``(None, None)`` if none."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None


@contextmanager
def kept_placement(*modules: nn.Module | None) -> Iterator[None]:
    """On exit (normal or by an exception) put every parameter, gradient and buffer of ``modules`` back on
    the device it had on entry, and every submodule's training flag back to its value on entry.

    Harnesses that move a caller's model (``benchmark(..., device=...)``) run inside it, so a failure
    (or a success) leaves the model where and what it was. Parameters keep their identity (``.data`` is
    moved, as ``Module.to`` does), so optimisers holding them stay valid.
    """
    saved = []
    for m in modules:
        if m is None:
            continue
        for sub in m.modules():
            saved.append((sub, sub.training,
                          {k: p.device for k, p in sub._parameters.items() if p is not None},
                          {k: b.device for k, b in sub._buffers.items() if b is not None}))
    try:
        yield
    finally:
        for sub, training, params, buffers in saved:
            sub.training = training
            for k, dev in params.items():
                p = sub._parameters.get(k)
                if p is not None and p.device != dev:
                    p.data = p.data.to(dev)
                    if p.grad is not None:
                        p.grad = p.grad.to(dev)
            for k, dev in buffers.items():
                b = sub._buffers.get(k)
                if b is not None and b.device != dev:
                    sub._buffers[k] = b.to(dev)


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
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if traits is not None and not isinstance(traits, DefenseTraits):
            raise InputError(f"traits must be a DefenseTraits or None, got {type(traits).__name__}")
        self.num_classes = num_classes
        self.input_shape = _check_input_shape(input_shape)
        if traits is not None:
            self.traits = traits

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Compute logits for already validated images."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` (:func:`check_images`: images on the classifier's device; float16, bfloat16
        and float64 converted to its dtype) and return :meth:`logits`."""
        device, dtype = module_placement(self)
        return self.logits(check_images(x, self.input_shape, dtype=dtype, device=device))

    def reset(self) -> None:
        """Drop test-time state (no-op for stateless models)."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, input_shape={self.input_shape}, traits={self.traits}"


def _check_input_shape(input_shape: object) -> tuple[int, int, int]:
    """``(C, H, W)``: a list, tuple or ``torch.Size`` of three positive ints."""
    bad = InputError(f"input_shape must be (C, H, W), three positive ints, got {input_shape!r}")
    if not isinstance(input_shape, (tuple, list, torch.Size)) or len(input_shape) != 3:
        raise bad
    try:  # ints of any kind (numpy's too), never floats, strings or bools
        dims = tuple(operator.index(s) for s in input_shape if not isinstance(s, bool))
    except TypeError:
        raise bad from None
    if len(dims) != 3 or min(dims) < 1:
        raise bad
    return dims


def _as_channel_buffer(values: Sequence[float] | float | torch.Tensor, channels: int, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(values, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what} must be a number or one number per channel, got {values!r}") from None
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
        if not isinstance(out, torch.Tensor):
            raise InputError(f"the wrapped network returned a {type(out).__name__}, expected a tensor of logits")
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
    input_shape = _check_input_shape(input_shape)
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
    except Exception as e:  # the user's module on a probe input: its failure is a wrong input_shape (or module)
        raise InputError(f"could not infer num_classes: the module fails on input [2, {', '.join(map(str, input_shape))}]"
                         f" ({type(e).__name__}: {' '.join(str(e).split())}); check input_shape") from e
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
        got = _shape(out) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise InputError(f"could not infer num_classes: the module returned {got} for input "
                         f"[2, {', '.join(map(str, input_shape))}]; expected [N, K] logits with K >= 2")
    return int(out.shape[1])

