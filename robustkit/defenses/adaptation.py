"""Test-time adaptation of BatchNorm layers: the shared machinery and the baselines source, BN and TENT.

A test-time-adapted classifier wraps a :class:`~robustkit.Classifier` whose network has BatchNorm layers.
On every forward it (1) normalises with the *current batch's* statistics (no running statistics), (2) takes
``steps`` Adam steps on the BatchNorm affine parameters (weight and bias; every other parameter is frozen)
to lower a method-specific unsupervised loss, and (3) predicts. TEA (:mod:`~robustkit.defenses.tea`) is the
same machinery with the energy loss.

* :class:`SourceClassifier` — no adaptation (the static model, running statistics);
* :class:`NormStatsClassifier` — BN adaptation: batch statistics, no optimisation (Schneider et al., NeurIPS
  2020; Nado et al. 2020);
* :class:`TentClassifier` — TENT: minimise the mean softmax entropy (Wang et al., ICLR 2021).

Attackability. The update is written as a differentiable function of the input: when ``x`` requires grad
and grad mode is on, the loss gradient is taken with ``create_graph=True`` and the Adam step is computed
out of place, so ``d logits / d x`` includes the path through the updated affine parameters (and through
the batch statistics). Gradients are therefore ``"exact"``. Note for evaluators: on Adam's first step the
update is ``lr * g / (|g| + eps)`` ≈ ``lr * sign(g)``, whose derivative is ~0; the path through the update
matters from the second (continual) step on. The committed state (parameters, Adam moments) is detached:
attacks differentiate the current batch's adaptation, not the history.

Shape:
    input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``. The prediction depends on the whole
    batch (batch statistics) and on the batches seen before (continual adaptation) unless ``episodic``.

Reference:
    Wang et al., Tent: Fully Test-time Adaptation by Entropy Minimization, ICLR 2021,
    https://github.com/DequanWang/tent; Schneider et al., Improving robustness against common corruptions
    by covariate shift adaptation, NeurIPS 2020.

Example (a tiny BatchNorm model, one TENT step)::

    >>> import torch, torch.nn as nn
    >>> import robustkit
    >>> from robustkit.defenses.adaptation import TentClassifier
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    >>> tent = TentClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)))
    >>> tent(torch.rand(5, 1, 8, 8)).shape, tent.num_adapted_parameters, int(tent.adam_step)
    (torch.Size([5, 3]), 8, 1)
    >>> tent.reset(); int(tent.adam_step)
    0
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.func import functional_call

from ..classifier import Classifier, DefenseTraits
from ..errors import InputError
from ..utils import replace_checked

__all__ = ["ADAPTERS", "AdaptationConfig", "NoNormLayersError", "NormStatsClassifier", "SourceClassifier",
           "TentClassifier", "TentConfig", "TestTimeAdaptedClassifier", "adam_update", "create_adapted_defense",
           "norm_affine_parameters", "softmax_entropy"]


class NoNormLayersError(InputError):
    """The classifier has no BatchNorm layer with affine parameters, so there is nothing to adapt."""


@dataclass(frozen=True)
class AdaptationConfig:
    """Hyperparameters shared by the gradient-based adapters (defaults: TENT's and TEA's CIFAR settings).

    Attributes:
        lr: Adam learning rate (1e-3 in both TENT's and TEA's CIFAR configs).
        betas, eps, weight_decay: the rest of Adam's settings (PyTorch defaults; ``OPTIM.BETA: 0.9``, WD 0).
        steps: optimiser steps per test batch (1).
        episodic: reset to the source state before every batch (False: continual adaptation).
        predict_after_update: predict with a fresh forward after the update (TEA's code) rather than
            returning the logits of the forward that computed the loss (TENT's code).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    steps: int = 1
    episodic: bool = False
    predict_after_update: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"lr must be positive, got {self.lr!r}")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise InputError(f"betas must lie in [0, 1), got {self.betas!r}")
        if not self.eps > 0 or self.weight_decay < 0:
            raise InputError(f"eps must be positive and weight_decay >= 0, got {self.eps!r}, {self.weight_decay!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise InputError(f"steps must be an int >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class TentConfig(AdaptationConfig):
    """TENT's settings (``cfgs/tent.yaml``): Adam lr 1e-3, 1 step, returns the adaptation forward's logits."""

    predict_after_update: bool = False


def norm_affine_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every BatchNorm weight and bias in ``module``, in module order."""
    out = []
    for mname, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            prefix = f"{mname}." if mname else ""
            out += [(f"{prefix}weight", m.weight), (f"{prefix}bias", m.bias)]
    return out


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy ``-sum_y p(y|x) log p(y|x)`` of the softmax of ``logits`` ``[N, K]`` → ``[N]``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                step: int, cfg: AdaptationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step written out of place, so it is differentiable in ``grad`` (``torch.optim.Adam``'s rule).

    ``step`` is the 1-based count after this step. Returns ``(new_param, new_exp_avg, new_exp_avg_sq)``.
    """
    b1, b2 = cfg.betas
    if cfg.weight_decay:
        grad = grad + cfg.weight_decay * param
    m = b1 * exp_avg + (1 - b1) * grad
    v = b2 * exp_avg_sq + (1 - b2) * grad * grad
    m_hat = m / (1 - b1 ** step)
    v_hat = v / (1 - b2 ** step)
    # clamp_min keeps sqrt's derivative finite where a gradient is exactly 0 (value change < 1e-15 << eps)
    return param - cfg.lr * m_hat / (v_hat.clamp_min(1e-30).sqrt() + cfg.eps), m, v


class _Logits(nn.Module):
    """``clf.logits`` as a module's forward, for :func:`torch.func.functional_call` (no range check:
    SGLD samples may leave [0, 1])."""

    def __init__(self, clf: Classifier):
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.logits(x)


class TestTimeAdaptedClassifier(Classifier):
    """Base class: BatchNorm with batch statistics plus Adam on the BN affine parameters, per test batch.

    Subclasses set ``config_class`` and implement :meth:`adaptation_loss`. The wrapped classifier is
    deep-copied into ``self.model`` (adapted); the original stays as ``self.base_classifier`` (static, for
    transfer attacks). State (parameters, Adam moments, step) lives in buffers, so ``.to()`` moves it and
    ``state_dict()`` captures it.

    Shape:
        input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``.

    Traits:
        adapts at test time; deterministic (given the state); exact gradients (see the module docstring);
        ``forward_passes`` = ``steps`` (+1 with ``predict_after_update``); backward passes are not counted.
    """

    __test__ = False  # not a pytest test class despite the name
    config_class: ClassVar[type[AdaptationConfig]] = AdaptationConfig

    def __init__(self, classifier: Classifier, config: AdaptationConfig | None = None, **overrides: Any):
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a robustkit Classifier, got {type(classifier).__name__} "
                             "(wrap a plain network with robustkit.wrap_classifier)")
        cfg = config if config is not None else self.config_class()
        if not isinstance(cfg, self.config_class):
            raise InputError(f"config must be a {self.config_class.__name__}, got {type(cfg).__name__}")
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
            if unknown:
                raise InputError(f"unknown {self.config_class.__name__} field(s): {', '.join(unknown)}")
            cfg = replace_checked(cfg, **overrides)
        super().__init__(classifier.num_classes, classifier.input_shape, self._traits_for(cfg))
        self.config = cfg
        self.base_classifier = classifier
        self.model = copy.deepcopy(classifier)
        self.model.requires_grad_(False)
        named = norm_affine_parameters(self.model)
        if not named:
            raise NoNormLayersError(
                f"{type(self).__name__} adapts BatchNorm affine parameters, but {type(classifier).__name__} has "
                "no BatchNorm layer with affine=True (LayerNorm/GroupNorm are not supported)")
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # batch statistics in train and eval mode alike (TENT's configure_model)
                m.track_running_stats = False
                m.running_mean = None
                m.running_var = None
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        for i, p in enumerate(self._params):
            p.requires_grad_(True)
            self.register_buffer(f"_init_{i}", p.detach().clone(), persistent=False)
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))

    @classmethod
    def _traits_for(cls, cfg: AdaptationConfig) -> DefenseTraits:
        # forward evaluations of the network per prediction (backward passes not counted)
        return DefenseTraits(adapts_at_test_time=True, gradient="exact",
                             forward_passes=cfg.steps + int(cfg.predict_after_update))

    # ------------------------------------------------------------------------------------------- state
    @property
    def num_adapted_parameters(self) -> int:
        """Number of scalars the adaptation changes (BN weights and biases)."""
        return sum(p.numel() for p in self._params)

    @property
    def adapted_parameter_names(self) -> list[str]:
        """Names (in ``self.model``) of the adapted parameters."""
        return list(self._names)

    def _moment(self, kind: str, i: int) -> torch.Tensor:
        return getattr(self, f"{kind}_{i}")

    def reset(self) -> None:
        """Restore the source parameters and a fresh Adam state (moments and step count zero)."""
        with torch.no_grad():
            for i, p in enumerate(self._params):
                p.copy_(self._moment("_init", i))
                self._moment("exp_avg", i).zero_()
                self._moment("exp_avg_sq", i).zero_()
            self.adam_step.zero_()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors that adaptation changes, by name: the adapted parameters, Adam's moments and step
        count (TEA adds its SGLD buffer). :meth:`snapshot_state` copies them, :meth:`restore_state` writes them."""
        out: dict[str, torch.Tensor] = {}
        for i, p in enumerate(self._params):
            out[f"param_{i}"] = p
            out[f"exp_avg_{i}"] = self._moment("exp_avg", i)
            out[f"exp_avg_sq_{i}"] = self._moment("exp_avg_sq", i)
        out["adam_step"] = self.adam_step
        return out

    def snapshot_state(self) -> dict[str, torch.Tensor]:
        """A copy of :meth:`state_tensors`. The defense's random stream is not part of it: re-evaluations of a
        stochastic defense must draw afresh. The test-time threat models of :mod:`robustkit.eval.tta` pin
        such a snapshot and restore it before every query and re-evaluation."""
        return {k: v.detach().clone() for k, v in self.state_tensors().items()}

    def restore_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a :meth:`snapshot_state` of this defense (same names and shapes, else InputError)."""
        live = self.state_tensors()
        if set(state) != set(live) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in live.items()):
            raise InputError(f"the state does not fit this {type(self).__name__} ({len(state)} tensors, "
                             f"{len(live)} expected, or other shapes): a snapshot of another defense or config?")
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(state[k])

    # ------------------------------------------------------------------------------------------- hooks
    def adaptation_loss(self, logits_fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits of x)``; ``logits_fn(z)`` evaluates the adapted network at the current parameters."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- forward
    def _logits_at(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(_Logits(self.model), {f"clf.{n}": p for n, p in zip(self._names, params)}, (x,))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.episodic:
            self.reset()
        if x.shape[0] == 0:
            return self.model.logits(x)
        # Differentiable update only when someone will differentiate: an input that requires grad.
        differentiable = torch.is_grad_enabled() and x.requires_grad
        # Fresh leaves (not the Parameters): the in-place commit below must not touch tensors the graph saved,
        # and an attack's backward must not accumulate .grad into the model.
        params = [p.detach().clone().requires_grad_(True) for p in self._params]
        logits = None
        with torch.enable_grad():  # adaptation needs gradients even inside an evaluator's no_grad()
            for _ in range(self.config.steps):
                loss, logits = self.adaptation_loss(lambda z, ps=params: self._logits_at(ps, z), x)
                grads = torch.autograd.grad(loss, params, create_graph=differentiable)
                step = int(self.adam_step) + 1
                new = []
                for i, (p, g) in enumerate(zip(params, grads)):
                    p_new, m, v = adam_update(p, g, self._moment("exp_avg", i), self._moment("exp_avg_sq", i),
                                              step, self.config)
                    with torch.no_grad():
                        self._moment("exp_avg", i).copy_(m)
                        self._moment("exp_avg_sq", i).copy_(v)
                    new.append(p_new if differentiable else p_new.detach())
                with torch.no_grad():
                    for p, p_new in zip(self._params, new):
                        p.copy_(p_new)
                    self.adam_step += 1
                params = new if differentiable else [p.detach().clone().requires_grad_(True) for p in self._params]
            if self.config.predict_after_update:
                if differentiable:
                    return self._logits_at(params, x)
                with torch.no_grad():
                    return self.model.logits(x)
        return logits if differentiable else logits.detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, config={self.config}"


class TentClassifier(TestTimeAdaptedClassifier):
    """TENT: one Adam step on the BN affine parameters minimising the mean softmax entropy per test batch.

    Shape:
        input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``.

    Traits:
        adapts at test time, deterministic, exact gradients, ``forward_passes`` 1 (plus one backward; 2 with
        ``predict_after_update``).

    Reference:
        Wang, Shelhamer, Liu, Olshausen, Darrell, Tent: Fully Test-time Adaptation by Entropy Minimization,
        ICLR 2021, https://github.com/DequanWang/tent (``tent.py``: returns the adaptation forward's logits).

    Example::

        >>> import torch, torch.nn as nn, robustkit
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
        >>> TentClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)))(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 3])
    """

    config_class = TentConfig

    def adaptation_loss(self, logits_fn, x):
        logits = logits_fn(x)
        return softmax_entropy(logits).mean(), logits  # TENT's objective: mean entropy over the batch


class NormStatsClassifier(TestTimeAdaptedClassifier):
    """BN adaptation: normalise with the test batch's statistics; no parameter is optimised.

    Shape:
        input ``[N, *input_shape]`` in [0, 1]; output ``[N, num_classes]``.

    Traits:
        adapts at test time (the prediction depends on the batch), deterministic, exact gradients (through
        the batch statistics), ``forward_passes`` 1. ``reset()`` is a no-op in effect.

    Reference:
        Schneider et al., Improving robustness against common corruptions by covariate shift adaptation,
        NeurIPS 2020; ``norm.py`` of https://github.com/DequanWang/tent (the "BN" baseline).

    Example::

        >>> import torch, torch.nn as nn, robustkit
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
        >>> NormStatsClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)))(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 3])
    """

    @classmethod
    def _traits_for(cls, cfg: AdaptationConfig) -> DefenseTraits:
        return DefenseTraits(adapts_at_test_time=True, gradient="exact", forward_passes=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x)  # BN layers were switched to batch statistics in __init__


class SourceClassifier(Classifier):
    """The source model without adaptation (running statistics, fixed parameters): the baseline "source".

    Same constructor as the adapters so benchmarks can treat all four alike; it has no hyperparameters, so
    ``config`` must be None and overrides are an error. ``base_classifier`` is the wrapped model itself.

    Traits:
        those of the wrapped classifier (normally deterministic, exact gradients, no adaptation).

    Example::

        >>> import torch, torch.nn as nn, robustkit
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        >>> SourceClassifier(robustkit.wrap_classifier(net, input_shape=(1, 8, 8)))(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3])
    """

    config_class: ClassVar[type[AdaptationConfig]] = AdaptationConfig

    def __init__(self, classifier: Classifier, config: AdaptationConfig | None = None, **overrides: Any):
        if not isinstance(classifier, Classifier):
            raise InputError(f"classifier must be a robustkit Classifier, got {type(classifier).__name__}")
        if config is not None or overrides:
            raise InputError("the source model has no adaptation hyperparameters: pass neither config nor overrides")
        super().__init__(classifier.num_classes, classifier.input_shape, classifier.traits)
        self.base_classifier = classifier
        self.config = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_classifier.logits(x)


def _adapters() -> dict[str, type[Classifier]]:
    from .tea import EnergyAdaptedClassifier

    return {"source": SourceClassifier, "BN": NormStatsClassifier, "TENT": TentClassifier,
            "TEA": EnergyAdaptedClassifier}


#: ``DefenseConfig.method`` → adapter class (filled lazily: TEA lives in its own module).
ADAPTERS = ("source", "BN", "TENT", "TEA")


def create_adapted_defense(name: str, *, pretrained: bool = False, classifier: Classifier | None = None,
                           **config_overrides: Any) -> Classifier:
    """Build a registered test-time-adaptation defense (``tea.resnet20.cifar10``, ``tent.*``, ``bn.*``).

    Args:
        name: a registered name whose method is one of :data:`ADAPTERS`.
        pretrained: load the registered classifier's published weights (the factory builds it).
        classifier: adapt this :class:`~robustkit.Classifier` instead of the entry's (e.g. one loaded from a
            local checkpoint with ``robustkit.create_classifier(..., checkpoint=PATH)``).
        **config_overrides: fields of the method's config dataclass, e.g. ``episodic=True``, ``seed=1``.

    Example::

        >>> from robustkit.defenses.adaptation import create_adapted_defense
        >>> tea = create_adapted_defense("tea.tiny_cnn.digits", pretrained=True, buffer_size=64, sgld_steps=2)
        >>> type(tea).__name__, tea.traits.stochastic, tea.config.sgld_step_size
        ('EnergyAdaptedClassifier', True, 0.1)
    """
    from .registry import builder_entry, stamp

    adapters = _adapters()
    entry = builder_entry(name, tuple(adapters), "a test-time adaptation", pretrained)
    if classifier is not None and not isinstance(classifier, Classifier):
        raise InputError(f"classifier must be a robustkit Classifier, got {type(classifier).__name__}")
    cls = adapters[entry.config.method]
    base = classifier if classifier is not None else entry.factory(pretrained)
    return stamp(cls(base, **config_overrides), name, entry.config, pretrained)
