"""The registry of named defenses, timm style: a config dataclass plus a named factory function.

An entry's factory builds the defense's *diffusion model* (a :class:`~robustkit.diffusion.ScoreModel`),
loading its weights when asked; the :class:`DefenseConfig` says everything else: the purifier's
hyperparameters (paper defaults), which registered classifier sits behind it, the gradient mode and
voting, and where the weights come from. :func:`create_defense` assembles the ready
:class:`~robustkit.defenses.PurifiedClassifier`.

Missing weights behave as in :func:`robustkit.create_classifier`: a file found in
``$ROBUSTKIT_HOME/checkpoints/`` is verified, a missing one is downloaded when the entry has a URL, and
otherwise (or offline) a :class:`~robustkit.CheckpointError` names the file and where to put it.

Example::

    >>> import robustkit
    >>> "diffpure.cifar10" in robustkit.list_defenses()
    True
    >>> robustkit.defenses.defense_config("diffpure_l2.cifar10").purifier.t_star
    0.075
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..classifier import Classifier
from ..errors import InputError, RegistryError
from ..registry import Registry, WeightSource, create_classifier, resolve_source
from ..utils import check_bool, check_keyword_types, replace_checked
from .diffpure import DiffPureConfig, DiffPurePurifier
from .purification import GRADIENT_MODES, VOTES, PurifiedClassifier


__all__ = ["DefenseConfig", "DEFENSES", "EvaluationBudget", "create_defense", "create_diffpure", "defense_config",
           "list_defenses", "register_builder", "register_defense", "resolve_defense_weights"]


@dataclass(frozen=True)
class EvaluationBudget:
    """A registry entry's default evaluation budget: what :func:`robustkit.benchmark` and ``robustkit bench``
    use for each option the user does not give, instead of the presets' full budget.

    For the tiny teaching entries, whose full protocol (AutoAttack ``rand`` and ``standard`` plus PGD-EOT at
    the papers' budgets, over the whole test split) would take days on a laptop CPU. The user's own options
    always win, key by key; ``benchmark(..., entry_budget=False)`` (``robustkit bench --full-budget``) ignores
    the entry's budget altogether. What was filled in from here is logged as a warning and stored in the
    record (``defense_config["default_budget"]``); the attacks' protocols in the record state what ran.

    Attributes:
        n_examples: examples evaluated when the user gives none (nor ``indices`` or ``data``); None: all.
        n_reeval: re-classifications per example of a stochastic defense; None: benchmark's default (10).
        probe_size: examples the sanity checks run on; None: benchmark's default (16).
        attack_options: per-attack preset overrides, ``{"pgd-eot": {"steps": 10}}``, used for the attacks
            that run, under the user's ``attack_options``.
        check_options: the sanity checks' budget (``steps``, ``eot``, ``square_queries``, ``loss``), under the
            user's ``check_options``; keys not given are sized to the attack budget as usual
            (:func:`~robustkit.eval.checks.plan_check_budget`).
        note: why the budget is reduced and how its cost was measured (shown with the warning).

    Example::

        >>> from robustkit.defenses import defense_config
        >>> defense_config("tiny_diffpure.digits").default_budget.n_examples
        32
        >>> defense_config("diffpure.cifar10").default_budget is None
        True
    """

    n_examples: int | None = None
    n_reeval: int | None = None
    probe_size: int | None = None
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    check_options: dict[str, Any] = field(default_factory=dict, hash=False)
    note: str = ""

    def __post_init__(self) -> None:
        for label in ("n_examples", "n_reeval", "probe_size"):
            value = getattr(self, label)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"EvaluationBudget.{label} must be a positive int or None, got {value!r}")
        if not isinstance(self.attack_options, dict) or not all(
                isinstance(a, str) and isinstance(o, dict) and all(isinstance(k, str) for k in o)
                for a, o in self.attack_options.items()):
            raise InputError(f"EvaluationBudget.attack_options must map attack names to {{option: value}} dicts, "
                             f"got {self.attack_options!r}")
        from ..eval.checks import validate_check_options

        if "probe_size" in self.check_options:
            raise InputError("EvaluationBudget: give the probe size as probe_size, not in check_options")
        validate_check_options(self.check_options)


@dataclass(frozen=True)
class DefenseConfig:
    """Everything about a registered purification defense except how to build its diffusion model.

    Attributes:
        method: the method's name (``"DiffPure"``).
        dataset: the dataset it defends (``"cifar10"``, ``"imagenet"``, ``"digits"``).
        input_shape: ``(C, H, W)`` of the defended classifier's inputs.
        classifier: registered classifier name behind the purifier; None: the user must pass one, unless
            ``generative``.
        generative: the diffusion model itself classifies (RDC: Bayes' rule over its class-conditional
            losses), so no classifier is behind it and ``classifier`` must be None.
        purifier: the purifier's hyperparameters (paper defaults).
        weights: the diffusion model's checkpoint (None when the factory gets it elsewhere, e.g. from
            the diffusion-model registry).
        score_model: what the factory builds, in words (architecture and source).
        gradient, n_samples, vote: defaults of :class:`~robustkit.defenses.PurifiedClassifier`.
        paper, source, license, notes: provenance.
        default_budget: the entry's reduced default evaluation budget (:class:`EvaluationBudget`), for
            the tiny teaching entries; None (every real entry): the attack presets' full budget.
    """

    method: str
    dataset: str
    input_shape: tuple[int, int, int]
    classifier: str | None
    generative: bool = False
    purifier: DiffPureConfig = field(default_factory=DiffPureConfig)
    weights: WeightSource | None = None
    score_model: str = ""
    gradient: str = "exact"
    n_samples: int = 1
    vote: str = "logits"
    paper: str = ""
    source: str = ""
    license: str = ""
    notes: str = ""
    default_budget: EvaluationBudget | None = None

    def __post_init__(self) -> None:
        if self.default_budget is not None and not isinstance(self.default_budget, EvaluationBudget):
            raise InputError(f"default_budget must be an EvaluationBudget or None, got "
                             f"{type(self.default_budget).__name__}")
        if self.generative and self.classifier is not None:
            raise InputError(f"a generative defense classifies with its diffusion model; classifier must be None, "
                             f"got {self.classifier!r}")
        if self.gradient not in GRADIENT_MODES:
            raise InputError(f"gradient must be one of {GRADIENT_MODES}, got {self.gradient!r}")
        if self.vote not in VOTES:
            raise InputError(f"vote must be one of {VOTES}, got {self.vote!r}")


#: ``factory(pretrained) -> ScoreModel``: the diffusion model, with its published weights when asked.
DefenseFactory = Callable[[bool], nn.Module]


@dataclass(frozen=True)
class _DefenseEntry:
    name: str
    factory: DefenseFactory
    config: DefenseConfig


DEFENSES: Registry[_DefenseEntry] = Registry("defense")


def register_defense(name: str, config: DefenseConfig) -> Callable[[DefenseFactory], DefenseFactory]:
    """Decorator registering a factory ``factory(pretrained) -> ScoreModel`` under ``name``."""
    if not isinstance(config, DefenseConfig):
        raise RegistryError(f"config of {name!r} must be a DefenseConfig, got {type(config).__name__}")

    def deco(factory: DefenseFactory) -> DefenseFactory:
        if getattr(factory, "__name__", "<lambda>") == "<lambda>":
            raise RegistryError("registry factories must be named functions, not lambdas")
        DEFENSES.add(name, _DefenseEntry(name, factory, config))
        return factory

    return deco


def list_defenses(pattern: str = "*") -> list[str]:
    """Registered defense names matching a glob pattern, sorted."""
    return DEFENSES.names(pattern)


def defense_config(name: str) -> DefenseConfig:
    """The config of a registered defense."""
    return DEFENSES.get(name).config


def resolve_defense_weights(name: str, source: WeightSource, *, download: bool = True) -> Path:
    """Path of a defense's diffusion checkpoint, verified; downloaded into the cache when missing.

    Looks in ``$ROBUSTKIT_HOME/checkpoints/<filename>``, then the URL; raises
    :class:`~robustkit.CheckpointError` naming the file and the place to put it.
    """
    return resolve_source(name, source, download=download, what="diffusion weights")


#: method → ``builder(name, *, pretrained, **options) -> Classifier``; each defense family registers its own
#: (see :mod:`robustkit.defenses.zoo`), so :func:`create_defense` builds every registered name.
_BUILDERS: dict[str, Callable[..., Classifier]] = {}


def register_builder(method: str, builder: Callable[..., Classifier]) -> None:
    """Make :func:`create_defense` build the entries whose ``DefenseConfig.method`` is ``method`` with ``builder``."""
    if getattr(builder, "__name__", "<lambda>") == "<lambda>":
        raise RegistryError("defense builders must be named functions, not lambdas")
    if _BUILDERS.get(method, builder) is not builder:
        raise RegistryError(f"method {method!r} already has the builder {_BUILDERS[method].__name__}")
    _BUILDERS[method] = builder


def builder_entry(name: str, methods: tuple[str, ...], kind: str, pretrained: object) -> _DefenseEntry:
    """For a builder: the registry entry of ``name``, which must be of one of ``methods`` (else an
    InputError calling it "not a ``kind`` defense"), with ``pretrained`` checked to be a bool."""
    entry = DEFENSES.get(name)
    if entry.config.method not in methods:
        raise InputError(f"{name} is not {kind} defense (method {entry.config.method!r}); use create_defense")
    check_bool("pretrained", pretrained)
    return entry


def check_classifier_argument(name: str, cfg: DefenseConfig, classifier: object) -> None:
    """For a purification builder, before anything is loaded: ``classifier`` is None (then the entry must
    name one), a registered name, or a Classifier taking the entry's input shape."""
    if classifier is None and cfg.classifier is None:
        raise InputError(f"{name} has no registered classifier: pass classifier=<a robustkit Classifier taking "
                         f"[N, {', '.join(map(str, cfg.input_shape))}] images in [0, 1]> "
                         f"(e.g. robustkit.wrap_classifier(torchvision_resnet50, mean=..., std=...))")
    if classifier is not None and not isinstance(classifier, (Classifier, str)):
        raise InputError(f"classifier must be a robustkit Classifier or a registered name, got "
                         f"{type(classifier).__name__}")
    if isinstance(classifier, Classifier) and tuple(classifier.input_shape) != tuple(cfg.input_shape):
        raise InputError(f"{name} defends [N, {', '.join(map(str, cfg.input_shape))}] images; the classifier takes "
                         f"[N, {', '.join(map(str, classifier.input_shape))}]")


def resolve_classifier(cfg: DefenseConfig, classifier: Classifier | str | None, pretrained: bool) -> Classifier:
    """The classifier a purification builder wraps: the one given, else the named or registered one."""
    if isinstance(classifier, Classifier):
        return classifier
    return create_classifier(classifier if isinstance(classifier, str) else cfg.classifier, pretrained=pretrained)


def resolve_score_model(name: str, score_model: nn.Module | str | Path | None, score_checkpoint: str | Path | None,
                        pretrained: bool) -> nn.Module | None:
    """For a diffusion-defense builder: the score model replacing entry ``name``'s (None: keep the entry's).

    ``score_model`` is a module (used as given), a training run's folder (:func:`~robustkit.diffusion.load_trained`)
    or a registered score-model name, built by :func:`~robustkit.diffusion.create_score_model` from
    ``score_checkpoint`` when given, else with its published weights when ``pretrained``, else randomly
    initialised. The arguments are checked before anything is loaded; ``score_checkpoint`` comes only with
    a name, and must be a file.
    """
    from ..diffusion.train import load_trained
    from ..diffusion.zoo import SCORE_MODELS, create_score_model

    if isinstance(score_model, Path):
        score_model = str(score_model)
    if score_model is not None and not isinstance(score_model, (str, nn.Module)):
        raise InputError(f"score_model must be a registered score-model name, a training run's folder or a "
                         f"torch.nn.Module (a robustkit ScoreModel), got {type(score_model).__name__}")
    run_dir = isinstance(score_model, str) and Path(score_model).is_dir()
    if isinstance(score_model, str) and Path(score_model).is_file():
        raise InputError(f"score_model {score_model} is a file: pass the architecture's registered name as "
                         "score_model and the file as score_checkpoint, or the training run's folder as score_model")
    if isinstance(score_model, str) and not run_dir:
        SCORE_MODELS.get(score_model)  # an unknown name: RegistryError with the nearest names
    if score_checkpoint is not None:
        if run_dir:
            raise InputError(f"score_model {score_model} is a training run's folder, which has its own weights "
                             "(ema.safetensors): drop score_checkpoint")
        if not isinstance(score_model, str):
            raise InputError(f"score_checkpoint loads weights into a registered score model: pass "
                             f"score_model=NAME as well (robustkit list score-models); {name}'s own model takes "
                             "no checkpoint here")
        if not isinstance(score_checkpoint, (str, Path)) or not Path(score_checkpoint).is_file():
            raise InputError(f"score_checkpoint {score_checkpoint!r} is not a file")
    if run_dir:
        return load_trained(score_model)
    if isinstance(score_model, str):
        return create_score_model(score_model, pretrained=pretrained and score_checkpoint is None,
                                  checkpoint=score_checkpoint)
    return score_model


def stamp(defense: Classifier, name: str, cfg: DefenseConfig, pretrained: bool) -> Classifier:
    """What every builder's result carries (its registry name, config and weights flag), in eval mode."""
    defense.name = name
    defense.defense_config = cfg
    defense.pretrained = pretrained
    return defense.eval()


def create_defense(name: str, *, pretrained: bool = False, **options: Any) -> Classifier:
    """Build any registered defense (eval mode), with the builder of its method.

    Args:
        name: a name from :func:`list_defenses`, e.g. ``"diffpure.cifar10"``, ``"tiny_rdc.digits"``,
            ``"tea.resnet20.cifar10"``.
        pretrained: load the published weights (missing files: a :class:`~robustkit.CheckpointError` saying
            which file to put where).
        **options: the method's own options, checked by its builder: :func:`create_diffpure` (DiffPure),
            :func:`~robustkit.defenses.create_contrastive_purification`, :func:`~robustkit.defenses.create_rdc`,
            :func:`~robustkit.defenses.create_adapted_defense` (TEA, TENT, BN).

    Example::

        >>> import robustkit
        >>> tent = robustkit.create_defense("tent.tiny_cnn.digits", pretrained=True)
        >>> tent.traits.adapts_at_test_time
        True
    """
    method = DEFENSES.get(name).config.method
    if method not in _BUILDERS:
        raise RegistryError(f"{name}: no builder is registered for its method {method!r}")
    check_keyword_types(_BUILDERS[method], options)  # seed="x" is a typed error, not a TypeError deep inside
    return _BUILDERS[method](name, pretrained=pretrained, **options)


def create_diffpure(name: str, *, pretrained: bool = False, classifier: Classifier | str | None = None,
                   score_model: nn.Module | str | Path | None = None, score_checkpoint: str | Path | None = None,
                   gradient: str | None = None, n_samples: int | None = None, vote: str | None = None,
                   seed: int | None = None, **purifier_overrides: Any) -> PurifiedClassifier:
    """Build a registered DiffPure defense as a ready :class:`~robustkit.defenses.PurifiedClassifier` (eval mode).

    Args:
        name: a registered DiffPure name, e.g. ``"diffpure.cifar10"``.
        pretrained: load the published diffusion weights and the registered classifier's weights
            (missing files: see the module docstring). False builds randomly initialised networks.
        classifier: a :class:`~robustkit.Classifier` or a registered classifier name replacing the entry's
            (required when the entry has none, e.g. ``diffpure.imagenet``).
        score_model: a :class:`~robustkit.diffusion.ScoreModel`, a registered score-model name (e.g.
            ``"dit_tiny.digits"``) or the folder of a finished ``robustkit train-diffusion`` run (U-Net,
            DiT or DiffuSSM; :func:`~robustkit.diffusion.load_trained`) replacing the entry's diffusion
            model; it must take the entry's image shape (or ``resize``) and be trained on the purifier's
            VP schedule. The record names it (``config.score_model``).
        score_checkpoint: weights for the named ``score_model`` (safetensors, a state dict or a training
            checkpoint of :func:`~robustkit.diffusion.train`); without it, ``pretrained`` decides.
        gradient, n_samples, vote: override the entry's :class:`PurifiedClassifier` settings.
        seed: the defense's private generator seed (None: per-forward seeds from torch's global RNG).
        **purifier_overrides: :class:`~robustkit.defenses.DiffPureConfig` fields to replace, e.g.
            ``t_star=0.05`` or ``sampler="ode"`` (the record stores the resulting config).
    """
    entry = builder_entry(name, ("DiffPure",), "a DiffPure", pretrained)
    cfg = entry.config
    unknown = sorted(set(purifier_overrides) - {f.name for f in dataclasses.fields(DiffPureConfig)})
    if unknown:
        raise InputError(f"unknown argument(s) {', '.join(unknown)}: {name} (DiffPure) takes pretrained, classifier, "
                         f"score_model, score_checkpoint, gradient, n_samples, vote, seed and DiffPureConfig fields")
    purifier_cfg = replace_checked(cfg.purifier, **purifier_overrides) if purifier_overrides else cfg.purifier
    # Cheap checks first: nothing is loaded before the arguments are known to be usable.
    check_classifier_argument(name, cfg, classifier)
    model = resolve_score_model(name, score_model, score_checkpoint, pretrained)
    if model is None:
        model = entry.factory(pretrained)
    clf = resolve_classifier(cfg, classifier, pretrained)
    defense = PurifiedClassifier(DiffPurePurifier(model, purifier_cfg), clf, gradient=gradient or cfg.gradient,
                                 n_samples=cfg.n_samples if n_samples is None else n_samples,
                                 vote=vote or cfg.vote, seed=seed)
    return stamp(defense, name, cfg, pretrained)
