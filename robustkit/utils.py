"""Small shared helpers: argument checks, progress bars, seeded generators and weight digests."""

from __future__ import annotations

import sys

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


def progress_bar(iterable=None, *, enabled: bool | None = None, **kwargs):
    """A tqdm bar on stderr, shown only when stderr is a terminal (or when ``enabled=True``)."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
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
