"""``robustkit corruption-sweep``: source / BN / TENT / TEA accuracy on CIFAR-10-C, one table.

    robustkit corruption-sweep --classifier resnet20.cifar10 --methods source,bn,tent,tea --severity 5 \\
        --n-examples 1000 --data-dir /tmp/c10c [--corruptions fog,snow] [--out results.json]

Each method is the registered defense ``<method>.<classifier>`` (``source`` is the classifier itself),
reset before each corruption and fed the corrupted test set in batches of ``--batch-size`` (200).
Prints the Markdown table (accuracy % and 95% Wilson interval); ``--out`` writes the full JSON record.
On a terminal a bar follows the (method, corruption) cells; ``-v`` logs one line per cell instead.
"""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..utils import did_you_mean, stage
from ._args import device, positive_int, seed

METHODS = ("source", "bn", "tent", "tea")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corruption-sweep", help="accuracy of source/BN/TENT/TEA on each CIFAR-10-C corruption")
    p.add_argument("--classifier", default="resnet20.cifar10", help="registered classifier (default resnet20.cifar10)")
    p.add_argument("--checkpoint", default=None, help="weights file instead of the published ones")
    p.add_argument("--methods", default="source,bn,tent,tea", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--corruptions", default=None, help="comma-separated subset (default: all 15)")
    p.add_argument("--severity", type=int, default=5, choices=range(1, 6), metavar="{1..5}", help="1..5 (default 5)")
    p.add_argument("--n-examples", type=positive_int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=200)
    p.add_argument("--data-dir", default=None, help="folder holding CIFAR-10-C/ (default: $ROBUSTKIT_DATA, else "
                   "$ROBUSTKIT_HOME/data)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", default=None, help="write the JSON record here")
    p.set_defaults(run=run)


def build_methods(classifier: str, methods: list[str], checkpoint: str | None = None) -> dict:
    from ..defenses import create_adapted_defense
    from ..defenses.adaptation import SourceClassifier
    from ..registry import create_classifier

    base = create_classifier(classifier, pretrained=checkpoint is None, checkpoint=checkpoint)
    out = {}
    for m in methods:
        if m == "source":
            out[m] = SourceClassifier(base)
        else:
            out[m] = create_adapted_defense(f"{m}.{classifier}", classifier=base, pretrained=checkpoint is None)
    return out


def run(args: argparse.Namespace) -> int:
    from ..eval.corruption_sweep import ALL_15, corruption_sweep

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}"
                         f"{did_you_mean(unknown[0], METHODS) if unknown else ''}; choose from {', '.join(METHODS)}")
    corruptions = ALL_15
    if args.corruptions:
        corruptions = tuple(c.strip() for c in args.corruptions.split(",") if c.strip())
    with stage(f"loading {args.classifier} and {', '.join(methods)}"):
        clfs = build_methods(args.classifier, methods, args.checkpoint)
    # a bar per cell on a terminal, one INFO line per cell with -v (the table is the result)
    result = corruption_sweep(clfs, corruptions=corruptions, severity=args.severity, n_examples=args.n_examples,
                              batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed,
                              device=args.device)
    if args.out:
        result.to_json(args.out)
    print(result.to_markdown(), end="")
    return 0
