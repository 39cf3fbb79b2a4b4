"""Where checkpoints and datasets live, and how they are fetched and verified.

``$ROBUSTKIT_HOME`` (default ``~/.cache/robustkit``) holds ``checkpoints/`` and ``data/``. A file that is
already there is verified against its sha256; a missing one is downloaded from its URL (to a temporary
name, verified, then renamed, so a killed download never leaves a file that looks complete). Offline, or
with ``ROBUSTKIT_OFFLINE=1``, the error names the file to put where.

Checkpoints are read only with ``torch.load(weights_only=True)`` or safetensors: never arbitrary pickles.
:func:`load_state_dict_file` says in one line why a file cannot be read (empty, truncated, pickled objects,
not a checkpoint); :func:`load_strict` refuses keys, shapes and dtypes that do not match the module and
NaN / infinite values, all listed in one :class:`~robustkit.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

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


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # first byte of a pickle (protocol >= 2): torch's legacy, pre-1.6 format
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|Unsupported class) (\w+(?:\.\w+)+)")


def _sniff(head: bytes, size: int) -> str:
    """``"zip"`` (torch >= 1.6), ``"pickle"`` (legacy torch), ``"safetensors"`` or ``"unknown"``."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "pickle"
    if len(head) >= 8 and head[8:9] in (b"", b"{"):  # a header length but the header is cut off
        return "safetensors"
    return "unknown"


def _safetensors_truncation(path: Path, size: int) -> str | None:
    """Why a safetensors file is cut short (header or tensor data past the end), or None."""
    import json

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if 8 + n > size:
            return f"its header announces {n} bytes but the file has {size - 8} after the length"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return None
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)]
    if ends and 8 + n + max(ends) > size:
        return f"its tensors need {8 + n + max(ends)} bytes but the file has {size}"
    return None


def _read_error(path: Path, kind: str, size: int, e: Exception) -> CheckpointError:
    """robustkit's one-line reason for a file torch or safetensors could not read (never torch's advice)."""
    text = str(e)
    if kind == "zip":
        import zipfile

        if not zipfile.is_zipfile(path):
            return CheckpointError(f"cannot read checkpoint {path}: truncated: the zip archive torch.save wrote "
                                   f"ends before its central directory ({size} bytes); an interrupted download "
                                   "or copy? Fetch the file again")
    if kind == "safetensors":
        why = _safetensors_truncation(path, size)
        if why:
            return CheckpointError(f"cannot read checkpoint {path}: truncated safetensors file: {why}")
        return CheckpointError(f"cannot read checkpoint {path}: corrupt safetensors file "
                               f"({text.splitlines()[0][:200] if text else type(e).__name__})")
    cut_short = isinstance(e, (EOFError, IndexError, struct.error)) or "EOF" in text or "unpack requires" in text
    if kind == "pickle" and cut_short or "truncated" in text:
        return CheckpointError(f"cannot read checkpoint {path}: truncated: the data ends early ({size} bytes); "
                               "an interrupted download or copy? Fetch the file again")
    m = _UNSUPPORTED_GLOBAL.search(text)
    if m:
        return CheckpointError(f"cannot read checkpoint {path}: Unpickling refused: it pickles Python objects "
                               f"({m.group(1)}), which robustkit never executes; save a state dict of tensors instead "
                               "(torch.save(model.state_dict(), path) or safetensors)")
    if kind == "unknown":
        return CheckpointError(f"cannot read checkpoint {path}: not a PyTorch (zip or legacy pickle) or safetensors "
                               f"file (first bytes {path.read_bytes()[:8]!r})")
    first = text.splitlines()[0][:200] if text.strip() else type(e).__name__
    if "weights_only" in text or "Weights only load failed" in text:
        first = "it holds pickled data a weights-only load refuses"
    return CheckpointError(f"cannot read checkpoint {path}: corrupt {kind} checkpoint ({first})")


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Load a checkpoint without executing pickled code.

    The format is recognised from the file's first bytes (not its name): safetensors files are read with
    safetensors; torch files (zip or legacy) with ``torch.load(map_location="cpu", weights_only=True)``.
    Every failure is one :class:`CheckpointError` line naming the file and the cause: missing, empty,
    truncated (an interrupted download: the zip directory, header or tensor data is cut off), pickled
    Python objects (refused, never executed), or not a checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    kind = _sniff(head, size)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, IndexError, ...)
        raise _read_error(path, kind, size, e) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    keys = [k for k in obj if not isinstance(k, str)]
    if keys:
        raise CheckpointError(f"checkpoint {path} has keys that are not strings: {keys[:5]!r:.120}")
    return dict(obj)


def adapt_state_dict(adapter: Callable[[Mapping[str, object]], dict] | None, state: Mapping[str, object], *,
                     source: str) -> dict:
    """Run a registry entry's key adapter; a layout it cannot handle is a :class:`CheckpointError`."""
    if adapter is None:
        return dict(state)
    try:
        return adapter(state)
    except CheckpointError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"checkpoint {source} does not have the layout this model's adapter expects "
                              f"({type(e).__name__}: {str(e)[:200]})") from e


def _value_problems(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """(wrong dtypes, non-finite values) of the checkpoint tensors the module would load."""
    dtypes, nonfinite = [], []
    for k, o in own.items():
        v = state_dict.get(k)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(o.shape):
            continue  # reported as missing / not a tensor / shape mismatch
        if v.is_complex() or v.dtype == torch.bool and o.dtype != torch.bool:
            dtypes.append(f"{k}: {v.dtype}")
        elif o.is_floating_point() != v.is_floating_point():
            dtypes.append(f"{k}: {v.dtype} where the model has {o.dtype}")
        elif v.is_floating_point() and v.numel() and v.device.type != "meta" and not bool(torch.isfinite(v.sum())):
            # a NaN or an infinity makes the sum non-finite (one cheap pass); only then count exactly (a sum
            # that merely overflows counts 0 here and passes)
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                nan = int(torch.isnan(v).sum())
                nonfinite.append(f"{k}: {nan} NaN, {bad - nan} infinite of {v.numel()}")
    return dtypes, nonfinite


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` after checking the checkpoint against the module, all problems listed.

    Refused with one :class:`CheckpointError`: missing or unexpected keys, values that are not tensors,
    shape mismatches, dtypes of another kind than the module's (integer, bool or complex tensors where it
    has floats, floats where it has integers) and NaN / infinite values. A floating tensor of another
    precision (float16, bfloat16, float64) is converted to the module's dtype by ``load_state_dict``.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [str(k) for k in state_dict if k not in own]
    not_tensors = [f"{k} ({type(state_dict[k]).__name__})" for k in own
                   if k in state_dict and not isinstance(state_dict[k], torch.Tensor)]
    bad_shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and isinstance(state_dict[k], torch.Tensor)
                  and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    bad_dtypes, nonfinite = _value_problems(own, state_dict)
    problems = [(missing, "missing keys"), (unexpected, "unexpected keys"), (not_tensors, "values that are not tensors"),
                (bad_shapes, "shape mismatches"), (bad_dtypes, "wrong dtypes"), (nonfinite, "NaN/Inf values")]
    if any(items for items, _ in problems):
        def fmt(items: list[str]) -> str:
            return ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
        parts = [f"{label}: {fmt(items)}" for items, label in problems if items]
        raise CheckpointError(f"checkpoint {source} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
