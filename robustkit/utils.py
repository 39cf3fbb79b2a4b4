"""Small shared helpers: argument checks, progress bars, seeded generators and weight digests."""

from __future__ import annotations

import sys
from typing import Iterable

import torch

from .errors import InputError


def check_positive_int(name: str, value: object, *, none_ok: bool = False) -> int | None:
    """Return ``value`` if it is an int >= 1, else raise :class:`~robustkit.InputError` naming ``name``.

    ``bool`` is refused although Python counts it as an int (``steps=True`` is a mistake, not one step).
    With ``none_ok=True``, ``None`` passes through (for "no limit" options).

    >>> check_positive_int("steps", 10)
    10
    >>> check_positive_int("steps", True)
    Traceback (most recent call last):
    ...
    robustkit.errors.InputError: steps must be a positive int, got True
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int{' or None' if none_ok else ''}, got {value!r}")
    return value


def check_bool(name: str, value: object, *, none_ok: bool = False) -> None:
    """Raise :class:`~robustkit.InputError` unless ``value`` is a bool (or None with ``none_ok``):
    ``pretrained="no"`` or ``pretrained=1`` is a mistake, not a truth value.

    >>> check_bool("pretrained", "yes")
    Traceback (most recent call last):
    ...
    robustkit.errors.InputError: pretrained must be a bool (True or False), got 'yes'
    """
    if not (isinstance(value, bool) or (none_ok and value is None)):
        raise InputError(f"{name} must be a bool (True or False){' or None' if none_ok else ''}, got {value!r}")


def check_path(name: str, value: object) -> None:
    """Raise :class:`~robustkit.InputError` unless ``value`` is a non-empty path (str or os.PathLike) or None."""
    import os

    if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip()):
        raise InputError(f"{name} must be a path (str or os.PathLike) or None, got {value!r}")


#: Set by the command line's ``-q``: no progress bars, even on a terminal.
QUIET = False


def _squash(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def did_you_mean(name: object, choices: Iterable[str], *, n: int = 3) -> str:
    """``"; did you mean X, Y?"`` for the registered names closest to a misspelt ``name``, else ``""``.

    Case and punctuation do not count (``ResNet20-CIFAR10`` finds ``resnet20.cifar10``); then close
    spellings (difflib) and names sharing the architecture part (before the first dot) are offered.

    >>> did_you_mean("ResNet20_CIFAR10", ["resnet20.cifar10", "resnet32.cifar10"])
    '; did you mean resnet20.cifar10?'
    >>> did_you_mean("APGD_CE", ["apgd-ce", "apgd-dlr", "pgd"])
    '; did you mean apgd-ce?'
    """
    import difflib

    if not isinstance(name, str):
        return ""
    choices = sorted(set(choices))
    squashed = {c: _squash(c) for c in choices}
    exact = [c for c in choices if squashed[c] == _squash(name)]
    if exact:
        return f"; did you mean {', '.join(exact)}?"
    by_squash: dict[str, list[str]] = {}
    for c, sq in squashed.items():
        by_squash.setdefault(sq, []).append(c)
    close = [c for sq in difflib.get_close_matches(_squash(name), list(by_squash), n=n, cutoff=0.6)
             for c in by_squash[sq]]
    head = _squash(name.split(".")[0])
    if not close and head:
        close = [c for c in choices if _squash(c.split(".")[0]) == head][:n]
    return f"; did you mean {', '.join(close[:n])}?" if close else ""


def progress_bar(iterable=None, *, enabled: bool | None = None, **kwargs):
    """A tqdm bar on stderr, shown only when stderr is a terminal and ``-q`` was not given (or when
    ``enabled=True``)."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty() and not QUIET
    return tqdm(iterable, disable=not enabled, leave=False, file=sys.stderr, **kwargs)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (a fresh nondeterministic seed when None)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, dtypes and raw bytes): a weights fingerprint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        if v.numel():
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
