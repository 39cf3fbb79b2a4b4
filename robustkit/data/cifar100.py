"""CIFAR-100 reader: ``load_arrays(split, data_dir, *, labels="fine") -> (x uint8 [N,3,32,32], y int64 [N])``.

Rows are in the official order: ``test`` is the file ``test`` (10,000 images), ``train`` the file ``train``
(50,000 images). Labels are the 100 fine classes (0..99, ``meta``'s ``fine_label_names`` order), as
RobustBench evaluates CIFAR-100, or with ``labels="coarse"`` the 20 superclasses.

The data directory ``D`` is the ``data_dir`` argument, else ``robustkit.hub.data_dir()`` (``$ROBUSTKIT_DATA``,
else ``$ROBUSTKIT_HOME/data``). ``D`` and then ``D/cifar100`` are searched for:

1. **official python layout**: a folder ``cifar-100-python/`` with ``train`` and ``test``, each a pickled dict
   whose ``b"data"`` is uint8 ``[rows, 3072]`` (R, G, B planes, each 32×32 row-major) and ``b"fine_labels"``
   / ``b"coarse_labels"`` lists of ints. A file is unpickled only after its md5 matches the official one
   (``FILE_MD5``), and then only with an unpickler that can build nothing but numpy arrays.
2. **official tarball** ``cifar-100-python.tar.gz``: md5-verified, extracted next to itself (members with
   absolute paths, ``..`` or links are refused), then read as layout 1.

When neither is present and ``robustkit.hub.offline()`` is false, the tarball is downloaded from ``URL`` into
``D`` (md5-verified), extracted and read. Every failure raises :class:`~robustkit.errors.DatasetError`.

Example::

    x, y = robustkit.load_dataset("cifar100", n_examples=1000)   # fine labels 0..99
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import DatasetError, InputError
from .cifar10 import read_pickled_batch
from .files import data_root, fetch_archive, safe_extract

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TARBALL = "cifar-100-python.tar.gz"
TARBALL_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
BATCH_DIR = "cifar-100-python"
#: md5 of each official python file (as torchvision publishes them); checked before unpickling.
FILE_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
ROWS = {"train": 50000, "test": 10000}
NUM_CLASSES = {"fine": 100, "coarse": 20}
LAYOUTS = f"(1) a folder {BATCH_DIR}/ with train and test; (2) the official archive {TARBALL} (from {URL})"


def load_arrays(split: str, data_dir: Path | None = None, *, labels: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x uint8 [N,3,32,32], y int64 [N])`` of ``split`` ("test" or "train"), official order.

    ``labels``: ``"fine"`` (100 classes, the default) or ``"coarse"`` (20 superclasses).
    """
    if split not in FILE_MD5:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if labels not in NUM_CLASSES:
        raise InputError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    root = data_root(data_dir)
    for d in (root, root / "cifar100"):
        if (d / BATCH_DIR / split).is_file():
            return _read(d / BATCH_DIR, split, labels)
        if (d / TARBALL).is_file():
            return _read(safe_extract(d / TARBALL, TARBALL_MD5) / BATCH_DIR, split, labels)
    tarball = fetch_archive(f"CIFAR-100 ({split})", root=root, searched=f"{root} or {root / 'cifar100'}", url=URL,
                            archive=TARBALL, md5=TARBALL_MD5, layouts=LAYOUTS)
    return _read(safe_extract(tarball, TARBALL_MD5) / BATCH_DIR, split, labels)


def _read(folder: Path, split: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / split
    if not path.is_file():
        raise DatasetError(f"{path} is missing; accepted layouts: {LAYOUTS}")
    log.debug("reading CIFAR-100 %s from %s", split, folder)
    return read_pickled_batch(path, FILE_MD5[split], label_key=f"{labels}_labels".encode(), rows=ROWS[split],
                              num_classes=NUM_CLASSES[labels], what=f"CIFAR-100 {split}")
