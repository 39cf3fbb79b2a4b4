"""Datasets as tensors: ``load_dataset(name, ...) -> (x, y)``.

``x`` is float32 ``[N, C, H, W]`` in ``[0, 1]``, ``y`` int64 ``[N]``; the first ``n_examples`` in the
dataset's official order unless ``indices`` is given. Data directories resolve as: the ``data_dir``
argument, else ``$ROBUSTKIT_DATA``, else ``$ROBUSTKIT_HOME/data``.

Example::

    >>> from robustkit.data import load_dataset
    >>> x, y = load_dataset("digits", split="test", n_examples=4)
    >>> tuple(x.shape), x.dtype, y.tolist()
    ((4, 1, 8, 8), torch.float32, [0, 5, 0, 5])
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DatasetError, InputError
from ..hub import data_dir as default_data_dir
from ..utils import check_path, did_you_mean
from . import cifar10, cifar10c, cifar100, digits, imagenet

__all__ = ["DATASETS", "DatasetError", "load_dataset", "default_data_dir"]


def _rows(total: int, n_examples: int | None, indices: Sequence[int] | None, name: str, split: str) -> np.ndarray:
    """The rows to take: the first ``n_examples``, or ``indices`` (cut to ``n_examples``), validated."""
    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer))
                                   or not 1 <= n_examples <= total):
        raise InputError(f"n_examples must be an int in [1, {total}] for {name}/{split}, got {n_examples!r}")
    if indices is None:
        return np.arange(total if n_examples is None else n_examples)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"indices must be a 1-D sequence of ints, got shape {idx.shape} dtype {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise InputError(f"indices must lie in [0, {total - 1}] for {name}/{split}, got [{idx.min()}, {idx.max()}]")
    return idx if n_examples is None else idx[:n_examples]


def _tensors(xs: np.ndarray, ys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 or float HWC/CHW arrays → float32 ``[N,C,H,W]`` in [0, 1] and int64 labels."""
    xt = torch.from_numpy(np.ascontiguousarray(xs))
    xt = xt.float() / 255.0 if xt.dtype == torch.uint8 else xt.float()
    return xt.contiguous(), torch.from_numpy(ys.astype(np.int64))


# name -> loader(split, data_dir, **options) returning (x [N,C,H,W] uint8 or float in [0,1], y int) numpy
# arrays; a loader's keyword-only parameters are the dataset's options (cifar10c: corruption, severity).
# A loader too large to decode whole (imagenet) has a ``count(split, data_dir, **options)`` attribute and a
# ``rows`` keyword: the rows are chosen first and only they are decoded.
Loader = Callable[..., "tuple[np.ndarray, np.ndarray]"]
#: Datasets that ship with an installed package: they never read ``data_dir``.
BUNDLED = frozenset({"digits"})
DATASETS: dict[str, Loader] = {"cifar10": cifar10.load_arrays, "cifar10c": cifar10c.load_arrays,
                               "cifar100": cifar100.load_arrays, "digits": digits.load_arrays,
                               "imagenet": imagenet.load_arrays}


def _options(loader: Loader) -> tuple[str, ...]:
    return tuple(n for n, p in inspect.signature(loader).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and n != "rows")


def load_dataset(name: str, *, split: str = "test", n_examples: int | None = None,
                 data_dir: str | os.PathLike | None = None,
                 indices: Sequence[int] | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset as ``(x, y)`` tensors.

    Args:
        name: ``"cifar10"``, ``"cifar10c"``, ``"cifar100"``, ``"imagenet"`` (validation) or ``"digits"``
            (see ``DATASETS``).
        split: ``"test"`` or ``"train"``.
        n_examples: keep the first n (in the official order, or of ``indices``).
        data_dir: where the files are (see module docstring); ignored by bundled datasets.
        indices: explicit rows to take, in the given order.
        options: the dataset's own keywords; ``cifar10c`` needs ``corruption`` (one of
            ``robustkit.data.corruptions.CORRUPTIONS``) and ``severity`` (1..5); ``cifar100`` takes ``labels``
            (``"fine"``, the default, or ``"coarse"``); ``imagenet`` takes ``subset`` (``"robustbench"``, the
            default 5,000 images, ``"all"`` or a list file; :mod:`robustkit.data.imagenet`).

    Example::

        x, y = load_dataset("cifar10c", corruption="fog", severity=5, n_examples=100)
    """
    if not isinstance(name, str):
        raise InputError(f"a dataset name must be a string, got {type(name).__name__}")
    check_path("data_dir", data_dir)
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)} (available: "
                         f"{', '.join(sorted(DATASETS))})")
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    loader = DATASETS[name]
    unknown = sorted(set(options) - set(_options(loader)))
    if unknown:
        allowed = ", ".join(_options(loader)) or "none"
        raise InputError(f"dataset {name!r} takes no option {', '.join(unknown)} (its options: {allowed})")
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        raise InputError(f"data_dir {str(data_dir)!r} names a file, not a directory")
    if data_dir is not None and name in BUNDLED:
        warnings.warn(f"{name} is bundled (scikit-learn): data_dir={str(data_dir)!r} is not used", stacklevel=2)
    where = Path(data_dir).expanduser() if data_dir is not None else None
    count = getattr(loader, "count", None)
    if count is not None:
        rows = _rows(count(split, where, **options), n_examples, indices, name, split)
        return _tensors(*loader(split, where, rows=rows.tolist(), **options))
    x, y = loader(split, where, **options)
    rows = _rows(len(y), n_examples, indices, name, split)
    return _tensors(x[rows], y[rows])

