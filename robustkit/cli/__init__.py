"""The ``robustkit`` command line: one module per subcommand, each thin over the Python API.

``main(argv=None) -> int`` is the entry point (tests call it directly). User errors print one line
``robustkit: error: ...`` on stderr and return 2, with no traceback; set ``ROBUSTKIT_DEBUG=1`` to
see the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import RobustkitError
from . import (accuracy, bench, corruption_sweep, demo, export, leaderboard, list_cmd, make_cifar10c, report, serve,
               submit, train_diffusion)
from . import compare

SUBCOMMANDS = (list_cmd, accuracy, bench, report, demo, export, submit, serve, leaderboard, train_diffusion,
               make_cifar10c, corruption_sweep, compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustkit", description="Honest evaluation of adversarial-robustness "
                                     "defenses.")
    parser.add_argument("--version", action="version", version=f"robustkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (RobustkitError, ImportError) as e:
        if os.environ.get("ROBUSTKIT_DEBUG"):
            raise
        print(f"robustkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustkit: interrupted", file=sys.stderr)
        return 130
