"""``robustkit compare RUN_A RUN_B [--plot FILE.png]``: two finished runs side by side.

Both must have run on the same data (dataset, split, examples) under the same threat model and eps; else
one line says what differs. Prints the table (per protocol, 95 % intervals, B - A in points, each run's
attack protocols); ``--plot`` also writes grouped bars as a PNG.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two finished benchmark runs side by side (same data and threat model)")
    p.add_argument("run_a", metavar="RUN_A", help="run directory (or its record.json)")
    p.add_argument("run_b", metavar="RUN_B", help="run directory (or its record.json)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="also write the comparison as a bar chart")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.compare import compare_runs, plot_comparison

    print(compare_runs(args.run_a, args.run_b))
    if args.plot:
        print(f"plot: {plot_comparison(args.run_a, args.run_b, args.plot)}")
    return 0
