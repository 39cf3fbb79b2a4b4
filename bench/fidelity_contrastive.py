"""Each switch between the official and the paired contrastive-guidance variant, measured on the tiny digits model.

Run from the repository root (CPU, one thread; about a minute per variant at the defaults)::

    OMP_NUM_THREADS=1 ROBUSTKIT_SHARED=../shared PYTHONPATH=. .venv/bin/python bench/fidelity_contrastive.py

Every variant is ``tiny_contrastive_purification.digits`` (the official preset) with one
:class:`~robustkit.defenses.ContrastiveGuidanceConfig` field changed, plus the whole ``paired`` preset and
λ = 0 (plain DiffPure). Each is run through :func:`robustkit.benchmark` (clean accuracy and PGD-EOT, the
protocol below, all stated in the record) and its record is written to
``docs/results/records/fidelity_contrastive_<variant>.json`` (``..._exact.json`` with ``--gradient exact``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import robustkit
from robustkit.defenses import create_contrastive_purification

VARIANTS: dict[str, dict] = {
    "official": {},
    "loss_debiased": {"loss": "debiased"},
    "classifier_input_unit": {"classifier_input": "unit"},
    "fixed_head": {"online_head": False},
    "residual_head": {"head": "residual"},
    "paired": {"preset": "paired"},
    "no_guidance": {"guidance_scale": 0.0},
}


def purification_delta(names: list[str], n: int, dt: float) -> None:
    """How far each variant's purified images are from λ = 0's on the same noise (first ``n`` images, one batch)."""
    x, _ = robustkit.load_dataset("digits", n_examples=n)
    out = {}
    for name in ["no_guidance", *names]:
        p = create_contrastive_purification("tiny_contrastive_purification.digits", pretrained=True, dt=dt,
                                            **VARIANTS[name]).purifier
        with torch.no_grad():
            out[name] = p.purify_with_noise(x, p.draw_noise(x, torch.Generator().manual_seed(1)))
    for name in names:
        d = (out[name] - out["no_guidance"]).abs()
        print(json.dumps({"variant": name, "n": n, "mean_abs_delta": float(d.mean()), "max_abs_delta": float(d.max())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    ap.add_argument("--n", type=int, default=128, help="test images (the first n)")
    ap.add_argument("--batch-size", type=int, default=64, help="images purified together (the batch is the negatives)")
    ap.add_argument("--dt", type=float, default=1e-2, help="solver step (the entry's is 1e-3: 100 steps)")
    ap.add_argument("--gradient", default="bpda", choices=["bpda", "exact"], help="the attack's gradient mode")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eot", type=int, default=1)
    ap.add_argument("--n-reeval", type=int, default=1)
    ap.add_argument("--eps", default="0.1")
    ap.add_argument("--out", type=Path, default=Path("docs/results/records"))
    ap.add_argument("--purification-delta", action="store_true",
                    help="only print each variant's distance to λ = 0's purification (same noise, first --n images)")
    args = ap.parse_args()
    if args.purification_delta:
        purification_delta([v for v in args.variants.split(",") if v != "no_guidance"], args.n, args.dt)
        return
    for name in args.variants.split(","):
        overrides = dict(VARIANTS[name])
        defense = create_contrastive_purification("tiny_contrastive_purification.digits", pretrained=True, seed=0,
                                                  dt=args.dt, gradient=args.gradient, **overrides)
        record = robustkit.benchmark(
            defense, dataset="digits", eps=args.eps, attacks=["pgd-eot"], n_examples=args.n,
            batch_size=args.batch_size, seed=0, n_reeval=args.n_reeval, checks=False, cascade=False,
            attack_options={"pgd-eot": {"steps": args.steps, "eot": args.eot, "step_size": 0.0125}})
        suffix = "_exact" if args.gradient == "exact" else ""  # BPDA (the paper's evaluation) has no suffix
        path = record.save(args.out / f"fidelity_contrastive_{name}{suffix}.json")
        print(json.dumps({"variant": name, "guidance": defense.purifier.guidance.variant, "record": str(path),
                          "clean": {k: str(v) for k, v in record.clean.items()},
                          "robust": {k: str(v) for k, v in record.robust.items()}}), flush=True)


if __name__ == "__main__":
    main()
