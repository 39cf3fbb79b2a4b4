"""``robustkit make-cifar10c --out DIR``: regenerate CIFAR-10-C from the CIFAR-10 test set.

    robustkit make-cifar10c --out data --data-dir data --n-examples 1000 --seed 0

writes ``DIR/CIFAR-10-C/<corruption>.npy`` (uint8 ``[5*N, 32, 32, 3]``, severities 1..5 stacked),
``labels.npy`` and ``GENERATED.json``: the official file layout, so
``load_dataset("cifar10c", corruption=..., severity=..., data_dir=DIR)`` reads it (with a warning).
The images are NOT the official CIFAR-10-C: random draws differ, motion blur and snow streaks use
a NumPy re-implementation of ImageMagick's motion blur, and frost uses a procedural texture unless
``--frost-dir`` gives the official photographs (see ``robustkit.data.corruptions``). Use it when the
official archive cannot be downloaded, and report results on it as such.
"""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..utils import did_you_mean, stage
from ._args import positive_int, seed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-cifar10c", help="regenerate CIFAR-10-C (15 corruptions x 5 severities) from "
                       "the CIFAR-10 test set, in the official file layout")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/CIFAR-10-C/")
    p.add_argument("--data-dir", default=None, metavar="D", help="where CIFAR-10 is (default: $ROBUSTKIT_DATA, "
                   "else $ROBUSTKIT_HOME/data)")
    p.add_argument("--n-examples", type=positive_int, default=None, metavar="N",
                   help="first N test images (default: all 10,000)")
    p.add_argument("--seed", type=seed, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--corruptions", default=None, metavar="LIST",
                   help="comma-separated subset (default: all 15, in the official order)")
    p.add_argument("--frost-dir", default=None, metavar="DIR", help="folder with the official frost photographs "
                   "(frost1.png .. frost5.jpg from ImageNet-C/create_c/ of hendrycks/robustness); without it "
                   "frost uses a procedural substitute")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR/CIFAR-10-C/")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import cifar10
    from ..data.cifar10c import write_cifar10c
    from ..data.corruptions import CORRUPTIONS, load_frost_images

    corruptions = CORRUPTIONS
    if args.corruptions:
        corruptions = tuple(c.strip() for c in args.corruptions.split(",") if c.strip())
        unknown = [c for c in corruptions if c not in CORRUPTIONS]
        if unknown or not corruptions:
            raise InputError(f"unknown corruption(s) {', '.join(unknown) or '(none given)'}"
                             f"{did_you_mean(unknown[0], CORRUPTIONS) if unknown else ''}; choose from: "
                             f"{', '.join(CORRUPTIONS)}")
    frost = load_frost_images(args.frost_dir) if args.frost_dir and "frost" in corruptions else None
    with stage("loading the CIFAR-10 test set"):
        x, y = cifar10.load_arrays("test", Path(args.data_dir).expanduser() if args.data_dir else None)
    if args.n_examples is not None:
        if args.n_examples > len(y):
            raise InputError(f"--n-examples must be at most {len(y)}, got {args.n_examples}")
        x, y = x[:args.n_examples], y[:args.n_examples]
    target = write_cifar10c(args.out, x.transpose(0, 2, 3, 1), y, seed=args.seed, corruptions=corruptions,
                            frost_images=frost, overwrite=args.overwrite)
    print(target)
    return 0
