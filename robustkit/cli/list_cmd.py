"""``robustkit list [classifiers] [--pattern GLOB]``: registered names with their architecture and weights."""

from __future__ import annotations

import argparse

from ..registry import classifier_config, list_classifiers


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered classifiers")
    p.add_argument("what", nargs="?", default="classifiers", choices=["classifiers"], help="what to list")
    p.add_argument("--pattern", default="*", help="glob on names, e.g. '*.cifar10'")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = list_classifiers(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        cfg = classifier_config(name)
        weights = "no weights" if cfg.weights is None else (
            f"ships in {cfg.weights.package_file[0]}" if cfg.weights.package_file else cfg.weights.filename)
        print(f"{name:<{width}}  {cfg.architecture}  [{weights}]")
    return 0
