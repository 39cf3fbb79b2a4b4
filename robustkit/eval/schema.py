"""Reading the JSON files robustkit writes: strict parsing with errors that name the file and the field.

:func:`read_json_file` is the one way robustkit reads back a JSON file it wrote (records, sweep results):
UTF-8 only, no ``NaN`` / ``Infinity`` (robustkit writes with ``allow_nan=False``), no duplicate keys, bounded
nesting, and every failure is the caller's typed error with the path and the cause. An empty or cut-off file
says so (``truncated``), instead of surfacing ``json``'s "Expecting value: line 1 column 1".

Field-level checks (types, ranges, names) use :class:`Fields`, whose messages are path-qualified (``record.clean.worst_of_m.n: expected an integer in [1, 1000000000], got '8'``).
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
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import RobustkitError

MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 256 * 2**20  # a record is kilobytes; anything near this is not one

T = TypeVar("T")


def json_depth_ok(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests at most ``max_depth`` containers deep (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > max_depth:
                return False
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def no_json_constant(name: str) -> Any:
    """``json.loads(parse_constant=...)``: NaN and infinity are not JSON."""
    raise ValueError(f"{name} is not allowed (JSON has no NaN or infinity)")


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(object_pairs_hook=...)``: a key given twice is refused (which value would count?)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r} in an object")
    return d


def loads_strict(text: str, where: str, error: type[RobustkitError]) -> Any:
    """Parse ``text`` strictly (see module docstring); ``where`` (a file name) leads every message."""
    if not text.strip():
        raise error(f"{where}: empty file (no JSON value); it was cut off or never written")
    try:
        value = json.loads(text, parse_constant=no_json_constant, object_pairs_hook=no_duplicate_keys)
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


# -- field-level checks (records, entries, submissions, sweeps) ------------------------------------------------

# Names that end up in URLs, file names and directory names: no separators, no leading dot, no "..".
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
# Attack names may carry an adapter prefix ("torchattacks:PGD").
ATTACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")
# Dataset / threat-model names that become directory names of a RobustBench export.
DIR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_TEXT = 4000  # free text: footnotes, titles, author lists, check messages
MAX_SHORT = 256  # short strings: venue, architecture, software versions


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(value: str, where: str, error: type[RobustkitError], pattern: re.Pattern = NAME_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value) or ".." in value:
        raise error(f"{where}: expected a name matching {pattern.pattern} without '..', got {_show(value)}")
    return value


class Fields:
    """Typed access to one JSON object ``d`` found at ``where``; errors are raised as ``error``."""

    def __init__(self, d: Any, where: str, error: type[RobustkitError]):
        if not isinstance(d, dict):
            raise error(f"{where}: expected an object, got {type_name(d)}")
        self.d, self.where, self.error = d, where, error

    def fail(self, key: str, what: str, got: Any) -> RobustkitError:
        return self.error(f"{self.where}.{key}: expected {what}, got {_show(got) if got is not None else 'null'}")

    def exact_keys(self, required: set[str] | list[str], optional: set[str] | list[str] = ()) -> None:
        required, optional = set(required), set(optional)
        unknown = set(self.d) - required - optional
        missing = required - set(self.d)
        if unknown or missing:
            parts = ([f"unknown fields {sorted(unknown)}"] if unknown else []) + (
                [f"missing fields {sorted(missing)}"] if missing else [])
            raise self.error(f"{self.where}: {', '.join(parts)}")

    def _get(self, key: str, optional: bool) -> tuple[bool, Any]:
        if key not in self.d:
            if optional:
                return False, None
            raise self.error(f"{self.where}: missing field {key!r}")
        v = self.d[key]
        if v is None:
            if optional:
                return False, None
            raise self.fail(key, "a value", None)
        return True, v

    def str(self, key: str, *, max_len: int = MAX_SHORT, optional: bool = False,
            pattern: re.Pattern | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if not isinstance(v, str):
            raise self.fail(key, "a string", v)
        if len(v) > max_len:
            raise self.error(f"{self.where}.{key}: string longer than {max_len} characters ({len(v)})")
        if "\x00" in v:
            raise self.error(f"{self.where}.{key}: string contains a NUL character")
        if choices is not None and v not in choices:
            raise self.fail(key, f"one of {list(choices)}", v)
        if pattern is not None:
            check_name(v, f"{self.where}.{key}", self.error, pattern)
        return v

    def int(self, key: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"an integer in [{lo}, {hi}]", v)
        if not lo <= v <= hi:
            raise self.fail(key, f"an integer in [{lo}, {hi}]", v)
        return v

    def float(self, key: str, lo: float, hi: float, *, optional: bool = False) -> float | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, f"a number in [{lo:g}, {hi:g}]", v)
        v = float(v)
        if not math.isfinite(v):
            raise self.fail(key, "a finite number", v)
        if not lo <= v <= hi:
            raise self.fail(key, f"a number in [{lo:g}, {hi:g}]", v)
        return v

    def bool(self, key: str, *, optional: bool = False) -> bool | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def obj(self, key: str, *, optional: bool = False) -> dict | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, "an object", v)
        return v

    def list(self, key: str, max_len: int, *, optional: bool = False) -> list | None:
        present, v = self._get(key, optional)
        if not present:
            return None
        if not isinstance(v, list):
            raise self.fail(key, "an array", v)
        if len(v) > max_len:
            raise self.error(f"{self.where}.{key}: more than {max_len} items ({len(v)})")
        return v

    def str_map(self, key: str, *, max_items: int = 64) -> dict[str, str]:
        """An object of short strings (e.g. software versions)."""
        m = self.obj(key)
        if len(m) > max_items:
            raise self.error(f"{self.where}.{key}: more than {max_items} items ({len(m)})")
        inner = Fields(m, f"{self.where}.{key}", self.error)
        for k in m:
            if len(k) > MAX_SHORT:
                raise self.error(f"{self.where}.{key}: key longer than {MAX_SHORT} characters")
            inner.str(k)
        return dict(m)
