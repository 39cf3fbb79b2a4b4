"""Adversarial evaluation of the bundled RDC (``tiny_rdc.digits``) with the harness: BPDA or exact gradients.

RDC = likelihood maximisation (LM, 5 momentum steps of the unconditional diffusion loss, eta 8/255) then
the diffusion classifier (Bayes' rule over per-class diffusion losses). ``--gradient bpda`` is the paper's
attack setting (identity backward through LM, exact gradients through the classifier); ``exact``
differentiates through LM too. The classifier evaluates every ``--stride``-th of the 1000 timesteps
(stride 10: 1000 network evaluations per image instead of 10,000; on these digits it predicts like the
full sum on all 360 test images, see ``bench/bench_rdc.py``). The PGD loss defaults to the margin:
the classifier's logits ``−L_y`` differ by hundreds to thousands between classes, which saturates the
softmax, so cross-entropy gradients are exactly zero (the harness's ``gradients`` check says so).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc_digits.py --gradient bpda --out runs/rdc_bpda
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc_digits.py --gradient exact --out runs/rdc_exact

Each prints the record's summary and writes ``--out/record.json`` (the run directory is resumable).
"""

from __future__ import annotations

import argparse

import robustkit
from robustkit.defenses import create_rdc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gradient", choices=["bpda", "exact"], default="bpda")
    ap.add_argument("--stride", type=int, default=10, help="evaluate every STRIDE-th timestep (1: all 1000)")
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="PGD-EOT steps")
    ap.add_argument("--step-size", type=float, default=0.0125)
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--loss", choices=["ce", "margin"], default="margin",
                    help="PGD loss; the diffusion classifier's logits saturate the softmax, so CE gets no gradient")
    ap.add_argument("--n-reeval", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checks", action="store_true", help="run the sanity checks too (slow)")
    ap.add_argument("--out", required=True, help="resumable run directory; the record goes to OUT/record.json")
    args = ap.parse_args()
    rdc = create_rdc("tiny_rdc.digits", pretrained=True, gradient=args.gradient, stride=args.stride)
    rec = robustkit.benchmark(rdc, dataset="digits", eps=args.eps, attacks=["pgd-eot"],
                              attack_options={"pgd-eot": {"steps": args.steps, "step_size": args.step_size,
                                                          "eot": args.eot, "loss": args.loss}},
                              n_examples=args.n_examples, batch_size=args.batch_size, seed=args.seed,
                              n_reeval=args.n_reeval, checks=args.checks, cascade=False, run_dir=args.out)
    print(rec.summary())


if __name__ == "__main__":
    main()
