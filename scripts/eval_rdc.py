"""Adversarial evaluation of a registered RDC (or its diffusion classifier alone) with the harness.

RDC = likelihood maximisation (LM, 5 momentum steps of the unconditional diffusion loss, eta 8/255) then
the diffusion classifier (Bayes' rule over per-class diffusion losses). ``--gradient bpda`` is the paper's
attack setting (identity backward through LM, exact gradients through the classifier); ``exact``
differentiates through LM too; ``--alone`` attacks the diffusion classifier without LM. The classifier
evaluates every ``--stride``-th of the 1000 timesteps (stride 10: 1000 network evaluations per image
instead of 10,000; on the digits it predicts like the full sum on all 360 test images, see
``bench/bench_rdc.py``). The PGD loss defaults to the margin: the classifier's logits ``−L_y`` differ by
hundreds to thousands between classes at ``reduction="sum"``, which saturates the softmax, so cross-entropy
gradients are exactly zero there (the harness's ``gradients`` check says so); the default ``"mean"`` (the
released scale) does not saturate. ``--dc-option`` / ``--lm-option`` select the variants (docs/results/fidelity.md).

    # the bundled digits RDC (eps 0.1)
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --gradient bpda --out runs/rdc_bpda
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --gradient exact --out runs/rdc_exact
    # robustkit's CIFAR-10 U-Net (eps 8/255), the classifier alone
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --defense rdc_unet.cifar10 --alone \\
        --data-dir ../shared/data/cifar10 --out runs/rdc_cifar10_alone

    # AutoAttack rand at a reduced budget (APGD 10 steps, EOT 2)
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --attacks autoattack-rand \\
        --attack-option autoattack-rand.steps=10 --attack-option autoattack-rand.eot=2 --out runs/rdc_aa_rand

    # the diffusion classifier alone with another backbone (a train-diffusion run folder), clean accuracy
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --alone --clean-only --n-examples 360 \
        --n-reeval 1 --score-model runs/dit

    # the sanity checks at a reduced budget on the first 16 digits
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/eval_rdc.py --checks --check-steps 10 --check-eot 2 \\
        --check-square-queries 200 --out runs/rdc_checks

``--steps/--step-size/--eot/--loss`` set PGD-EOT's budget; every other attack takes its preset, changed
with ``--attack-option ATTACK.KEY=VALUE`` as in ``robustkit bench``. Each prints the record's summary and
writes ``--out/record.json`` (the run directory is resumable).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

import robustkit
from robustkit.cli.bench import _option_value, add_check_arguments, check_options_from_args, parse_attack_options
from robustkit.defenses import create_rdc, defense_config
from robustkit.eval.benchmark import parse_eps, protocol_correct, resolve_attacks
from robustkit.eval.record import PROTOCOLS
from robustkit.eval.stats import accuracy_with_ci

DEFAULT_EPS = {"digits": "0.1", "cifar10": "8/255"}
DEFAULT_STEP = {"digits": "0.0125", "cifar10": "2/255"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", default="tiny_rdc.digits", help="a registered RDC (robustkit list defenses '*rdc*')")
    ap.add_argument("--score-model", default=None,
                    help="replace the entry's diffusion model: a registered score model or a finished "
                         "robustkit train-diffusion run folder (e.g. a DiT or DiffuSSM)")
    ap.add_argument("--alone", action="store_true",
                    help="attack the diffusion classifier without likelihood maximisation")
    ap.add_argument("--gradient", choices=["bpda", "exact"], default="bpda")
    ap.add_argument("--stride", type=int, default=10, help="evaluate every STRIDE-th timestep (1: all 1000)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="rows (image, class, timestep) per network batch (default: the measured CHUNK_SIZES, "
                         "512 on CPU); a gradient holds one chunk's activations: about 12 GB at 1024 on CIFAR-10 "
                         "with unet.cifar10")
    ap.add_argument("--dc-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a DiffusionClassifierConfig field, e.g. reduction=sum, sigma_density=lognormal, weighting=edm")
    ap.add_argument("--lm-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a LikelihoodMaximizationConfig field, e.g. update=mifgsm, sigma_law=training")
    ap.add_argument("--eps", default=None, help="Linf budget (default: digits 0.1, cifar10 8/255)")
    ap.add_argument("--data-dir", default=None, help="dataset folder (default: $ROBUSTKIT_DATA)")
    ap.add_argument("--n-examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--attacks", default="pgd-eot",
                    help="comma-separated harness attacks, e.g. autoattack-rand,autoattack-standard")
    ap.add_argument("--attack-option", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                    help="override one preset parameter, e.g. autoattack-rand.steps=10 (repeatable)")
    ap.add_argument("--steps", type=int, default=20, help="PGD-EOT steps")
    ap.add_argument("--step-size", default=None, help="PGD step (default: digits 0.0125, cifar10 2/255)")
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--loss", choices=["ce", "margin"], default="margin",
                    help="PGD loss; the diffusion classifier's logits saturate the softmax, so CE gets no gradient")
    ap.add_argument("--n-reeval", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checks", action="store_true",
                    help="run the sanity checks too (slow); RDC's transfer check attacks its diffusion classifier "
                         "alone (the purifier's base classifier)")
    add_check_arguments(ap, loss_default="margin")  # CE gets no gradient from a diffusion classifier
    ap.add_argument("--clean-only", action="store_true",
                    help="only clean accuracy over --n-reeval draws (no attack, no run directory)")
    ap.add_argument("--out", help="resumable run directory; the record goes to OUT/record.json")
    ap.add_argument("-q", "--quiet", action="store_true",
                    help="no progress messages (by default each shard logs its clean pass and each attack)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out is None and not args.clean_only:
        ap.error("--out is required unless --clean-only")
    dataset = defense_config(args.defense).dataset
    # The harness seeds attack runs itself; the clean-only path owns its randomness through the defense's seed.
    rdc = create_rdc(args.defense, pretrained=True, score_model=args.score_model, gradient=args.gradient,
                     stride=args.stride, purifier_options=_key_values(args.lm_option, "--lm-option"),
                     **_key_values(args.dc_option, "--dc-option"),
                     seed=args.seed if args.clean_only else None,
                     **({} if args.chunk_size is None else {"chunk_size": args.chunk_size}))
    model = rdc.classifier if args.alone else rdc
    if args.clean_only:
        print_clean_accuracy(model, dataset, args)
        return
    step_size = parse_eps(args.step_size or DEFAULT_STEP[dataset])
    attacks = resolve_attacks(model, args.attacks)
    options = parse_attack_options(args.attack_option)
    if "pgd-eot" in attacks:
        options["pgd-eot"] = {"steps": args.steps, "step_size": step_size, "eot": args.eot, "loss": args.loss,
                              **options.get("pgd-eot", {})}
    rec = robustkit.benchmark(model, dataset=dataset, eps=args.eps or DEFAULT_EPS[dataset], attacks=attacks,
                              attack_options=options,
                              n_examples=args.n_examples, batch_size=args.batch_size, seed=args.seed,
                              n_reeval=args.n_reeval, checks=args.checks, cascade=False, run_dir=args.out,
                              data_dir=args.data_dir, probe_size=args.probe_size,
                              check_options=check_options_from_args(args))
    print(rec.summary())


def _key_values(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} must look like KEY=VALUE, got {item!r}")
        out[key] = _option_value(value)
    return out


def print_clean_accuracy(model, dataset: str, args: argparse.Namespace) -> None:
    """Clean accuracy of the first ``--n-examples`` test images under the harness's protocols (single draw,
    majority, worst of ``--n-reeval`` draws seeded by ``--seed``), with 95 % Wilson intervals."""
    x, y = robustkit.load_dataset(dataset, split="test", n_examples=args.n_examples, data_dir=args.data_dir)
    t0 = time.perf_counter()
    with torch.no_grad():
        batches = range(0, len(x), args.batch_size)
        right = torch.stack([torch.cat([model(x[i:i + args.batch_size]).argmax(1) for i in batches]) == y
                             for _ in range(args.n_reeval)], 1)
    backbone = f" with {args.score_model}" if args.score_model else ""
    opts = " ".join(args.dc_option + args.lm_option)
    name = (f"{args.defense}{backbone}{' classifier alone' if args.alone else ''} (stride {args.stride}"
            f"{', ' + opts if opts else ''})")
    print(f"{name} on the first {len(y)} {dataset} test images, {args.n_reeval} draws, seed {args.seed}, "
          f"{time.perf_counter() - t0:.0f} s")
    for protocol in PROTOCOLS:
        flags = torch.tensor([protocol_correct(draws, protocol) for draws in right.tolist()])
        print(f"  {protocol:<12} {accuracy_with_ci(flags)}")


if __name__ == "__main__":
    main()
