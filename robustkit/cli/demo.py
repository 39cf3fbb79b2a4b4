"""``robustkit demo``: the main job on the embedded default — a full benchmark of the bundled
``tiny_cnn.digits`` on the 360-image digits test split (AutoAttack standard at Linf eps = 0.1, with the
sanity checks), needing nothing outside the installed package. Options are those of ``robustkit bench``.

On a terminal each stage shows as it runs: loading the model, the sanity checks (one step per check),
the shards (each a clean pass and the attacks), and inside each shard AutoAttack's cascade (one step
per sub-attack, its name while it runs); ``-v`` logs the same as lines, ``-q`` prints the table alone.
"""

from __future__ import annotations

import argparse

from . import bench


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="full benchmark of the bundled digits model (no downloads, a few minutes on CPU)")
    bench.add_arguments(p, classifier_default="tiny_cnn.digits")
    p.set_defaults(run=run, eps="0.1")


def run(args: argparse.Namespace) -> int:
    return bench.run(args)
