"""``robustkit serve --db PATH [--host 127.0.0.1] [--port 8000]``: the leaderboard submission server.

The SQLite file at ``--db`` is the server's only state and its only configuration (created when
missing). Admin commands work on the same file and exit without serving::

    robustkit serve --db board.db --create-token alice     # prints alice's token once
    robustkit serve --db board.db --revoke-token alice
    robustkit serve --db board.db --list-tokens

``--claims MODEL_INFO`` shows RobustBench's rows (its ``model_info`` directory) on their boards, marked
as claims robustkit did not re-evaluate. When serving, the first line printed is ``serving http://HOST:PORT`` (with the real port when
``--port 0`` asks for a free one); stop with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the leaderboard (web pages + submission API) over a SQLite file")
    p.add_argument("--db", required=True, metavar="PATH", help="SQLite database file (created when missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--claims", default=None, metavar="MODEL_INFO",
                   help="RobustBench's model_info directory: its rows are shown on their boards as imported claims")
    admin = p.add_mutually_exclusive_group()
    admin.add_argument("--create-token", metavar="NAME", help="create an API token for submitter NAME, print it, exit")
    admin.add_argument("--revoke-token", metavar="NAME", help="revoke NAME's token and exit")
    admin.add_argument("--list-tokens", action="store_true", help="list token names and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..leaderboard.store import Store

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must lie in [0, 65535], got {args.port}")
    for flag, value in (("--create-token", args.create_token), ("--revoke-token", args.revoke_token)):
        if value is not None and not value.strip():
            raise InputError(f"{flag} needs a submitter name, got an empty string")
    store = Store(args.db)
    if args.create_token is not None:
        print(store.create_token(args.create_token))
        print(f"robustkit: token for {args.create_token!r} created; it is shown only now, store it safely",
              file=sys.stderr)
        return 0
    if args.revoke_token is not None:
        store.revoke_token(args.revoke_token)
        print(f"revoked {args.revoke_token}")
        return 0
    if args.list_tokens:
        for t in store.list_tokens():
            print(f"{t['name']}\t{t['created_utc']}\t{'revoked' if t['revoked'] else 'active'}")
        return 0
    from ..leaderboard.robustbench import load_claims
    from ..leaderboard.server import bind_socket, serve

    claims = load_claims(args.claims) if args.claims is not None else []  # checked before the port is taken
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving http://{shown}:{port}", flush=True)
    serve(args.db, sock, claims)
    return 0
