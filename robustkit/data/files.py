"""Where the dataset readers look, and what they do when nothing is there (one path for every dataset).

:func:`data_root` is the data directory ``D`` of every reader: the ``data_dir`` argument, else
``$ROBUSTKIT_DATA``, else ``$ROBUSTKIT_HOME/data`` (default ``~/.cache/robustkit/data``), read from the
environment at each call, so a variable set after ``import robustkit`` is honoured.
:func:`fetch_archive` is the not-found path of a downloadable dataset: offline (``ROBUSTKIT_OFFLINE``) it
fails at once naming where it looked and the accepted layouts; online it downloads the official archive
into ``D`` (hash-verified, atomic, :func:`robustkit.hub.download`), and a failed download says the same.
:func:`safe_extract` unpacks a verified archive next to itself, refusing members that would escape it.

Example::

    >>> from pathlib import Path
    >>> from robustkit.data.files import data_root
    >>> data_root("~/datasets") == Path.home() / "datasets"
    True
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from .. import hub
from ..errors import DatasetError

log = logging.getLogger(__name__)


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """The data directory ``D``: ``data_dir`` if given, else :func:`robustkit.hub.data_dir` (read now)."""
    return Path(data_dir if data_dir is not None else hub.data_dir()).expanduser()


def fetch_archive(what: str, *, root: Path, searched: str, url: str, archive: str, md5: str,
                  layouts: str) -> Path:
    """Download the official ``archive`` of a dataset that was not found, into ``root``; return its path.

    Args:
        what: the dataset and the part asked for, e.g. ``"CIFAR-10 (test)"``, for the messages.
        root: the data directory (:func:`data_root`); the archive is written there.
        searched: the places looked in, as the message should name them.
        url, archive, md5: where the archive is published, its file name and its md5.
        layouts: the accepted layouts, so the message says what to put where.

    Raises :class:`~robustkit.errors.DatasetError` at once when ``ROBUSTKIT_OFFLINE`` is set, and when the
    download fails or its md5 differs (nothing is left behind then).
    """
    if hub.offline():
        raise DatasetError(f"{what} not found in {searched} and ROBUSTKIT_OFFLINE is set. Accepted layouts: {layouts}")
    try:
        return hub.download(url, root / archive, digest=md5, algorithm="md5", error=DatasetError)
    except OSError as e:  # DatasetError is an OSError; also covers an unwritable data directory
        raise DatasetError(f"{what} not found in {searched} and the download failed ({e}). "
                           f"Put one of the accepted layouts there: {layouts}") from e


def safe_extract(tarball: Path, md5: str) -> Path:
    """Verify ``tarball``'s md5, extract it (any compression) next to itself and return that folder.

    Every member is checked first: an absolute path, a ``..`` component, a link or a device refuses the
    whole archive, so nothing is written outside the folder and nothing half-extracted is trusted.
    """
    hub.verify_file(tarball, md5, "md5", error=DatasetError)
    dest = tarball.parent
    try:
        with tarfile.open(tarball, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise DatasetError(f"{tarball}: unsafe archive member {m.name!r} (absolute path, '..' "
                                       "or a link/device); refusing to extract anything")
            log.info("extracting %s into %s", tarball, dest)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters; members were checked above
                tf.extractall(dest, members=members)
    except DatasetError:
        raise
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DatasetError(f"cannot extract {tarball}: {type(e).__name__}: {e}") from e
    return dest
