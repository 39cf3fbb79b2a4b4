"""Typed argparse values shared by the subcommands: a bad value is a one-line usage error (exit 2).

Each function takes the option's text and returns the value or raises ``argparse.ArgumentTypeError``,
which argparse reports as ``robustkit SUBCOMMAND: error: argument --flag: ...``.

>>> positive_int("8"), seed("0"), probability("0.1")
(8, 0, 0.1)
>>> positive_int("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: expected a positive integer, got '0'
"""

from __future__ import annotations

import argparse
import math

from ..errors import InputError
from ..eval.arguments import MAX_SEED


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """An int >= 1 (sizes, steps, counts)."""
    v = _int(text, "a positive integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def nonnegative_int(text: str) -> int:
    """An int >= 0 (counts where 0 means none)."""
    v = _int(text, "a non-negative integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return v


def seed(text: str) -> int:
    """A seed in [0, 2**63 - 1]."""
    v = _int(text, "a seed (an integer in [0, 2**63 - 1])")
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**63 - 1], got {text!r}")
    return v


def _float(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite float > 0 (learning rates, time limits)."""
    v = _float(text, "a positive number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def probability(text: str) -> float:
    """A float in [0, 1]."""
    v = _float(text, "a number in [0, 1]")
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def decay(text: str) -> float:
    """A float in [0, 1) (EMA decays)."""
    v = _float(text, "a number in [0, 1)")
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def text(value: str) -> str:
    """A non-empty string: an empty value (``--dataset ''``) is a mistake, never "use the default"."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return value


def device(text: str) -> str:
    """A device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``), see :func:`robustkit.resolve_device`."""
    from ..classifier import resolve_device

    try:
        return str(resolve_device(text))
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
