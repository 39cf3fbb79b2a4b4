"""``robustkit demo``: the main job on the embedded default (``tiny_cnn.digits`` on the digits test split).

Runs the clean accuracy and an Linf PGD attack and prints both with 95% Wilson intervals and the full
attack protocol. Needs nothing outside the installed package.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..attacks import PGD
from ..data import load_dataset
from ..eval.stats import accuracy_with_ci
from ..registry import create_classifier


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="clean accuracy + PGD on the bundled digits model (no downloads)")
    p.add_argument("--model", default="tiny_cnn.digits")
    p.add_argument("--n-examples", type=int, default=None, help="first N test examples (default: all 360)")
    p.add_argument("--eps", type=float, default=0.1, help="Linf budget in [0,1] pixel units (default 0.1)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    clf = create_classifier(args.model, pretrained=True)
    x, y = load_dataset(clf.config.dataset, split="test", n_examples=args.n_examples)
    attack = PGD(eps=args.eps, norm="Linf", steps=args.steps, step_size=2.5 * args.eps / args.steps,
                 random_start=True, seed=args.seed)
    res = attack(clf, x, y)
    clean = accuracy_with_ci(res.clean_correct)
    robust = accuracy_with_ci(res.robust)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"model": args.model, "dataset": clf.config.dataset, "n_examples": clean.n,
                          "clean_accuracy": clean.value, "clean_ci95": [clean.low, clean.high],
                          "robust_accuracy": robust.value, "robust_ci95": [robust.low, robust.high],
                          "protocol": res.info, "forwards": res.forwards, "backwards": res.backwards,
                          "seconds": seconds, "torch": torch.__version__}))
        return 0
    proto = ", ".join(f"{k}={v}" for k, v in res.info.items())
    print(f"model    {args.model} on {clf.config.dataset}/test ({clean.n} examples)")
    print(f"clean    {clean}")
    print(f"robust   {robust}")
    print(f"protocol {proto}")
    print(f"cost     {res.forwards} forward / {res.backwards} backward example-passes, {seconds:.1f}s wall")
    return 0
