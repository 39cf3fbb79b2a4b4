"""``benchmark()``'s arguments, checked before anything runs, and the caller's model kept in place.

:func:`checked_benchmark` decorates :func:`robustkit.benchmark`: it validates every argument (types,
ranges, and ``eps`` against the threat model and the data range, :func:`check_eps`) and raises
:class:`~robustkit.InputError` naming the argument before a model is moved, a dataset loaded or a run
directory written; then it runs the benchmark inside :func:`~robustkit.classifier.kept_placement`, so
afterwards (whether it finished or failed) the defense and the base classifier are on the devices and
in the training modes they had; after a failure the defense is also ``reset()`` (no adapted test-time
state is left behind).

Example::

    >>> check_eps(8 / 255, "Linf", (3, 32, 32))
    >>> check_eps(8, "Linf", (3, 32, 32))  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    robustkit.errors.InputError: a Linf eps of 8 is >= 1 ...; did you mean 8/255?
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from ..classifier import Classifier, kept_placement, resolve_device
from ..errors import InputError
from ..utils import check_bool, check_path, check_positive_int

F = TypeVar("F", bound=Callable[..., Any])

#: Largest seed: seeds are stored in records and fed to ``torch.manual_seed`` (a 64-bit signed range).
MAX_SEED = 2 ** 63 - 1


def _hint_255(eps: float) -> str:
    k = round(eps)
    return f"; did you mean {k}/255 (= {k / 255:.4g})?" if abs(eps - k) < 1e-9 and 1 <= k <= 255 else ""


def check_eps(eps: float, threat_model: str, input_shape: Sequence[int]) -> None:
    """Refuse a budget that no image in ``[0, 1]^input_shape`` can use.

    A Linf eps >= 1 lets the attack reach every image (pixels lie in [0, 1]; a budget in 0-255 units is
    the usual mistake, hence the hint "did you mean 8/255?"). An L2 eps >= ``sqrt(C·H·W)``, the largest
    distance between two such images, likewise. Non-finite budgets are refused.
    """
    if not math.isfinite(eps) or eps <= 0:
        raise InputError(f"eps must be a positive finite number, got {eps!r}")
    if threat_model == "Linf" and eps >= 1:
        raise InputError(f"a Linf eps of {eps:g} is >= 1: pixels lie in [0, 1], so it allows any image; eps is in "
                         f"[0, 1] pixel units{_hint_255(eps)}")
    if threat_model == "L2":
        d = math.prod(int(s) for s in input_shape)
        diameter = math.sqrt(d)
        if eps >= diameter:
            raise InputError(f"an L2 eps of {eps:g} is >= {diameter:.4g}, the largest distance between two images "
                             f"of shape {tuple(input_shape)} in [0, 1]: it allows any image{_hint_255(eps)}")


def _check_dir(name: str, value: object) -> None:
    check_path(name, value)
    if value is not None and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise InputError(f"{name} {str(value)!r} names a file, not a directory")


def _check_int_sequence(name: str, value: object) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InputError(f"{name} must be a list, tuple or range of ints, got {type(value).__name__}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise InputError(f"{name} must hold ints, got {sorted({type(i).__name__ for i in value})}")
    if any(i < 0 for i in value):
        raise InputError(f"{name} must be non-negative, got {min(value)}")
    if len(set(value)) != len(value):
        raise InputError(f"{name} must be distinct: each example is scored once")


def check_attack_options(options: Mapping[str, Mapping[str, Any]], attacks: Sequence[str], eps: float,
                         norm: str) -> None:
    """Every attack named in ``options`` is run, and builds with its overrides: a misspelt attack or
    parameter fails now, not inside the first shard (``transfer``'s own option ``attack`` names the
    attack run on the base model)."""
    from ..attacks import make_attack

    unused = sorted(set(options) - set(attacks))
    if unused:
        raise InputError(f"attack options name attack(s) not run: {', '.join(map(str, unused))} (attacks: "
                         f"{', '.join(attacks)})")
    for name, opts in options.items():
        opts = dict(opts)
        if name == "transfer":
            name = opts.pop("attack", "autoattack-standard")
        try:
            make_attack(name, eps=eps, norm=norm, **opts)
        except TypeError as e:
            raise InputError(f"attack options for {name}: {e}") from None


def check_benchmark_arguments(a: Mapping[str, Any]) -> None:
    """Validate the bound arguments of :func:`robustkit.benchmark` (all of them, defaults applied)."""
    from .benchmark import EXECUTORS, parse_eps

    defense = a["defense"]
    if not isinstance(defense, Classifier):
        raise InputError(f"defense must be a robustkit Classifier (see robustkit.wrap_classifier), got "
                         f"{type(defense).__name__}")
    if not isinstance(a["dataset"], str) or not a["dataset"]:
        raise InputError(f"dataset must be a non-empty string, got {a['dataset']!r}")
    if a["split"] not in ("test", "train"):
        raise InputError(f"split must be 'test' or 'train', got {a['split']!r}")
    if a["threat_model"] not in ("Linf", "L2"):
        raise InputError(f"threat_model must be 'Linf' or 'L2', got {a['threat_model']!r}")
    eps = parse_eps(a["eps"])
    check_eps(eps, a["threat_model"], defense.input_shape)
    attacks = a["attacks"]
    if not isinstance(attacks, str) and not (isinstance(attacks, (list, tuple))
                                             and all(isinstance(n, str) for n in attacks)):
        raise InputError(f"attacks must be 'auto', a comma-separated string or a list of names, got {attacks!r}")
    check_positive_int("n_examples", a["n_examples"], none_ok=True)
    seed = a["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an int in [0, 2**63 - 1], got {seed!r}")
    _check_dir("run_dir", a["run_dir"])
    _check_dir("data_dir", a["data_dir"])
    if a["indices"] is not None:
        _check_int_sequence("indices", a["indices"])
    data = a["data"]
    if data is not None:
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise InputError(f"data must be a pair (x, y) of tensors, got {type(data).__name__}"
                             + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
        n = data[0].shape[0] if isinstance(data[0], torch.Tensor) and data[0].dim() else None
        if n is not None and a["n_examples"] is not None and a["n_examples"] > n:
            raise InputError(f"n_examples={a['n_examples']} but data holds {n} examples")
        if a["indices"] is not None and n is not None:
            n_used = n if a["n_examples"] is None else min(n, a["n_examples"])
            if len(a["indices"]) != n_used:
                raise InputError(f"indices label the {n_used} examples of data one to one, got {len(a['indices'])}")
    if a["device"] is not None:
        resolve_device(a["device"])
    for name in ("checks", "cascade", "entry_budget"):
        check_bool(name, a[name])
    check_bool("progress", a["progress"], none_ok=True)
    for name in ("check_options", "attack_options", "slurm"):
        if a[name] is not None and not isinstance(a[name], dict):
            raise InputError(f"{name} must be a dict or None, got {type(a[name]).__name__}")
    for attack, opts in (a["attack_options"] or {}).items():
        if not isinstance(attack, str) or not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
            raise InputError(f"attack_options must map attack names to {{option: value}} dicts, got "
                             f"{attack!r}: {opts!r}")
    if a["attack_options"]:
        from .benchmark import resolve_attacks

        check_attack_options(a["attack_options"], resolve_attacks(defense, attacks), eps, a["threat_model"])
    base = a["base_classifier"]
    if base is not None:
        if not isinstance(base, Classifier):
            raise InputError(f"base_classifier must be a robustkit Classifier or None, got {type(base).__name__}")
        if (base.input_shape, base.num_classes) != (defense.input_shape, defense.num_classes):
            raise InputError(f"base_classifier takes {base.input_shape} and has {base.num_classes} classes, the "
                             f"defense {defense.input_shape} and {defense.num_classes}: they must agree")
    if a["executor"] not in EXECUTORS:
        raise InputError(f"executor must be one of {EXECUTORS}, got {a['executor']!r}")
    check_positive_int("workers", a["workers"], none_ok=True)
    # options that the chosen path would ignore are mistakes, not no-ops
    if a["workers"] is not None and a["executor"] == "inline":
        raise InputError("workers applies to executor='processes' or 'submitit'; the inline executor is one worker "
                         "(under torchrun, one per rank)")
    if a["slurm"] and not a["executor"].startswith("submitit"):
        raise InputError(f"slurm parameters apply to executor='submitit' (or 'submitit-local'), not {a['executor']!r}")
    if a["data"] is not None and a["data_dir"] is not None:
        raise InputError("data_dir locates a dataset to load; with data=(x, y) given it would be unused")
    check_positive_int("batch_size", a["batch_size"], none_ok=True)  # None: 64, or 200 under a TTA threat model
    for name in ("n_reeval", "probe_size"):
        check_positive_int(name, a[name], none_ok=True)  # None: 10 / 16, or the entry's default budget
    lt = a["lease_timeout"]
    if isinstance(lt, bool) or not isinstance(lt, (int, float)) or not math.isfinite(lt) or lt <= 0:
        raise InputError(f"lease_timeout must be a positive number of seconds, got {lt!r}")


def checked_benchmark(fn: F) -> F:
    """Decorate :func:`robustkit.benchmark`: check its arguments, then run it with the models kept in place."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        check_benchmark_arguments(bound.arguments)
        defense = bound.arguments["defense"]
        with kept_placement(defense, bound.arguments["base_classifier"], getattr(defense, "base_classifier", None)):
            try:
                return fn(*args, **kwargs)
            except BaseException:
                defense.reset()  # a failure mid-run leaves no test-time state (an adapted TTA model) behind
                raise

    return wrapper  # type: ignore[return-value]
