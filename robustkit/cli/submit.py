"""``robustkit submit RUN_DIR --server URL --token T``: upload a finished run to a leaderboard server.

The entry (checked locally against the run's per-example records) and every per-example record are
sent; the server recomputes all aggregates and refuses any disagreement. Resubmitting the same run
(same defense configuration, threat model, eps and protocol) updates its entry instead of adding one,
e.g. with corrected paper metadata; ``robustkit leaderboard withdraw ID`` takes an entry off the board. The token may also come from
``$ROBUSTKIT_TOKEN`` so that it stays out of the shell history. Paper metadata options are those of
``robustkit export``.
"""

from __future__ import annotations

import argparse
import os

from .export import add_metadata_arguments, metadata_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="upload a finished run to a leaderboard server")
    p.add_argument("run_dir", metavar="RUN_DIR", help="finished benchmark run directory")
    p.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=None, help="API token (default: $ROBUSTKIT_TOKEN)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server")
    add_metadata_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..leaderboard.client import submit_run

    token = args.token or os.environ.get("ROBUSTKIT_TOKEN")
    if not token:
        raise InputError("no API token: pass --token or set ROBUSTKIT_TOKEN (an admin makes one with "
                         "'robustkit serve --db PATH --create-token NAME')")
    answer = submit_run(args.run_dir, args.server, token, metadata_from_args(args), timeout=args.timeout)
    state = {"create": "stored as", "update": "updated", "reinstate": "reinstated as",
             "unchanged": "already stored as"}.get(answer.get("action"), "stored as" if answer["created"] else
                                                   "already stored as")
    print(f"{answer['name']}: {state} entry {answer['id']} ({args.server.rstrip('/')}{answer['url']})")
    return 0
