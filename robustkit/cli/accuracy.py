"""``robustkit accuracy NAME --dataset cifar10 --n-examples 1000 [--data-dir D]``: clean accuracy, 95% Wilson CI."""

from __future__ import annotations

import argparse
import time

from ..data import load_dataset
from ..eval import clean_accuracy
from ..registry import create_classifier
from ..utils import stage
from ._args import device, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("accuracy", help="clean accuracy of a registered classifier")
    p.add_argument("name", help="registered classifier, e.g. resnet20.cifar10")
    p.add_argument("--dataset", default=None, help="dataset (default: the classifier's own)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--n-examples", type=positive_int, default=None, help="first N examples (default: all)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $ROBUSTKIT_DATA)")
    p.add_argument("--checkpoint", default=None, help="weights file instead of the published ones")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", type=device, default="cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with stage(f"loading {args.name}"):
        clf = create_classifier(args.name, pretrained=args.checkpoint is None, checkpoint=args.checkpoint)
    dataset = args.dataset or clf.config.dataset
    with stage(f"loading {dataset}/{args.split}"):
        x, y = load_dataset(dataset, split=args.split, n_examples=args.n_examples, data_dir=args.data_dir)
    clf = clf.to(args.device)
    t0 = time.perf_counter()
    acc = clean_accuracy(clf, x, y, batch_size=args.batch_size, device=args.device)
    print(f"{args.name} on {dataset}/{args.split}: accuracy {acc} [{time.perf_counter() - t0:.1f}s]")
    return 0
