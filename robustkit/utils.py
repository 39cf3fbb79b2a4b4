"""Small shared helpers: progress bars and seeded generators."""

from __future__ import annotations

import sys

import torch


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
