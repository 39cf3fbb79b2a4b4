"""Reading the JSON files robustkit writes: strict parsing with errors that name the file and the field.

:func:`read_json_file` is the one way robustkit reads back a JSON file it wrote (records, sweep results):
UTF-8 only, no ``NaN`` / ``Infinity`` (robustkit writes with ``allow_nan=False``), no duplicate keys, bounded
nesting, and every failure is the caller's typed error with the path and the cause. An empty or cut-off file
says so (``truncated``), instead of surfacing ``json``'s "Expecting value: line 1 column 1".

Field-level checks (types, ranges, names) use :class:`robustkit.leaderboard._fields.Fields`, whose messages
are path-qualified (``record.clean.worst_of_m.n: expected an integer in [1, 1000000000], got '8'``).
:func:`validate_fields` runs a validator on a parsed object and puts the file name in front of its error.

Example::

    >>> import tempfile, pathlib
    >>> from robustkit.eval.record import RecordError
    >>> from robustkit.eval.schema import read_json_file
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = p.write_text('{"eps": 0.1, "eps": 0.2}')
    >>> try:
    ...     read_json_file(p, RecordError)
    ... except RecordError as e:
    ...     print(str(e).replace(str(p), "r.json"))
    r.json: not valid JSON: duplicate key 'eps' in an object
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import RobustkitError

MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 256 * 2**20  # a record is kilobytes; anything near this is not one

T = TypeVar("T")


def loads_strict(text: str, where: str, error: type[RobustkitError]) -> Any:
    """Parse ``text`` strictly (see module docstring); ``where`` (a file name) leads every message."""
    # the leaderboard's strict-JSON hooks (submission bodies are parsed the same way)
    from ..leaderboard._fields import json_depth_ok
    from ..leaderboard.submission import _no_constants, _no_duplicates

    if not text.strip():
        raise error(f"{where}: empty file (no JSON value); it was cut off or never written")
    try:
        value = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except RecursionError as e:
        raise error(f"{where}: nests deeper than {MAX_JSON_DEPTH} levels") from e
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string"):
            raise error(f"{where}: truncated: the JSON ends at character {e.pos} inside a value ({e.msg}); "
                        "the file was cut off (an interrupted write or copy?)") from e
        raise error(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except ValueError as e:  # our hooks: NaN / Infinity, duplicate keys
        raise error(f"{where}: not valid JSON: {e}") from e
    if not json_depth_ok(value, MAX_JSON_DEPTH):
        raise error(f"{where}: nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def read_json_file(path: str | os.PathLike, error: type[RobustkitError]) -> Any:
    """The parsed content of ``path``; any problem (missing, unreadable, not UTF-8, bad JSON) is ``error``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise error(f"{p}: is a directory, expected a JSON file")
        if size > MAX_JSON_BYTES:
            raise error(f"{p}: {size} bytes, more than the {MAX_JSON_BYTES} a robustkit JSON file can hold")
        raw = p.read_bytes()
    except FileNotFoundError as e:
        raise error(f"{p}: no such file") from e
    except OSError as e:
        raise error(f"{p}: cannot be read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); not a JSON file robustkit wrote") from e
    return loads_strict(text, str(p), error)


def validate_fields(path: str | os.PathLike | None, validator: Callable[[], T],
                    error: type[RobustkitError]) -> T:
    """Run ``validator()``; an ``error`` it raises is re-raised with ``path`` in front (file, then field)."""
    try:
        return validator()
    except error as e:
        if path is None:
            raise
        raise error(f"{path}: {e}") from e


def check_finite(value: Any, where: str, error: type[RobustkitError]) -> None:
    """Raise ``error`` naming the first NaN / infinite number nested anywhere in ``value``."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise error(f"{at}: expected a finite number, got {v}")
        if isinstance(v, dict):
            stack.extend((x, f"{at}.{k}") for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{at}[{i}]") for i, x in enumerate(v))
