"""Where checkpoints and datasets live, and how they are fetched and verified.

``$ROBUSTKIT_HOME`` (default ``~/.cache/robustkit``) holds ``checkpoints/`` and ``data/``. A file that is
already there is verified against its sha256; a missing one is downloaded from its URL (to a temporary
name, verified, then renamed, so a killed download never leaves a file that looks complete). Offline, or
with ``ROBUSTKIT_OFFLINE=1``, the error names the file to put where.

Checkpoints are read only with ``torch.load(weights_only=True)`` or safetensors: never arbitrary pickles.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

import torch

from .errors import CheckpointError
from .utils import progress_bar

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30


def home() -> Path:
    """The robustkit cache directory: ``$ROBUSTKIT_HOME`` or ``~/.cache/robustkit``."""
    return Path(os.environ.get("ROBUSTKIT_HOME") or Path.home() / ".cache" / "robustkit").expanduser()


def data_dir() -> Path:
    """Default dataset directory: ``$ROBUSTKIT_DATA`` if set, else ``$ROBUSTKIT_HOME/data``."""
    env = os.environ.get("ROBUSTKIT_DATA")
    return Path(env).expanduser() if env else home() / "data"


def offline() -> bool:
    """True when ``ROBUSTKIT_OFFLINE`` is set to a true value: never try the network."""
    return os.environ.get("ROBUSTKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, *, digest: str | None, algorithm: str = "sha256",
             error: type[Exception] = CheckpointError, progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``digest`` when given.

    Raises ``error`` with a message naming the destination when the download fails or the digest
    does not match; nothing is left at ``dest`` in that case.
    """
    dest = Path(dest)
    if offline():
        raise error(f"cannot download {url}: ROBUSTKIT_OFFLINE is set; put the file at {dest}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise error(f"cannot write to {dest.parent} to download {url}: {e}") from e
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:  # noqa: S310 (https URLs from the registry)
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    received = 0
                    with progress_bar(total=total, unit="B", unit_scale=True, desc=dest.name,
                                      enabled=progress) as bar:
                        while block := resp.read(1 << 20):
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                raise error(f"could not download {url} ({e}); you appear to be offline: download it "
                            f"elsewhere and put it at {dest}") from e
        if total is not None and received != total:  # a cut connection ends the read loop silently
            raise error(f"incomplete download of {url}: got {received} of {total} bytes; the file was "
                        f"discarded (retry, or download it elsewhere and put it at {dest})")
        if digest is not None:
            got = file_digest(tmp, algorithm)
            if got != digest:
                raise error(f"downloaded {url} but its {algorithm} is {got}, expected {digest}; "
                            "the file was discarded")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("downloaded %s to %s", url, dest)
    return dest


def verify_file(path: Path, digest: str | None, algorithm: str = "sha256",
                error: type[Exception] = CheckpointError) -> Path:
    """Raise ``error`` if ``path`` does not have the expected digest (None: nothing to check)."""
    if digest is not None:
        got = file_digest(path, algorithm)
        if got != digest:
            raise error(f"{path} is corrupt or not the expected file: {algorithm} {got}, expected {digest}; "
                        "delete it to download it again")
    return path


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Load a checkpoint without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``. Errors become :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing/unexpected keys and bad shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    not_tensors = [f"{k} ({type(state_dict[k]).__name__})" for k in own
                   if k in state_dict and not isinstance(state_dict[k], torch.Tensor)]
    bad_shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and isinstance(state_dict[k], torch.Tensor)
                  and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or not_tensors or bad_shapes:
        def fmt(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {fmt(unexpected)}")
        if not_tensors:
            parts.append(f"values that are not tensors: {fmt(not_tensors)}")
        if bad_shapes:
            parts.append(f"shape mismatches: {fmt(bad_shapes)}")
        raise CheckpointError(f"checkpoint {source} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)

