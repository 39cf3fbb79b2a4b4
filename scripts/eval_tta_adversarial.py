"""Adversarial evaluation of the test-time adaptation methods (source, BN, TENT, TEA) on CIFAR-10.

Runs :func:`robustkit.benchmark` on each method's registry entry (``<method>.<classifier>``; ``source`` is
the static classifier itself) under the batch threat model that the harness applies to adapting
defenses: each shard of ``--batch-size`` consecutive test images is one batch, attacked as a whole, and
the defense is reset to its source state before every query, so each score is the method's first
adaptation step on that batch. Two attacks, both at Linf ``--eps``:

* ``transfer`` — AutoAttack (standard) against the static classifier, its adversarial batch then fed to
  the adapting model;
* ``pgd-eot`` — PGD with exact gradients through the adaptation step (the differentiable Adam update of
  the BatchNorm affine parameters, through the batch statistics; for TEA the SGLD samples are drawn
  fresh per query and are not differentiated, since they do not depend on the input), ``--steps``
  steps of ``--step-size``, ``--eot`` gradient samples per step, no random start.

Every clean and adversarial batch of a stochastic method (TEA) is re-classified ``--n-reeval`` times
(single draw / majority / worst-of-M). One JSON record per method goes to ``--out-dir``; ``--table``
prints the Markdown table of the records found there.

``--tta-threat-model`` picks the test-time threat model (:mod:`robustkit.eval.tta`): ``episodic`` (every
batch from the initial state, SGLD buffer included) or ``continual`` (the test stream in order, the
defense adapting on each adversarial batch); the record is then ``<method>_<threat model>.json``.
``--clean-stream N`` instead measures clean accuracy on the first N test images streamed in batches under
that threat model (no attack; ``clean_<method>_<threat model>.json``).

    # ~45 min for TEA at n = 400 on one CPU core; TENT/BN/source a few minutes each
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_tta_adversarial.py --method tea \\
        --n-examples 400 --out-dir runs/tta_adv
    PYTHONPATH=. .venv/bin/python scripts/eval_tta_adversarial.py --table --out-dir runs/tta_adv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

import robustkit
from robustkit.defenses import create_defense
from robustkit.eval.record import BenchmarkRecord

METHODS = ("source", "bn", "tent", "tea")


def build(method: str, classifier: str, checkpoint: str | None) -> tuple[robustkit.Classifier, robustkit.Classifier]:
    """``(model to attack, static classifier)`` for ``method``."""
    clf = robustkit.create_classifier(classifier, checkpoint=checkpoint, pretrained=checkpoint is None)
    if method == "source":
        return clf, clf
    model = create_defense(f"{method}.{classifier}", classifier=clf)
    return model, clf


def _stem(args: argparse.Namespace) -> str:
    threat = getattr(args, "tta_threat_model", None)
    return f"{args.method}_{threat}" if threat and args.method != "source" else args.method


def clean_stream(args: argparse.Namespace) -> dict:
    """Clean accuracy of the streamed first ``args.clean_stream`` test images under the threat model."""
    import time

    from robustkit.eval.benchmark import describe_defense
    from robustkit.eval.record import AccuracyStat
    from robustkit.eval.tta import stream_accuracy

    model, _ = build(args.method, args.classifier, args.checkpoint)
    x, y = robustkit.load_dataset("cifar10", n_examples=args.clean_stream, data_dir=args.data_dir)
    t0 = time.perf_counter()
    flags = stream_accuracy(model, x, y, threat_model=args.tta_threat_model, batch_size=args.batch_size)
    out = {"defense": describe_defense(model), "dataset": "cifar10", "split": "test", "n_examples": len(flags),
           "batch_size": args.batch_size, "tta_threat_model": args.tta_threat_model, "seed": args.seed,
           "protocol": "single draw per example; the stream in test-set order",
           "clean": dataclasses.asdict(AccuracyStat.from_flags(flags)), "seconds": time.perf_counter() - t0,
           "software": {"robustkit": robustkit.__version__, "torch": torch.__version__}}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"clean_{_stem(args)}.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def evaluate(args: argparse.Namespace) -> BenchmarkRecord:
    model, static = build(args.method, args.classifier, args.checkpoint)
    threat = getattr(args, "tta_threat_model", None) if args.method != "source" else None
    options = {"transfer": {"attack": "autoattack-standard"},
               "pgd-eot": {"steps": args.steps, "step_size": args.step_size, "eot": args.eot}}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = robustkit.benchmark(model, dataset="cifar10", data_dir=args.data_dir, eps=args.eps,
                              attacks=["transfer", "pgd-eot"], attack_options=options, n_examples=args.n_examples,
                              batch_size=args.batch_size, seed=args.seed, n_reeval=args.n_reeval,
                              base_classifier=static, cascade=False, run_dir=out / f"run_{_stem(args)}",
                              checks=not args.no_checks, tta_threat_model=threat)
    rec.save(out / f"{_stem(args)}.json")
    return rec


def _cell(stat: dict) -> str:
    return f"{100 * stat['value']:.1f} [{100 * stat['ci_low']:.1f}–{100 * stat['ci_high']:.1f}]"


def table(out_dir: Path) -> str:
    """Markdown: one row per method (and threat model) and protocol; clean, transfer, adaptive PGD-EOT, worst
    case; cost."""
    rows = ["| method | protocol | clean | transfer (AA on static) | adaptive PGD-EOT (exact) | worst of both "
            "| checks | attack wall s |", "|---|---|---:|---:|---:|---:|---|---:|"]
    for m in [f"{m}{t}" for m in METHODS for t in ("", "_episodic", "_continual")]:
        path = out_dir / f"{m}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        protocols = ["single_draw", "majority", "worst_of_m"] if rec["traits"]["stochastic"] else ["single_draw"]
        checks = ", ".join(f"{c['name']}:{c['status']}" for c in rec["checks"] if c["status"] != "pass") or "all pass"
        for p in protocols:
            rows.append(f"| {m} | {p} | {_cell(rec['clean'][p])} | {_cell(rec['per_attack']['transfer'][p])} | "
                        f"{_cell(rec['per_attack']['pgd-eot'][p])} | {_cell(rec['robust'][p])} | {checks} | "
                        f"{rec['cost']['attack_seconds']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=METHODS)
    ap.add_argument("--table", action="store_true", help="print the table of the records in --out-dir")
    ap.add_argument("--classifier", default="resnet20.cifar10")
    ap.add_argument("--checkpoint", default=None, help="classifier weights file (default: the registry's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--n-examples", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=200, help="the adaptation batch (TEA/TENT: 200)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--step-size", type=float, default=2 / 255)
    ap.add_argument("--eot", type=int, default=1)
    ap.add_argument("--n-reeval", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-checks", action="store_true")
    ap.add_argument("--tta-threat-model", default=None, choices=["episodic", "continual"],
                    help="test-time threat model (robustkit.eval.tta); default: the harness's (episodic)")
    ap.add_argument("--clean-stream", type=int, default=None, metavar="N",
                    help="only the clean accuracy of the first N test images streamed under the threat model")
    ap.add_argument("--out-dir", default="runs/tta_adv")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.out_dir)))
        return
    if args.method is None:
        ap.error("--method is required unless --table")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    if args.clean_stream is not None:
        if args.method == "source" or args.tta_threat_model is None:
            ap.error("--clean-stream needs an adapting --method and --tta-threat-model")
        print(json.dumps(clean_stream(args)["clean"]))
        return
    print(evaluate(args).summary())


if __name__ == "__main__":
    main()
