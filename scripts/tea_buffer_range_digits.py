"""TEA's SGLD buffer range, official U(-1, 1) against in-domain U(0, 1), on the tiny digits model.

Runs :func:`robustkit.benchmark` on ``tea.tiny_cnn.digits`` once per ``buffer_range`` (everything else the
registry default), on the 360 digits test images in batches of ``--batch-size`` under the episodic test-time
threat model, with the harness's attacks for adapting defenses (transfer from the static model +
exact-gradient PGD-EOT through the adaptation) at Linf ``--eps``, and saves one record per range.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/tea_buffer_range_digits.py \\
        --out-dir docs/results/records
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import robustkit
from robustkit.defenses import create_adapted_defense

RANGES = {"official": (-1.0, 1.0), "in_domain": (0.0, 1.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--n-examples", type=int, default=360)
    ap.add_argument("--batch-size", type=int, default=120)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eot", type=int, default=2)
    ap.add_argument("--n-reeval", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/tea_buffer")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for label, rng in RANGES.items():
        tea = create_adapted_defense("tea.tiny_cnn.digits", pretrained=True, buffer_range=rng)
        rec = robustkit.benchmark(
            tea, dataset="digits", eps=args.eps, attacks=["transfer", "pgd-eot"], n_examples=args.n_examples,
            batch_size=args.batch_size, seed=args.seed, n_reeval=args.n_reeval, checks=False, cascade=False,
            attack_options={"transfer": {"attack": "autoattack-standard"},
                            "pgd-eot": {"steps": args.steps, "eot": args.eot, "step_size": 2.5 * float(args.eps) / args.steps}},
            tta_threat_model="episodic")
        rec.save(out / f"tea_buffer_{label}_digits.json")
        print(label, rng, "clean", rec.clean["single_draw"], "robust", rec.robust["single_draw"],
              "worst-of-m", rec.robust["worst_of_m"], f"{rec.cost['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
