"""``robustkit leaderboard build DIR --out SITE``: the leaderboard as a static site from run directories.

Every finished run directory under ``DIR`` (a directory holding ``record.json``) becomes an entry,
checked against its per-example records; paper metadata may sit next to the record as
``leaderboard.json``. Writes ``SITE/index.html`` (one sortable table per dataset × threat model, the
same page the server shows), ``SITE/entries/*.html`` and ``SITE/board.js``, and prints the index
path. Unfinished or inconsistent runs are skipped with a warning, or refused with ``--strict``.

``robustkit leaderboard import MODEL_INFO --into DIR`` reads RobustBench's ``model_info`` files
(``MODEL_INFO/<dataset>/<threat_model>/<Name>.json``, strictly: one bad file refuses the import and
names it) and copies them to ``DIR/robustbench_claims/``, where ``build`` shows them on their boards
as claims robustkit did not re-evaluate.

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
    i = actions.add_parser("import", help="import RobustBench's model_info files as (not re-evaluated) claims")
    i.add_argument("model_info", metavar="MODEL_INFO", help="RobustBench's model_info directory (or a copy of part "
                   "of it): MODEL_INFO/<dataset>/<threat_model>/<Name>.json")
    i.add_argument("--into", required=True, metavar="DIR", help="the run directory tree that 'build' reads")
    i.set_defaults(run=run_import)
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


def run_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..eval.runner import atomic_write_text
    from ..leaderboard.robustbench import load_claims
    from ..leaderboard.site import CLAIMS_DIR

    claims = load_claims(args.model_info)  # every file checked before anything is written
    dest = Path(args.into) / CLAIMS_DIR
    for c in claims:
        atomic_write_text(dest / c.dataset / c.threat_model / f"{c.name}.json",
                          Path(c.source).read_text(encoding="utf-8"))
    print(f"imported {len(claims)} RobustBench claim(s) into {dest}")
    return 0
