"""CIFAR-10-C reader: ``load_arrays(split, data_dir, corruption=, severity=) -> (x uint8 NCHW, y int64)``.

CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) is the CIFAR-10 test set under 15 common corruptions
(``CORRUPTIONS``) at 5 severities. Its official layout is a folder ``CIFAR-10-C/`` holding, per
corruption, ``<corruption>.npy``: uint8 ``[50000, 32, 32, 3]`` (HWC, RGB), severities 1..5 stacked
(rows ``(s-1)*10000 .. s*10000-1`` are severity ``s``, each in CIFAR-10 test order), and
``labels.npy`` (uint8 ``[50000]``, the test labels repeated five times). A folder written by
``robustkit make-cifar10c --n-examples N`` has the same layout with ``5*N`` rows; it also holds
``GENERATED.json``, and reading it warns that the images are a robustkit regeneration, whose numbers
are not comparable with results on the official files.

The data directory ``D`` is the ``data_dir`` argument, else ``robustkit.hub.data_dir()``. Searched,
in this order: ``D/CIFAR-10-C/``, ``D/cifar10c/CIFAR-10-C/``, ``D`` itself (a folder holding the
``.npy`` files), then the official archive ``CIFAR-10-C.tar`` in ``D`` or ``D/cifar10c`` (md5-verified,
extracted next to itself; members with absolute paths, ``..`` or links are refused). When none is
present and ``robustkit.hub.offline()`` is false, the archive (2.9 GB) is downloaded from ``URL``
into ``D`` with ``robustkit.hub.download`` and checked against ``TARBALL_MD5``, the md5 Zenodo lists.

Only the ``test`` split exists. Files are memory-mapped, so one severity of one corruption is read.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import DatasetError, InputError
from .corruptions import CORRUPTIONS, SEVERITIES, check_corruption
from .files import data_root, fetch_archive, safe_extract

log = logging.getLogger(__name__)

URL = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1"
TARBALL = "CIFAR-10-C.tar"
TARBALL_MD5 = "56bf5dcef84df0e2308c6dcbcbbd8499"  # Zenodo record 2535967, v1 (2,918,471,680 bytes)
FOLDER = "CIFAR-10-C"
LABELS = "labels.npy"
MARKER = "GENERATED.json"  # written by `robustkit make-cifar10c`, never present in the official data
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
LAYOUTS = (f"(1) a folder {FOLDER}/ with <corruption>.npy (uint8 [5*N, 32, 32, 3], severities 1..5 "
           f"stacked) and {LABELS}; (2) those .npy files directly in the data directory; (3) the official "
           f"archive {TARBALL} (from {URL}); or generate a stand-in with `robustkit make-cifar10c --out DIR` "
           "(not the official images)")


def load_arrays(split: str = "test", data_dir: Path | None = None, *, corruption: str | None = None,
                severity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x uint8 [N,3,32,32], y int64 [N])``: one corruption at one severity, test order.

    Raises ``InputError`` for a split other than "test", an unknown corruption or a severity outside
    1..5, and ``DatasetError`` when no layout is found (and none can be downloaded) or a file is bad.
    """
    if split != "test":
        raise InputError(f"CIFAR-10-C has only the 'test' split, got {split!r}")
    if corruption is None or severity is None:
        raise InputError("cifar10c needs corruption= and severity=, e.g. load_dataset('cifar10c', "
                         f"corruption='fog', severity=5); corruptions: {', '.join(CORRUPTIONS)}")
    check_corruption(corruption, severity)
    root = data_root(data_dir)
    folder = find_folder(root, corruption)
    if folder is None:
        searched = f"{root / FOLDER}, {root / 'cifar10c' / FOLDER} or {root}"
        folder = extract(fetch_archive(f"CIFAR-10-C ({corruption})", root=root, searched=searched, url=URL,
                                       archive=TARBALL, md5=TARBALL_MD5, layouts=LAYOUTS))
    return read_severity(folder, corruption, int(severity))


def find_folder(root: Path, corruption: str) -> Path | None:
    """The first folder under ``root`` holding ``<corruption>.npy`` and the labels; extracts an archive."""
    for d in (root / FOLDER, root / "cifar10c" / FOLDER, root):
        if (d / f"{corruption}.npy").is_file() and (d / LABELS).is_file():
            return d
    for d in (root, root / "cifar10c"):
        if (d / TARBALL).is_file():
            folder = extract(d / TARBALL)
            if not (folder / f"{corruption}.npy").is_file():
                raise DatasetError(f"{d / TARBALL} has no {FOLDER}/{corruption}.npy")
            return folder
    return None


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"cannot read {path} (truncated or not a CIFAR-10-C {what} file): "
                           f"{type(e).__name__}: {e}; delete it and put a good copy there") from e


def read_severity(folder: Path, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Read rows of ``severity`` from ``folder/<corruption>.npy`` and the labels, validated, as NCHW."""
    path, lpath = folder / f"{corruption}.npy", folder / LABELS
    x, y = _load_npy(path, "image"), _load_npy(lpath, "labels")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or x.shape[0] == 0 or x.shape[0] % 5:
        raise DatasetError(f"{path}: images must be uint8 [5*N, 32, 32, 3] (HWC, severities 1..5 stacked), "
                           f"got {x.dtype} {list(x.shape)}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{lpath}: labels must be {x.shape[0]} ints (one per row of {path.name}), got "
                           f"{y.dtype} {list(y.shape)}")
    n = x.shape[0] // len(SEVERITIES)
    rows = slice((severity - 1) * n, severity * n)
    try:
        xs, ys = np.array(x[rows]), np.array(y[rows]).astype(np.int64)
    except (OSError, ValueError) as e:  # a file shorter than its header says
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if ys.size and (ys.min() < 0 or ys.max() >= NUM_CLASSES):
        raise DatasetError(f"{lpath}: labels must lie in 0..{NUM_CLASSES - 1}, got [{ys.min()}, {ys.max()}]")
    if (folder / MARKER).is_file():
        _warn_generated(folder)
    log.debug("read CIFAR-10-C %s severity %d (%d rows) from %s", corruption, severity, n, folder)
    return np.ascontiguousarray(xs.transpose(0, 3, 1, 2)), ys


def _warn_generated(folder: Path) -> None:
    try:
        info = json.loads((folder / MARKER).read_text())
        subs = ", ".join(sorted(info.get("substitutes", {}))) or "none"
    except (OSError, ValueError, AttributeError):
        subs = "unknown"
    warnings.warn(f"{folder} is a robustkit regeneration of CIFAR-10-C (it holds {MARKER}), not the "
                  f"official files: random draws differ and some corruptions are substitutes ({subs}), so "
                  "accuracies are not comparable with published CIFAR-10-C numbers. See "
                  "robustkit.data.corruptions for what differs.", UserWarning, stacklevel=5)


def extract(tarball: Path) -> Path:
    """Verify ``tarball``'s md5, extract it safely next to itself and return its ``CIFAR-10-C`` folder."""
    return safe_extract(tarball, TARBALL_MD5) / FOLDER


def write_cifar10c(out: str | Path, images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                   corruptions: tuple[str, ...] = CORRUPTIONS, frost_images=None, overwrite: bool = False,
                   progress: bool | None = None) -> Path:
    """Regenerate CIFAR-10-C from clean images into ``out/CIFAR-10-C/`` (the official layout).

    Writes ``<corruption>.npy`` (uint8 ``[5*N, 32, 32, 3]``, severities 1..5 stacked) for each of
    ``corruptions``, ``labels.npy`` (uint8 ``[5*N]``) and ``GENERATED.json`` (seed, N, what is a
    substitute). Everything is built in a hidden folder next to the target and renamed into place
    at the end, so an interrupted run leaves no partial ``CIFAR-10-C/``.

    Args:
        images: clean uint8 ``[N, 32, 32, 3]`` (HWC), e.g. the CIFAR-10 test set in order.
        labels: ``[N]`` ints in 0..9.
        seed: see :func:`robustkit.data.corruptions.corrupt`; image ``i`` gets the same draws
            whatever ``N`` is.
        frost_images: the official frost photographs (``corruptions.load_frost_images``); without
            them frost uses the procedural substitute.
        overwrite: replace an existing ``out/CIFAR-10-C/`` (else ``DatasetError``).
    """
    import os
    import shutil
    import uuid

    from .. import __version__
    from ..utils import progress_bar
    from .corruptions import SUBSTITUTES, corrupt

    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or not len(images):
        raise InputError(f"images must be uint8 [N, 32, 32, 3] (HWC), got {images.dtype} {list(images.shape)}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or \
            labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise InputError(f"labels must be {len(images)} ints in 0..9, got {labels.dtype} {list(labels.shape)}")
    for c in corruptions:
        check_corruption(c, 1)
    out = Path(out).expanduser()
    target = out / FOLDER
    if target.exists() and not overwrite:
        raise DatasetError(f"{target} already exists; delete it or pass overwrite=True (--overwrite)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{FOLDER}.{uuid.uuid4().hex}.partial"  # os.mkdir honours the umask, mkdtemp would not
        tmp.mkdir()
    except OSError as e:
        raise DatasetError(f"cannot write to {out}: {e}") from e
    try:
        with progress_bar(total=len(corruptions) * len(SEVERITIES), desc="CIFAR-10-C", unit="set",
                          enabled=progress, logger=log) as bar:
            for c in corruptions:
                stacked = np.empty((len(SEVERITIES) * len(images), *IMAGE_SHAPE), np.uint8)
                for s in SEVERITIES:
                    bar.set_postfix_str(f"{c} {s}")
                    rows = slice((s - 1) * len(images), s * len(images))
                    stacked[rows] = corrupt(images, c, s, seed=seed, frost_images=frost_images)
                    bar.update(1)
                np.save(tmp / f"{c}.npy", stacked)
        np.save(tmp / LABELS, np.tile(labels.astype(np.uint8), len(SEVERITIES)))
        info = {"generator": f"robustkit {__version__} (robustkit.data.corruptions)", "seed": int(seed),
                "n_examples": len(images), "corruptions": list(corruptions),
                "substitutes": {c: SUBSTITUTES[c] for c in corruptions
                                if c in SUBSTITUTES and not (c == "frost" and frost_images is not None)},
                "frost": "official photographs" if frost_images is not None else "procedural substitute",
                "note": "not the official CIFAR-10-C files (Zenodo record 2535967)"}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        old = None
        if target.exists():  # overwrite: move the old folder aside, put the new one in, then delete
            old = out / f".{FOLDER}.{uuid.uuid4().hex}.old"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise DatasetError(f"cannot write CIFAR-10-C to {target}: {e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote CIFAR-10-C (%d corruptions x %d images) to %s", len(corruptions), len(images), target)
    return target
