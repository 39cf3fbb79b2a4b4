"""``robustkit report RUN_DIR [RUN_DIR ...] [--out DIR]``: a Markdown report with plots of finished runs.

One run directory gives the full report of that run; several (same defense, dataset and threat model
at different eps) add a plot of robust accuracy against eps. Prints the path of ``report.md``.
"""

from __future__ import annotations

import argparse

from ..eval.report import write_report
from ..utils import stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="Markdown report with plots of finished benchmark run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="finished run directories (several at different eps add an accuracy-vs-eps plot)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN_DIR/report)")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory to reload the clean images from (default: $ROBUSTKIT_DATA, else "
                        "$ROBUSTKIT_HOME/data)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    dirs = args.run_dirs[0] if len(args.run_dirs) == 1 else args.run_dirs
    with stage(f"writing the report of {len(args.run_dirs)} run(s)"):  # figures: seconds, most in matplotlib
        path = write_report(dirs, args.out, data_dir=args.data_dir)
    print(path)
    return 0
