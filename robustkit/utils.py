"""Small shared helpers: argument checks, progress bars, seeded generators and weight digests."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import threading
import time
import weakref
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

import torch

from .errors import InputError

T = TypeVar("T")


def check_positive_int(name: str, value: object, *, none_ok: bool = False) -> int | None:
    """Return ``value`` if it is an int >= 1, else raise :class:`~robustkit.InputError` naming ``name``.

    ``bool`` is refused although Python counts it as an int (``steps=True`` is a mistake, not one step).
    With ``none_ok=True``, ``None`` passes through (for "no limit" options).

    >>> check_positive_int("steps", 10)
    10
    >>> check_positive_int("steps", True)
    Traceback (most recent call last):
    ...
    robustkit.errors.InputError: steps must be a positive int, got True
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int{' or None' if none_ok else ''}, got {value!r}")
    return value


def check_bool(name: str, value: object, *, none_ok: bool = False) -> None:
    """Raise :class:`~robustkit.InputError` unless ``value`` is a bool (or None with ``none_ok``):
    ``pretrained="no"`` or ``pretrained=1`` is a mistake, not a truth value.

    >>> check_bool("pretrained", "yes")
    Traceback (most recent call last):
    ...
    robustkit.errors.InputError: pretrained must be a bool (True or False), got 'yes'
    """
    if not (isinstance(value, bool) or (none_ok and value is None)):
        raise InputError(f"{name} must be a bool (True or False){' or None' if none_ok else ''}, got {value!r}")


def check_path(name: str, value: object) -> None:
    """Raise :class:`~robustkit.InputError` unless ``value`` is a non-empty path (str or os.PathLike) or None."""
    import os

    if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(os.fspath(value)).strip()):
        raise InputError(f"{name} must be a path (str or os.PathLike) or None, got {value!r}")


_MAX_INT = 2 ** 63 - 1  # what torch and the record's JSON readers take as an integer


def check_type(name: str, value: object, hint: object) -> None:
    """Raise :class:`~robustkit.InputError` unless ``value`` fits the type ``hint`` of a typed config field.

    Checked: ``bool`` (a bool, not 1), ``int`` (an int, not a bool, within 64 bits), ``float`` (a finite
    int or float, not a bool), ``str``, classes, ``Literal[...]``, unions and ``X | None``, and the
    container kind of ``tuple[...]``/``list[...]``. Other hints (``Any``, callables, ...) are not checked.

    >>> check_type("t_star", "0.1", float)
    Traceback (most recent call last):
    ...
    robustkit.errors.InputError: t_star must be a finite number, got '0.1'
    """
    import math
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, (str, typing.TypeVar)):
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        for option in (a for a in args if a is not type(None)):
            try:
                check_type(name, value, option)
                return
            except InputError:
                continue
        raise InputError(f"{name} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise InputError(f"{name} must be one of {list(args)}, got {value!r}")
        return
    if hint is bool:
        ok, what = isinstance(value, bool), "a bool (True or False)"
    elif hint is int:
        ok, what = not isinstance(value, bool) and isinstance(value, int) and abs(value) <= _MAX_INT, "an int"
    elif hint is float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        what = "a finite number"
    elif origin in (tuple, list):
        ok, what = isinstance(value, (tuple, list)), "a tuple or list"
    elif isinstance(hint, type):
        ok, what = isinstance(value, hint), _type_name(hint)
    else:
        return
    if not ok:
        raise InputError(f"{name} must be {what}, got {value!r}")


def _type_name(hint: object) -> str:
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def replace_checked(config: T, **overrides: object) -> T:
    """``dataclasses.replace(config, **overrides)`` after :func:`check_type` of every override against its
    field's annotation, so ``t_star="0.1"`` or ``n_samples=True`` is a typed error naming the field, not a
    TypeError from a comparison inside ``__post_init__``. Unknown fields raise :class:`InputError` too."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown {type(config).__name__} field(s): {', '.join(unknown)}")
    for key, value in overrides.items():
        check_type(key, value, hints[key])
    return dataclasses.replace(config, **overrides)


def _is_scalar_hint(hint: object) -> bool:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(_is_scalar_hint(a) for a in typing.get_args(hint))
    return typing.get_origin(hint) is typing.Literal or hint in (bool, int, float, str, type(None))


def check_keyword_types(fn: Callable[..., object], kwargs: Mapping[str, object]) -> None:
    """:func:`check_type` of each keyword argument that ``fn`` annotates with scalar types (bool, int,
    float, str, Literal, or None); arguments taking objects are left to ``fn``, whose messages say more."""
    import typing

    hints = typing.get_type_hints(fn)
    for key, value in kwargs.items():
        if key in hints and _is_scalar_hint(hints[key]):
            check_type(key, value, hints[key])


#: Set by the command line's ``-q``: no progress bars, even on a terminal.
QUIET = False


def _squash(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def did_you_mean(name: object, choices: Iterable[str], *, n: int = 3) -> str:
    """``"; did you mean X, Y?"`` for the registered names closest to a misspelt ``name``, else ``""``.

    Case and punctuation do not count (``ResNet20-CIFAR10`` finds ``resnet20.cifar10``); then close
    spellings (difflib) and names sharing the architecture part (before the first dot) are offered.

    >>> did_you_mean("ResNet20_CIFAR10", ["resnet20.cifar10", "resnet32.cifar10"])
    '; did you mean resnet20.cifar10?'
    >>> did_you_mean("APGD_CE", ["apgd-ce", "apgd-dlr", "pgd"])
    '; did you mean apgd-ce?'
    """
    import difflib

    if not isinstance(name, str):
        return ""
    choices = sorted(set(choices))
    squashed = {c: _squash(c) for c in choices}
    exact = [c for c in choices if squashed[c] == _squash(name)]
    if exact:
        return f"; did you mean {', '.join(exact)}?"
    # close spellings: difflib's ratio on the squashed names; ties in name order, so the hint is stable
    target = _squash(name)
    scored = sorted((-difflib.SequenceMatcher(None, target, sq).ratio(), c) for c, sq in squashed.items())
    close = [c for score, c in scored if -score >= 0.75][:n]
    head = _squash(name.split(".")[0])
    if not close and head:
        close = [c for c in choices if _squash(c.split(".")[0]) == head][:n]
    return f"; did you mean {', '.join(close[:n])}?" if close else ""


#: Seconds between redraws of a drawn bar that had no update: its clock keeps moving through a long step
#: (one AutoAttack sub-attack, one diffusion purification), so a terminal never looks hung.
HEARTBEAT_S = 1.0
#: A bar that is not drawn logs (INFO, with ``-v``) at most this many lines over its total.
LOG_GROUPS = 10
#: ... and, without a total, one line per this many seconds.
LOG_EVERY_S = 30.0
_progress_log = logging.getLogger("robustkit.progress")


def progress_enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and ``-q`` was not given."""
    return sys.stderr.isatty() and not QUIET


class _Heartbeat:
    """One daemon thread redrawing every live bar that has been still for :data:`HEARTBEAT_S`; it ends when
    no bar is open and starts again with the next one."""

    def __init__(self) -> None:
        self.bars: weakref.WeakSet = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, bar) -> None:
        with self.lock:
            self.bars.add(bar)
            if self.thread is None or not self.thread.is_alive():  # not alive: inherited through fork()
                self.thread = threading.Thread(target=self._run, name="robustkit-progress", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.lock:
                bars = [b for b in self.bars if not b.disable]
                if not bars:
                    self.thread = None
                    return
            for bar in bars:
                # under tqdm's own lock, and only while the bar is open: a redraw after close() would
                # leave a stale line on the terminal
                with bar.get_lock():
                    if not bar.disable and time.time() - bar.last_print_t >= HEARTBEAT_S:
                        try:
                            bar.refresh(nolock=True)
                        except (OSError, ValueError):  # the terminal is gone (closed at exit): stop beating
                            with self.lock:
                                self.thread = None
                            return


_heartbeat = _Heartbeat()


@functools.lru_cache(maxsize=None)
def _bar_class() -> type:
    from tqdm.auto import tqdm

    class Bar(tqdm):
        """tqdm that, when not drawn but given a logger, logs ``desc: n/total (s)`` at INFO once per
        1/:data:`LOG_GROUPS` of its total (or per :data:`LOG_EVERY_S` without one) instead."""

        def __init__(self, *args, logger: logging.Logger | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._what = kwargs.get("desc") or "progress"  # a disabled tqdm keeps no desc
            self._logger = logger if self.disable and logger is not None and logger.isEnabledFor(logging.INFO) \
                else None
            self._t0 = self._last_log = time.perf_counter()
            self._logged_n = self.n

        def __iter__(self):
            if self._logger is None:
                yield from super().__iter__()
                return
            for obj in self.iterable:
                yield obj
                self.update(1)

        def update(self, n=1):
            if self._logger is None:
                return super().update(n)
            self.n += n
            now = time.perf_counter()
            group = math.ceil(self.total / LOG_GROUPS) if self.total else None
            if (self.total and self.n >= self.total) or (group and self.n - self._logged_n >= group) \
                    or (not group and now - self._last_log >= LOG_EVERY_S):
                of = f"/{self.total:g}" if self.total else ""
                postfix = getattr(self, "postfix", None)  # set by set_postfix only
                post = f", {postfix}" if postfix else ""
                self._logger.info("%s: %g%s (%.0f s%s)", self._what, self.n, of, now - self._t0, post)
                self._logged_n, self._last_log = self.n, now
            return True

    return Bar


def _terminal_columns() -> int | None:
    """stderr's width; None when it is no terminal."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):  # no fd (a replaced sys.stderr), not a terminal
        return None


def progress_bar(iterable=None, *, enabled: bool | None = None, logger: logging.Logger | None = None, **kwargs):
    """A tqdm bar on stderr, drawn only when stderr is a terminal and ``-q`` was not given (or when
    ``enabled=True``); a drawn bar is redrawn every :data:`HEARTBEAT_S` while it waits on a long step.

    When it is not drawn and ``logger`` is given, it logs a line per tenth of its total at INFO instead
    (``robustkit -v`` without a terminal: one line per step group). A terminal that reports zero columns
    (a pseudo-terminal nobody sized) gets an 80 x 24 one: tqdm would draw nothing at all.

    Example::

        >>> bar = progress_bar(total=3, desc="demo", enabled=False)
        >>> bar.update(3), bar.close()
        (None, None)
    """
    if enabled is None:
        enabled = progress_enabled()
    if enabled and _terminal_columns() == 0:  # tqdm reads a 0 x 0 terminal as "draw nothing" (row -1)
        kwargs.setdefault("ncols", 80)
        kwargs.setdefault("nrows", 24)
    bar = _bar_class()(iterable, disable=not enabled, leave=False, file=sys.stderr, logger=logger, **kwargs)
    if enabled:
        _heartbeat.add(bar)
    return bar


@contextlib.contextmanager
def stage(what: str, *, logger: logging.Logger | None = None, enabled: bool | None = None) -> Iterator[None]:
    """Shows ``what ... 3s`` (its clock ticking) on a terminal while a step with nothing to count runs
    (loading a model, one clean pass); logs ``what ...`` and ``what: done (s)`` at INFO (``-v``).

    Example::

        >>> with stage("loading", enabled=False):
        ...     pass
    """
    lg = logger or _progress_log
    lg.info("%s ...", what)
    t0 = time.perf_counter()
    bar = progress_bar(total=None, desc=what, enabled=enabled, bar_format="{desc} ... {elapsed}")
    try:
        yield
    finally:
        bar.close()
    lg.info("%s: done (%.1f s)", what, time.perf_counter() - t0)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (a fresh nondeterministic seed when None)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state_dict (names, shapes, dtypes and raw bytes): a weights fingerprint."""
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        if v.numel():
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
