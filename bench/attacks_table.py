"""The attacks on stochastic diffusion purification side by side: one benchmark per attack, same data, same
seed, each at a stated budget, every protocol (single draw, majority and worst of M re-classifications, and
DiffHammer's N-evaluation), with the cost each paid.

Run (CPU, one thread; ~20 minutes per attack at the defaults on an idle core, two attacks at a time fit two)::

    ROBUSTKIT_SHARED=../shared OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/attacks_table.py \\
        --attacks pgd-eot,bpda-eot,autoattack-rand --out docs/results/records
    ROBUSTKIT_SHARED=../shared OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/attacks_table.py \\
        --attacks diffattack,diffhammer --out docs/results/records
    PYTHONPATH=. .venv/bin/python bench/attacks_table.py --table docs/results/records   # print the table

CIFAR-10's DiffPure (``diffpure_unet.cifar10``, resnet56 weights and CIFAR-10 in the data home: README "Where
the files go"), resumable: a killed or timed-out run continues from its finished shards when the same command
is given again with the same ``--run-root`` (a GPU session: add nothing, the defense follows the device)::

    ROBUSTKIT_DATA=../shared/data OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python bench/attacks_table.py \
        --defense diffpure_unet.cifar10 --dataset cifar10 --eps 8/255 --n 64 --batch-size 8 --reeval 4 \
        --grads 20 --eot 2 --run-root runs/attacks_cifar10 --out docs/results/records

Budgets (``BUDGETS``) are equalised at about ``--grads`` exact gradient evaluations of the defense per
example (PGD-EOT/DiffAttack: steps × EOT; AutoAttack rand: its two APGD runs share them; BPDA-EOT: steps ×
EOT classifier gradients; DiffHammer: iterations, each with ``n_eval`` forward evaluations and one grafted
backward), so the columns compare attacks at comparable cost; the record of each states what ran. The
sanity checks are off (this compares attacks, it does not certify the defense).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import robustkit

DEFENSE = "tiny_diffpure.digits"


def slug(defense: str) -> str:
    """``tiny_diffpure.digits`` -> ``tiny_diffpure``: the records' file-name prefix."""
    return defense.split(".")[0]


def budgets(grads: int, eot: int) -> dict[str, dict]:
    steps = max(1, grads // eot)
    return {
        "pgd-eot": {"steps": steps, "eot": eot},                    # Lee & Kim's rule: step 0.007, no random start
        "bpda-eot": {"steps": steps, "eot": eot, "recheck": eot},
        "autoattack-rand": {"steps": max(1, steps // 2), "eot": eot},
        "diffattack": {"steps": steps, "eot": eot},
        "diffhammer": {"steps": steps * eot // 4 or 1, "n_eval": 4},
    }


def run(attack: str, options: dict, args: argparse.Namespace) -> robustkit.BenchmarkRecord:
    defense = robustkit.create_defense(args.defense, pretrained=True)
    run_dir = (args.run_root / slug(args.defense) / attack if args.run_root
               else Path(tempfile.mkdtemp(prefix=f"attacks-{attack}-")) / "run")
    return robustkit.benchmark(defense, dataset=args.dataset, eps=args.eps, attacks=[attack], n_examples=args.n,
                               n_reeval=args.reeval, seed=args.seed, checks=False, cascade=False,
                               batch_size=args.batch_size or args.n, attack_options={attack: options},
                               entry_budget=False, run_dir=run_dir)


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    name = d["attacks"][0]["name"]
    r = d["robust"]
    cells = [f"{100 * r[p]['value']:.1f} [{100 * r[p]['ci_low']:.1f}, {100 * r[p]['ci_high']:.1f}]"
             for p in ("single_draw", "majority", "worst_of_m")]
    ne = d["attacks"][0].get("n_evaluation")
    if ne:
        robust = ne["robust"] if "robust" in ne else sum(ne["survived"])  # records before the per-run sum
        cells.append(f"{100 * robust / d['n_examples']:.1f} (N = {ne['evaluations']})")
    else:
        cells.append("—")
    c = d["cost"]
    return (f"| {name} | " + " | ".join(cells)
            + f" | {c['forward_passes'] / d['n_examples']:.0f} / {c['backward_passes'] / d['n_examples']:.0f} "
              f"| {c['attack_seconds']:.0f} |")


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--attacks", default="pgd-eot,bpda-eot,autoattack-rand,diffattack,diffhammer")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reeval", type=int, default=8, help="re-classifications per example (M)")
    ap.add_argument("--defense", default=DEFENSE, help="registered defense (default %(default)s)")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--eps", type=_fraction, default=0.1, help="Linf budget, e.g. 0.1 or 8/255")
    ap.add_argument("--batch-size", type=int, help="examples per shard (default: all --n in one)")
    ap.add_argument("--run-root", type=Path, help="keep each attack's run directory here (resumable); "
                    "default: a temporary one")
    ap.add_argument("--grads", type=int, default=40, help="exact gradient evaluations per example")
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="folder for the records (attacks_<defense>_<attack>.json, "
                    "<defense> the name before its first dot)")
    ap.add_argument("--table", type=Path, help="print the Markdown table of the records in this folder and exit")
    args = ap.parse_args(argv)
    if args.table:
        print("| attack | single draw | majority | worst of M | N-evaluation | fwd / bwd per example | seconds |")
        print("|---|---|---|---|---|---|---|")
        for p in sorted(args.table.glob(f"attacks_{slug(args.defense)}_*.json")):
            print(row(p))
        return
    plan = budgets(args.grads, args.eot)
    for attack in args.attacks.split(","):
        record = run(attack, plan[attack], args)
        print(record.summary())
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            record.save(args.out / f"attacks_{slug(args.defense)}_{attack}.json")


if __name__ == "__main__":
    main()
