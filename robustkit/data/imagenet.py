"""ImageNet (ILSVRC 2012) validation images, preprocessed as RobustBench evaluates them.

``load_arrays("test", data_dir, *, subset="robustbench", rows=None) -> (x uint8 [n,3,224,224], y int64 [n])``.

Layout: the standard class-folder layout of the validation set, ``D/imagenet/val/<wnid>/<file>.JPEG`` or
``D/val/<wnid>/<file>.JPEG`` (``D`` is the ``data_dir`` argument, else ``$ROBUSTKIT_DATA``, else
``$ROBUSTKIT_HOME/data``), with all 1,000 class folders (``n01440764`` … ``n15075141``), as made from
``ILSVRC2012_img_val.tar`` by the usual ``valprep.sh``. Labels are the index of the class folder in sorted
order (torchvision's ``ImageFolder`` and RobustBench's ``CustomImageFolder``), so the folder must hold all
1,000 classes. The images cannot be downloaded automatically (their licence asks each user to register at
image-net.org): a missing folder raises :class:`~robustkit.errors.DatasetError` saying what to put where.

Rows (``subset``):

- ``"robustbench"`` (default): RobustBench's 5,000-image evaluation subset, in its order (the list
  ``robustbench/helper_files/imagenet_test_image_ids.txt``, shipped here gzipped and sha256-checked);
- ``"all"``: every image of the 50,000, class by class, files sorted by name;
- a path to a text file of the same format (one ``<wnid>/<file>`` per line).

Preprocessing (RobustBench's ``Res256Crop224``, torchvision ``Resize(256)`` + ``CenterCrop(224)`` +
``ToTensor``, re-expressed with Pillow): RGB; the shorter side resized to 256 with Pillow's bilinear filter
(the longer to ``int(256 · long / short)``); the central 224×224 crop, top/left offsets
``round((side − 224) / 2)``. ``x / 255`` is what ``ToTensor`` returns.

Only the requested rows are decoded (``load_dataset`` asks for ``n_examples`` or ``indices`` first), so
``load_dataset("imagenet", n_examples=100)`` reads 100 files, not 5,000.

Example::

    x, y = robustkit.load_dataset("imagenet", n_examples=16)   # [16, 3, 224, 224] in [0, 1]
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError, InputError
from ..utils import progress_bar
from .files import data_root

log = logging.getLogger(__name__)

NUM_CLASSES = 1000
RESIZE, CROP = 256, 224
IMAGE_SHAPE = (3, CROP, CROP)
#: RobustBench's 5,000 evaluation images (``helper_files/imagenet_test_image_ids.txt`` at commit 78fcc9e).
SUBSET_FILE = "imagenet_robustbench_5000.txt.gz"
SUBSET_SHA256 = "d4121626d07722a0126c35b1563042e46a546f1a05ce705f2cdc635896d58574"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
HOW_TO_GET = ("download ILSVRC2012_img_val.tar from image-net.org (registration required) and sort it into "
              "one folder per class (e.g. with the widely used valprep.sh)")


def val_dir(data_dir: Path | None = None) -> Path:
    """The validation folder: ``D/imagenet/val`` or ``D/val`` (module docstring)."""
    root = data_root(data_dir)
    for d in (root / "imagenet" / "val", root / "val"):
        if d.is_dir():
            return d
    raise DatasetError(f"ImageNet validation not found: expected {root / 'imagenet' / 'val'} or {root / 'val'} "
                       f"holding the 1,000 class folders; {HOW_TO_GET}")


def classes(folder: Path) -> list[str]:
    """The sorted class folder names of ``folder`` (all 1,000 are required: they define the labels)."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if len(names) != NUM_CLASSES:
        raise DatasetError(f"{folder} holds {len(names)} class folders, ImageNet validation has {NUM_CLASSES}: "
                           "the labels are folder indices in sorted order, so every class folder must be there")
    return names


@lru_cache(maxsize=1)
def robustbench_subset() -> tuple[str, ...]:
    """RobustBench's 5,000 ``<wnid>/<file>`` names, in its order (sha256-checked)."""
    raw = gzip.decompress(resources.files(__package__).joinpath(SUBSET_FILE).read_bytes())
    got = hashlib.sha256(raw).hexdigest()
    if got != SUBSET_SHA256:  # a damaged installation, not a user error
        raise DatasetError(f"robustkit's copy of RobustBench's ImageNet subset list is damaged (sha256 {got}, "
                           f"expected {SUBSET_SHA256}); reinstall robustkit")
    return tuple(raw.decode().split())


def _subset_names(folder: Path, subset: str | os.PathLike) -> list[str]:
    if isinstance(subset, str) and subset == "robustbench":
        return list(robustbench_subset())
    if isinstance(subset, str) and subset == "all":
        return [f"{c}/{f.name}" for c in classes(folder)
                for f in sorted(Path(folder, c).iterdir(), key=lambda p: p.name)
                if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not isinstance(subset, (str, os.PathLike)):
        raise InputError(f"subset must be 'robustbench', 'all' or the path of a list file, got {subset!r}")
    path = Path(subset).expanduser()
    try:
        names = path.read_text().split()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the ImageNet subset list {path}: {type(e).__name__}: {e}") from e
    if not names:
        raise DatasetError(f"the ImageNet subset list {path} is empty")
    return names


def samples(data_dir: Path | None = None, subset: str | os.PathLike = "robustbench") -> list[tuple[Path, int]]:
    """``(file, label)`` for every row of ``subset``, in order; every file must exist."""
    folder = val_dir(data_dir)
    index = {c: i for i, c in enumerate(classes(folder))}
    rows = []
    for name in _subset_names(folder, subset):
        wnid = name.split("/")[0]
        if wnid not in index or "/" not in name or ".." in name.split("/"):
            raise DatasetError(f"subset row {name!r} is not '<wnid>/<file>' with a class folder of {folder}")
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing (a row of the ImageNet subset); {HOW_TO_GET}")
        rows.append((path, index[wnid]))
    return rows


def preprocess(path: Path) -> np.ndarray:
    """One image file → uint8 ``[3, 224, 224]`` (RGB, shorter side to 256 bilinear, centre 224 crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(RESIZE * long / short)
            size = (RESIZE, new_long) if w <= h else (new_long, RESIZE)
            if size != (w, h):
                im = im.resize(size, Image.BILINEAR)
            w, h = im.size
            top, left = int(round((h - CROP) / 2.0)), int(round((w - CROP) / 2.0))
            im = im.crop((left, top, left + CROP, top + CROP))
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"cannot decode {path}: {type(e).__name__}: {e}") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def count(split: str, data_dir: Path | None = None, *, subset: str | os.PathLike = "robustbench") -> int:
    """Rows of ``subset`` (without decoding any image)."""
    _check_split(split)
    return len(samples(data_dir, subset))


def load_arrays(split: str, data_dir: Path | None = None, *, subset: str | os.PathLike = "robustbench",
                rows: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess ``rows`` of ``subset`` (all of them when None): ``(x uint8 [n,3,224,224], y)``."""
    _check_split(split)
    table = samples(data_dir, subset)
    picked = [table[int(i)] for i in (range(len(table)) if rows is None else rows)]
    x = np.empty((len(picked), *IMAGE_SHAPE), dtype=np.uint8)
    for i, (path, _) in enumerate(progress_bar(picked, desc="ImageNet images", unit="img")):
        x[i] = preprocess(path)
    log.debug("decoded %d ImageNet validation images from %s", len(picked), val_dir(data_dir))
    return x, np.asarray([label for _, label in picked], dtype=np.int64)


def _check_split(split: str) -> None:
    if split != "test":
        raise InputError(f"ImageNet: only the validation set is evaluated (split='test'), got {split!r}")


#: ``load_dataset`` asks ``count`` first and then decodes only the selected rows.
load_arrays.count = count  # type: ignore[attr-defined]
