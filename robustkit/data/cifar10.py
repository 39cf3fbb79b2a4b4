"""CIFAR-10 reader: ``load_arrays(split, data_dir) -> (x uint8 [N,3,32,32] NCHW, y int64 [N])``.

Rows are in the official order: ``test`` is ``test_batch`` (10,000 images), ``train`` is
``data_batch_1`` … ``data_batch_5`` concatenated (50,000 images). Labels are 0..9 in the official
``batches.meta`` order (0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
8 ship, 9 truck).

The data directory ``D`` is the ``data_dir`` argument, else ``robustkit.hub.data_dir()``
(``$ROBUSTKIT_DATA``, else ``$ROBUSTKIT_HOME/data``). ``D`` and then ``D/cifar10`` are searched for,
in this order of preference:

1. **npz layout**: ``test.npz`` and ``train_1.npz`` … ``train_5.npz``, each a NumPy archive (no pickle)
   with ``x`` uint8 ``[10000, 32, 32, 3]`` (HWC, RGB) and ``y`` uint8 ``[10000]``.
2. **official python batches**: a folder ``cifar-10-batches-py/`` with ``test_batch`` and
   ``data_batch_1`` … ``data_batch_5``; each a pickled dict whose ``b"data"`` is uint8 ``[10000, 3072]``
   (R, G, B planes, each 32×32 row-major) and ``b"labels"`` a list of ints. A file is unpickled only
   after its md5 matches the official one (``BATCH_MD5``), and then only with an unpickler that can
   build nothing but numpy arrays.
3. **official tarball** ``cifar-10-python.tar.gz``: md5-verified, extracted next to itself (members
   with absolute paths, ``..`` or links are refused), then read as layout 2.

When none is present and ``robustkit.hub.offline()`` is false, the tarball is downloaded from ``URL``
into ``D`` (md5-verified), extracted and read. Every failure raises :class:`~robustkit.errors.DatasetError`.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import hub
from ..errors import DatasetError, InputError
from .files import data_root, fetch_archive, safe_extract

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
# md5 of each official python batch file (as published by torchvision); checked before unpickling.
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
ROWS_PER_FILE = 10000
NUM_CLASSES = 10
#: class names in label order (the official ``batches.meta`` ``label_names``)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
NPZ_FILES = {"test": ["test.npz"], "train": [f"train_{i}.npz" for i in range(1, 6)]}
BATCH_FILES = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}
LAYOUTS = (f"(1) npz files {', '.join(NPZ_FILES['test'] + NPZ_FILES['train'])}; "
           f"(2) a folder {BATCH_DIR}/ with {', '.join(BATCH_FILES['test'] + BATCH_FILES['train'])}; "
           f"(3) the official archive {TARBALL} (from {URL})")

# Globals an official batch pickle may reference (numpy array reconstruction; _codecs.encode is how
# Python 3 writes bytes at protocol 2). Anything else is refused.
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def load_arrays(split: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x uint8 [N,3,32,32], y int64 [N])`` of ``split`` ("test" or "train"), official order.

    Raises ``DatasetError`` when no accepted layout is found (and it cannot be downloaded) or a file
    is corrupt, and ``InputError`` for an unknown split.
    """
    if split not in NPZ_FILES:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    root = data_root(data_dir)
    for d in (root, root / "cifar10"):
        if all((d / f).is_file() for f in NPZ_FILES[split]):
            log.debug("reading CIFAR-10 %s from npz files in %s", split, d)
            return _concat([_read_npz(d / f) for f in NPZ_FILES[split]])
        if all((d / BATCH_DIR / f).is_file() for f in BATCH_FILES[split]):
            return _read_batches(d / BATCH_DIR, split)
        if (d / TARBALL).is_file():
            return _read_batches(_extract(d / TARBALL), split)
    tarball = fetch_archive(f"CIFAR-10 ({split})", root=root, searched=f"{root} or {root / 'cifar10'}", url=URL,
                            archive=TARBALL, md5=TARBALL_MD5, layouts=LAYOUTS)
    return _read_batches(_extract(tarball), split)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _check(x: np.ndarray, y: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate a file's ``x`` (uint8 NCHW) and ``y`` (ints 0..9), one label per image, ROWS_PER_FILE rows."""
    want = (ROWS_PER_FILE, *IMAGE_SHAPE)
    if x.dtype != np.uint8 or x.shape != want:
        raise DatasetError(f"{path}: images must be uint8 {list(want)} (NCHW), got {x.dtype} {list(x.shape)}")
    if y.shape != (ROWS_PER_FILE,) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: labels must be {ROWS_PER_FILE} ints, got {y.dtype} {list(y.shape)}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DatasetError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, got [{y.min()}, {y.max()}]")
    return np.ascontiguousarray(x), y.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one npz file (``x`` uint8 NHWC, ``y``) and return it validated, as NCHW."""
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = {"x", "y"} - set(d.files)
            if missing:
                raise KeyError(f"missing arrays {sorted(missing)} (has {sorted(d.files)})")
            x, y = d["x"], d["y"]
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetError(f"cannot read {path} (truncated or not a CIFAR-10 npz file): "
                           f"{type(e).__name__}: {e}; delete it and put a good copy there") from e
    if x.ndim != 4 or x.shape[-1] != IMAGE_SHAPE[0]:
        raise DatasetError(f"{path}: x must be uint8 [N, 32, 32, 3] (HWC), got {x.dtype} {list(x.shape)}")
    return _check(x.transpose(0, 3, 1, 2), y, path)


def read_pickled_batch(path: Path, md5: str, *, label_key: bytes, rows: int, num_classes: int,
                       what: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one official python batch of a CIFAR dataset: md5-checked before it is unpickled (with an
    unpickler that builds nothing but numpy arrays), ``b"data"`` uint8 ``[rows, 3072]`` and the labels
    under ``label_key``; returns ``(x uint8 [rows,3,32,32], y int64 [rows])`` validated."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    got = hub.file_digest(path, "md5")
    if got != md5:
        raise DatasetError(f"{path} is not the official {what} (md5 {got}, expected {md5}); refusing to "
                           "unpickle it. Delete it and try again")
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
        data, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    except Exception as e:  # UnpicklingError, EOFError, KeyError, TypeError, ...: all mean "bad file"
        raise DatasetError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    row = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.shape != (rows, row):
        raise DatasetError(f"{path}: data must be uint8 [{rows}, {row}], got {data.dtype} {list(data.shape)}")
    if y.shape != (rows,) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: labels must be {rows} ints, got {y.dtype} {list(y.shape)}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{path}: labels must lie in 0..{num_classes - 1}, got [{y.min()}, {y.max()}]")
    return np.ascontiguousarray(data.reshape(-1, *IMAGE_SHAPE)), y.astype(np.int64)


def _read_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the official pickled batches of ``split`` from ``folder``, each md5-checked first."""
    parts = []
    for name in BATCH_FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing; accepted layouts: {LAYOUTS}")
        parts.append(read_pickled_batch(path, BATCH_MD5[name], label_key=b"labels", rows=ROWS_PER_FILE,
                                        num_classes=NUM_CLASSES, what=f"CIFAR-10 {name}"))
    log.debug("read CIFAR-10 %s from %s", split, folder)
    return _concat(parts)


def _extract(tarball: Path) -> Path:
    """Verify and extract the official CIFAR-10 tarball; return its batches folder."""
    return safe_extract(tarball, TARBALL_MD5) / BATCH_DIR
