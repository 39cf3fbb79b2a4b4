"""Strict, path-qualified reading of parsed JSON objects (shared by entries and submissions).

Every accessor checks presence, type and range and raises the caller's error class with a message
that names the field, e.g. ``entry.clean.worst_of_m.value: expected a number in [0, 1], got 1.5``.
``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python, not in JSON
schemas), and NaN / infinity are never accepted anywhere.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..errors import RobustkitError

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


def loads_strict(text: str, where: str, error: type[RobustkitError]) -> Any:
    """JSON text → value, or ``error`` in one line: invalid JSON, NaN / Infinity, or nesting so deep that
    the parser would recurse out (which Python's ``json`` raises as a bare RecursionError)."""
    try:
        return json.loads(text, parse_constant=no_json_constant)
    except RecursionError:
        raise error(f"{where} nests too deeply to be a robustkit file") from None
    except ValueError as e:  # JSONDecodeError and _no_constant's
        raise error(f"{where} is not valid JSON ({e})") from e
