"""Registries of named classifiers (and, later, defenses), timm style.

An entry is a *factory function* that builds the bare network, plus a frozen config dataclass that says
everything else: input spec, normalisation, where the weights come from (with their sha256), licence,
paper. Per-checkpoint key adapters live in the entry (``ClassifierConfig.adapt_state_dict``), never in
the loader. ``create_classifier`` turns an entry into a ready :class:`~robustkit.Classifier`.

Example::

    >>> import robustkit
    >>> "tiny_cnn.digits" in robustkit.list_classifiers("*.digits")
    True
    >>> clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)  # bundled weights
    >>> clf.input_shape, clf.num_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterator, Mapping, TypeVar

import torch
import torch.nn as nn

from . import hub
from .classifier import Classifier, DefenseTraits, wrap_classifier
from .errors import CheckpointError, InputError, RegistryError
from .utils import check_bool, check_path, did_you_mean

log = logging.getLogger(__name__)

__all__ = [
    "ClassifierConfig",
    "Registry",
    "WeightSource",
    "RandomWeights",
    "create_classifier",
    "list_classifiers",
    "mark_random_weights",
    "random_weight_parts",
    "weights_status",
    "register_classifier",
    "resolve_weights",
]

T = TypeVar("T")
StateDictAdapter = Callable[[Mapping[str, torch.Tensor]], dict]


class Registry(Generic[T]):
    """Name → entry, with glob listing. Names are ``"<architecture>.<dataset>"``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise InputError(f"a {self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self._entries)
            raise RegistryError(f"unknown {self.kind} {name!r}{hint} (see robustkit list)") from None

    def names(self, pattern: str = "*") -> list[str]:
        if not isinstance(pattern, str):
            raise InputError(f"a name pattern must be a string (a glob such as '*.cifar10'), got {pattern!r}")
        return sorted(fnmatch.filter(self._entries, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))


@dataclass(frozen=True)
class WeightSource:
    """Where a checkpoint comes from.

    Attributes:
        filename: name of the file in ``$ROBUSTKIT_HOME/checkpoints/``.
        url: download URL (None: the file must be put there by hand).
        sha256: expected digest (None only when no published digest exists; a warning says so).
        package_file: ``(package, relative path)`` of weights shipped inside an installed Python
            package (robustkit's own bundled weights, or e.g. the ResNet-18 in the pyautoattack wheel).
        manual: where to get the file by hand when there is no ``url`` (e.g. the score_sde Google Drive
            folder); shown by ``robustkit list`` and in the error refusing random weights.
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    package_file: tuple[str, str] | None = None
    manual: str = ""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything about a registered classifier except how to build its network."""

    architecture: str
    dataset: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    weights: WeightSource | None = None
    adapt_state_dict: StateDictAdapter | None = None
    license: str = ""
    paper: str = ""
    source: str = ""
    notes: str = ""
    traits: DefenseTraits = field(default_factory=DefenseTraits)


@dataclass(frozen=True)
class _ClassifierEntry:
    name: str
    factory: Callable[[], nn.Module]
    config: ClassifierConfig


CLASSIFIERS: Registry[_ClassifierEntry] = Registry("classifier")


def register_classifier(name: str, config: ClassifierConfig) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator registering a factory (a named function returning the bare network) under ``name``."""

    def deco(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if getattr(factory, "__name__", "<lambda>") == "<lambda>":
            raise RegistryError("registry factories must be named functions, not lambdas")
        CLASSIFIERS.add(name, _ClassifierEntry(name, factory, config))
        return factory

    return deco


def list_classifiers(pattern: str = "*") -> list[str]:
    """Registered classifier names matching a glob pattern, sorted."""
    _ensure_models_registered()
    return CLASSIFIERS.names(pattern)


def classifier_config(name: str) -> ClassifierConfig:
    """The config of a registered classifier."""
    _ensure_models_registered()
    return CLASSIFIERS.get(name).config


def resolve_source(name: str, src: WeightSource, *, download: bool = True, what: str = "weights",
                   train_command: str = "") -> Path:
    """Path of the file ``src`` describes, verified; downloaded into the cache when missing.

    Order: a file inside an installed package; ``$ROBUSTKIT_HOME/checkpoints/<filename>``; the URL. Raises
    :class:`~robustkit.CheckpointError` naming the file and where to put it (and ``train_command``, when
    the entry has one). Shared by the classifier, score-model and defense registries.
    """
    if src.package_file is not None:
        path = _package_file(*src.package_file)
        if not path.is_file():
            raise CheckpointError(f"{what} of {name} should ship in the {src.package_file[0]} package as "
                                  f"{src.package_file[1]}, but {path} is missing; reinstall it"
                                  + (f" or rebuild it with `{train_command}`" if train_command else ""))
        return hub.verify_file(path, src.sha256)
    path = hub.home() / "checkpoints" / src.filename
    if src.sha256 is None:
        log.warning("%s: no published sha256 for %s; the file is checked only against the architecture's "
                    "state_dict layout", name, src.filename)
    if path.is_file():
        return hub.verify_file(path, src.sha256)
    if src.url is None or not download:
        raise CheckpointError(f"{what} of {name} not found: put {src.filename} at {path}"
                              + (f" (sha256 {src.sha256})" if src.sha256 else "")
                              + (f"; get it from {src.manual}" if src.manual else "")
                              + (f"; train them with `{train_command}`" if train_command else ""))
    return hub.download(src.url, path, digest=src.sha256)


def weights_status(src: WeightSource | None) -> str:
    """Where an entry's weights stand: ``"present"`` (bundled, or in the cache), ``"downloadable: URL"``,
    ``"manual: put FILE in DIR (from SOURCE)"`` or ``"none published"``. Looks at files only; downloads nothing.

    Example::

        >>> import robustkit
        >>> weights_status(robustkit.registry.classifier_config("tiny_cnn.digits").weights)
        'present'
    """
    if src is None:
        return "none published"
    if src.package_file is not None:
        try:
            return "present" if _package_file(*src.package_file).is_file() else f"missing from {src.package_file[0]}"
        except CheckpointError:
            return f"manual: pip install {src.package_file[0]}"
    if (hub.home() / "checkpoints" / src.filename).is_file():
        return "present"
    if src.url is not None:
        return f"downloadable: {src.url}"
    return f"manual: put {src.filename} in {hub.home() / 'checkpoints'}" + (f" (from {src.manual})" if src.manual else "")


def how_to_get_weights(name: str, src: WeightSource | None, *, train_command: str = "") -> str:
    """One clause telling a user how to get ``name``'s trained weights (for errors and warnings)."""
    if src is None:
        return (f"{name} publishes no weights: load yours with checkpoint=PATH"
                + (f" (train them with `{train_command}`)" if train_command else ""))
    status = weights_status(src)
    if status == "present":
        return "its weights are in place: build it with pretrained=True"
    if status.startswith("downloadable"):
        return f"pretrained=True downloads its weights from {src.url}"
    return f"{status.removeprefix('manual: ')}, then build it with pretrained=True"


@dataclass(frozen=True)
class RandomWeights:
    """Mark left on a module built without trained weights (see :func:`mark_random_weights`).

    Attributes:
        name: the registered name it was built from.
        how: how to get its trained weights (one clause).
        digest: :func:`~robustkit.utils.state_digest` at creation; a module whose weights still have this
            digest was never trained or loaded.
    """

    name: str
    how: str
    digest: str


def mark_random_weights(module: nn.Module, name: str, how: str) -> nn.Module:
    """Remember that ``module`` (built from registry entry ``name``) holds its random initialisation.

    :func:`~robustkit.benchmark` refuses a model holding such a module while its weights are unchanged
    (training or loading weights lifts the refusal); ``allow_random_weights=True`` overrides it.
    """
    from .utils import state_digest

    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        return module  # an architecture without storage (built on the meta device): nothing to benchmark
    module.random_weights = RandomWeights(name, how, state_digest(module))
    return module


def random_weight_parts(model: nn.Module) -> list[RandomWeights]:
    """The marks of ``model``'s sub-modules that still hold their random initialisation (outermost first)."""
    from .utils import state_digest

    return [m.random_weights for m in model.modules()
            if isinstance(getattr(m, "random_weights", None), RandomWeights) and state_digest(m) == m.random_weights.digest]


def resolve_weights(name: str, *, download: bool = True) -> Path:
    """Path of a registered classifier's weights, verified (see :func:`resolve_source`)."""
    _ensure_models_registered()
    src = CLASSIFIERS.get(name).config.weights
    if src is None:
        raise CheckpointError(f"{name} has no pretrained weights; pass checkpoint=PATH")
    return resolve_source(name, src, download=download)


def create_classifier(name: str, *, pretrained: bool = False,
                      checkpoint: str | os.PathLike | None = None) -> Classifier:
    """Build a registered classifier as a ready :class:`~robustkit.Classifier` in eval mode.

    Args:
        name: a name from :func:`list_classifiers`, e.g. ``"resnet20.cifar10"``.
        pretrained: load the entry's published weights (see :func:`resolve_weights`).
        checkpoint: load this file instead (``torch.load(weights_only=True)`` or safetensors), passed
            through the entry's key adapter, strictly: missing/unexpected keys raise
            :class:`~robustkit.CheckpointError` listing them.
    """
    _ensure_models_registered()
    entry = CLASSIFIERS.get(name)
    cfg = entry.config
    check_bool("pretrained", pretrained)
    check_path("checkpoint", checkpoint)
    if pretrained and checkpoint is not None:
        raise InputError("pass either pretrained=True or checkpoint=PATH, not both")
    net = entry.factory()
    path: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint)
    elif pretrained:
        path = resolve_weights(name)
    if path is not None:
        state = hub.load_state_dict_file(path)
        state = hub.adapt_state_dict(cfg.adapt_state_dict, state, source=str(path))
        hub.load_strict(net, state, source=str(path))
    clf = wrap_classifier(net, mean=cfg.mean, std=cfg.std, num_classes=cfg.num_classes,
                          input_shape=cfg.input_shape, traits=cfg.traits)
    clf.name = name
    clf.config = cfg
    clf.weights_path = str(path) if path is not None else None
    if path is None:  # an architecture to train; benchmark() refuses it as long as its weights stay random
        mark_random_weights(clf, name, how_to_get_weights(name, cfg.weights))
    return clf


def _package_file(package: str, relative: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {package!r} is not installed (it ships the weights {relative})")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _ensure_models_registered() -> None:
    # Importing robustkit.models registers its entries; done lazily so `import robustkit.registry` is cheap.
    from . import models  # noqa: F401
