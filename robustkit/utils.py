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


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, dtypes and raw bytes): a weights fingerprint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        if v.numel():
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
