"""A user's own model, named on the command line: ``path/to/file.py:factory`` or a TorchScript file.

``robustkit bench --model my_nets.py:build --input-shape 3,32,32 --mean ... --std ... --dataset cifar10``
and ``robustkit bench --model model.pt ...`` build it with :func:`load_user_model`; any bad value is a typed,
one-line error (:class:`~robustkit.InputError` for the spec and the factory, :class:`~robustkit.CheckpointError`
for a file that is not TorchScript), raised before any data is loaded.

Example::

    >>> import torch, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "nets.py").write_text(
    ...     "import torch.nn as nn\\n"
    ...     "def linear():\\n"
    ...     "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\\n")
    >>> clf = load_user_model(f"{d / 'nets.py'}:linear", input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))
    >>> clf.name, clf.num_classes, clf(torch.rand(2, 1, 8, 8)).shape
    ('nets:linear', 10, torch.Size([2, 10]))
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..classifier import Classifier, wrap_classifier
from ..errors import CheckpointError, InputError

__all__ = ["load_user_model", "parse_floats", "parse_input_shape"]


def parse_floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    """``"0.4914,0.4822,0.4465"`` → a tuple of floats (None stays None); anything else an :class:`InputError`."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} must be comma-separated numbers, e.g. 0.5,0.5,0.5; got {text!r}") from None
    return values


def parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    """``"3,32,32"`` → ``(3, 32, 32)``: three positive integers C,H,W (None stays None)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--input-shape must be three positive integers C,H,W, e.g. 3,32,32; got {text!r}")
    c, h, w = (int(p) for p in parts)
    return c, h, w


def load_user_model(spec: str, *, input_shape: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, num_classes: int | None = None,
                    name: str | None = None) -> Classifier:
    """Build a user's model as a :class:`~robustkit.Classifier` (eval mode) from ``spec``.

    Args:
        spec: ``"path/to/file.py:factory"``, a function of no arguments returning an ``nn.Module`` (which
            is wrapped with ``mean``/``std``/``input_shape``) or a ready :class:`~robustkit.Classifier`
            (used as is: its normalisation already lives inside, so ``mean``/``std`` are refused); or a
            TorchScript file (``torch.jit.save``), wrapped like a module.
        input_shape: ``(C, H, W)`` of the images; required unless the module has ``input_shape``.
        mean, std: per-channel normalisation applied inside the wrapper (pixel-space budgets).
        num_classes: number of logits (inferred by one forward when omitted).
        name: the name records and boards show (default: ``"<file stem>:<factory>"``, the TorchScript file's
            stem, or the returned Classifier's own ``name``).

    Shape:
        the classifier maps ``[N, *input_shape]`` in ``[0, 1]`` to ``[N, num_classes]`` logits.
    """
    if not isinstance(spec, str) or not spec:
        raise InputError(f"--model must be path/to/file.py:function or a TorchScript file, got {spec!r}")
    file, sep, factory = spec.rpartition(":")
    if sep and file.endswith(".py"):
        obj, default_name = _call_factory(Path(file), factory), f"{Path(file).stem}:{factory}"
    elif spec.endswith(".py"):
        raise InputError(f"--model {spec}: name the function that builds the model, e.g. {spec}:build_model")
    else:
        obj, default_name = _load_torchscript(Path(spec)), Path(spec).stem
    if isinstance(obj, Classifier):
        if mean is not None or std is not None:
            raise InputError(f"--model {spec} returned a robustkit Classifier, whose normalisation lives inside; "
                             "drop --mean/--std")
        clf = obj.eval()
        default_name = getattr(clf, "name", None) or default_name
    elif isinstance(obj, nn.Module):
        clf = wrap_classifier(obj, mean=mean, std=std, num_classes=num_classes, input_shape=input_shape)
    else:
        raise InputError(f"--model {spec} returned {type(obj).__name__}; it must return a torch.nn.Module or a "
                         "robustkit Classifier")
    clf.name = name or default_name
    return clf


def _call_factory(path: Path, factory: str) -> object:
    if not path.is_file():
        raise InputError(f"--model: no such file {path}")
    if not factory.isidentifier():
        raise InputError(f"--model {path}:{factory}: {factory!r} is not a Python function name")
    # a private module name per file, so two users' files called model.py do not collide in sys.modules
    module_name = f"robustkit_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any failure is reported as one line, with its type
        del sys.modules[module_name]
        raise InputError(f"--model: importing {path} failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, factory, None)
    if fn is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and v.__module__ == module_name)
        raise InputError(f"--model: {path} has no function {factory!r}"
                         + (f" (it defines {', '.join(found)})" if found else ""))
    if not callable(fn):
        raise InputError(f"--model: {path}:{factory} is a {type(fn).__name__}, not a function")
    try:
        return fn()
    except Exception as e:  # the user's code: reported as one line, with its type and the traceback chained
        raise InputError(f"--model: {path}:{factory}() raised {type(e).__name__}: {e}") from e


def _load_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise InputError(f"--model: no such file {path} (give a TorchScript file or path/to/file.py:function)")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"--model: {path} is not a TorchScript file (save one with torch.jit.save; a "
                              f"state dict needs path/to/file.py:function that loads it): {first}") from e
