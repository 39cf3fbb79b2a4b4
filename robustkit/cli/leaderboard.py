"""``robustkit leaderboard build DIR --out SITE``: the leaderboard as a static site from run directories.

Every finished run directory under ``DIR`` (a directory holding ``record.json``) becomes an entry,
checked against its per-example records; paper metadata may sit next to the record as
``leaderboard.json``. Writes ``SITE/index.html`` (one sortable table per dataset × threat model, the
same page the server shows), ``SITE/entries/*.html`` and ``SITE/board.js``, and prints the index
path. Unfinished or inconsistent runs are skipped with a warning, or refused with ``--strict``.

``robustkit leaderboard withdraw ID --server URL [--token T]`` takes entry ``ID`` off a server's board
(only its submitter's token may; the server's audit log keeps the record).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="build the leaderboard web pages from run directories")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="render a static site from the run directories under DIR")
    b.add_argument("src", metavar="DIR", help="directory searched (recursively) for finished run directories")
    b.add_argument("--out", required=True, metavar="SITE", help="output directory")
    b.add_argument("--strict", action="store_true", help="fail on an unfinished or inconsistent run")
    b.set_defaults(run=run)
    w = actions.add_parser("withdraw", help="withdraw one of your entries from a leaderboard server")
    w.add_argument("entry_id", metavar="ID", type=int, help="the entry's id (as printed by robustkit submit)")
    w.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000")
    w.add_argument("--token", default=None, help="your API token (default: $ROBUSTKIT_TOKEN)")
    w.set_defaults(run=run_withdraw)


def run(args: argparse.Namespace) -> int:
    from ..leaderboard.site import build_site

    result = build_site(args.src, args.out, strict=args.strict)
    for reason in result.skipped:
        print(f"robustkit: warning: skipped {reason}", file=sys.stderr)
    print(result.index)
    return 0


def run_withdraw(args: argparse.Namespace) -> int:
    import os

    from ..errors import InputError
    from ..leaderboard.client import withdraw_entry

    token = args.token or os.environ.get("ROBUSTKIT_TOKEN")
    if not token:
        raise InputError("no API token: pass --token or set ROBUSTKIT_TOKEN")
    answer = withdraw_entry(args.server, token, args.entry_id)
    print(f"withdrew entry {answer['id']} ({args.server.rstrip('/')}/api/entries/{answer['id']})")
    return 0
