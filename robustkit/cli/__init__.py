"""The ``robustkit`` command line: one module per subcommand, each thin over the Python API.

``main(argv=None) -> int`` is the entry point (tests call it directly). User errors (bad options,
robustkit's typed errors, paths that cannot be read or written) print one line ``robustkit: error: ...``
on stderr and return 2, with no traceback; set ``ROBUSTKIT_DEBUG=1`` to see the traceback. ``-v``
(``-vv``) and ``-q`` work before or after the subcommand; a closed stdout (``robustkit list | head``)
ends the command quietly.

Progress: on a terminal every long command draws bars (or a ticking ``loading ... 00:03`` line) on
stderr, redrawn at least every second; log lines go above them. Without a terminal nothing but
results, warnings and errors; ``-v`` adds INFO lines, one per step group; ``-q`` leaves results and
errors only, terminal or not. ``bench/bench_progress.py`` measures each command's silent gaps.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, NoReturn, Sequence

from .. import __version__, utils
from ..errors import RobustkitError
from . import (_args, accuracy, bench, compare, corruption_sweep, demo, export, leaderboard, list_cmd, make_cifar10c,
               report, serve, submit, train_diffusion)

SUBCOMMANDS = (list_cmd, accuracy, bench, report, demo, export, submit, serve, leaderboard, train_diffusion,
               make_cifar10c, corruption_sweep, compare)


class _Parser(argparse.ArgumentParser):
    """argparse with robustkit's error format: one line on stderr, exit 2 (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _verbosity_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    # Added to the top-level parser and (with prefix "sub_") to every subcommand, so -v/-q work before and
    # after the subcommand (and "subsub_" to nested actions); main() adds the counts (a subparser would
    # overwrite a shared dest).
    parser.add_argument("-v", "--verbose", action="count", default=0, dest=f"{prefix}verbose",
                        help="log progress messages (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, dest=f"{prefix}quiet",
                        help="errors only, no progress bars")


#: Subcommands that check their own option values (the leaderboard's): no generic empty-value check.
_OWN_VALUE_CHECKS = ("leaderboard", "serve", "submit", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustkit", description="Honest evaluation of adversarial-robustness defenses.")
    parser.add_argument("--version", action="version", version=f"robustkit {__version__}")
    _verbosity_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for name, p in sub.choices.items():
        _verbosity_options(p, prefix="sub_")
        for action in p._actions:  # and to nested actions (`leaderboard build DIR -v`), with their own dest
            if isinstance(action, argparse._SubParsersAction):
                for nested in action.choices.values():
                    _verbosity_options(nested, prefix="subsub_")
        if name not in _OWN_VALUE_CHECKS:
            for action in p._actions:  # every free-text option and argument: an empty value is refused
                if action.type is None and action.choices is None and action.nargs != 0:
                    action.type = _args.text
    return parser


def _error(message: object) -> int:
    one_line = " ".join(str(message).split())  # a message quoting a multi-line library error stays one line
    print(f"robustkit: error: {one_line}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _output_above_bars() -> Iterator[None]:
    """Where bars are drawn, console log lines (-v) and Python warnings are written above them
    (``tqdm.write``) instead of into the line a bar is drawing."""
    if not utils.progress_enabled():
        yield
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        tqdm.write(text.rstrip("\n"), file=file or sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = show
    try:
        with logging_redirect_tqdm():
            yield
    finally:
        warnings.showwarning = shown


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 2
    verbose, quiet = (sum(getattr(args, f"{prefix}{what}", 0) for prefix in ("", "sub_", "subsub_"))
                      for what in ("verbose", "quiet"))
    if verbose and quiet:
        return _error("-v and -q contradict each other: give one")
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("robustkit").setLevel(level)  # robustkit's messages only, whoever configured logging first
    utils.QUIET = bool(quiet)
    if args.command is None:
        parser.print_help()
        return 2
    debug = bool(os.environ.get("ROBUSTKIT_DEBUG"))
    try:
        with _output_above_bars():
            code = int(args.run(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is seen here
        return code
    except BrokenPipeError:
        # the reader closed stdout: exit quietly (redirect stdout so the interpreter's final flush is silent)
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a replaced sys.stdout may have no fd
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RobustkitError, ImportError) as e:
        if debug:
            raise
        return _error(e)
    except OSError as e:  # a path the user named: missing, a file where a folder belongs, no permission, disk full
        if debug:
            raise
        return _error(f"{e.strerror or e}: {e.filename}" if e.filename else e)
    except KeyboardInterrupt:
        print("robustkit: interrupted", file=sys.stderr)
        return 130
