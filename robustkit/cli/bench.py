"""``robustkit bench``: benchmark a classifier (or a defense around it) and print the result table.

    robustkit bench --classifier resnet20.cifar10 --dataset cifar10 --threat-model Linf --eps 8/255 \\
        --attacks autoattack-standard --n-examples 512 --run-dir runs/resnet20
    robustkit bench --defense diffpure.cifar10 --eps 8/255 --attacks autoattack-rand,pgd-eot \\
        --n-examples 512 --run-dir runs/diffpure
    robustkit bench --defense tiny_diffpure.digits --eps 0.1 --attacks pgd-eot \\
        --attack-option pgd-eot.steps=20 --attack-option pgd-eot.eot=4 --attack-option pgd-eot.step_size=1/40

    robustkit bench --model my_nets.py:build --input-shape 3,32,32 --mean 0.4914,0.4822,0.4465 \\
        --std 0.2471,0.2435,0.2616 --dataset cifar10 --eps 8/255 --n-examples 512   # your own model

A registered model is built with its trained weights; one that has none in place is refused with how to
get them (``--random-weights`` benchmarks the architecture anyway, and the record says so). ``--model``
takes your own: a function returning an ``nn.Module`` or a ``Classifier``, or a TorchScript file.

With ``--defense`` the registered defense is built (``robustkit list defenses``); ``--classifier`` then
replaces the classifier behind it, and that classifier is the undefended base of the transfer check.
``--score-model`` replaces a diffusion defense's score model (DiffPure, contrastive purification, RDC) by a
registered one or a finished training run, e.g. a DiT or DiffuSSM trained with ``robustkit train-diffusion``::

    robustkit train-diffusion dit_tiny.digits --out runs/dit
    robustkit bench --defense tiny_diffpure.digits --score-model runs/dit --eps 0.1 --attacks pgd-eot

Re-running with the same ``--run-dir`` resumes a killed run; the record is ``RUN_DIR/record.json``.

A tiny teaching entry (``tiny_diffpure.digits``) carries a reduced default budget
(:class:`~robustkit.defenses.EvaluationBudget`: fewer examples, steps and EOT samples) that fills every
option not given, so that ``robustkit bench --defense tiny_diffpure.digits --eps 0.1`` takes minutes on a
laptop CPU; a warning on stderr lists what it filled in, and ``--full-budget`` runs the presets instead.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..eval import benchmark
from ..registry import create_classifier
from ..utils import stage
from ._args import device, positive_float, positive_int, seed


def add_arguments(p: argparse.ArgumentParser, *, classifier_default: str | None = None) -> None:
    p.add_argument("--defense", default=None, help="registered defense (robustkit list defenses)")
    p.add_argument("--classifier", default=classifier_default,
                   help="registered classifier (robustkit list); with --defense, the classifier behind it")
    p.add_argument("--model", default=None, metavar="FILE.py:FUNCTION | FILE.pt",
                   help="your own classifier instead of --classifier: a function (no arguments) returning an "
                        "nn.Module or a robustkit Classifier, or a TorchScript file; give --dataset and, for a "
                        "module, --input-shape (and --mean/--std when it expects normalised inputs)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W", help="with --model: image shape, e.g. 3,32,32")
    p.add_argument("--mean", default=None, metavar="M1,M2,M3",
                   help="with --model: per-channel mean subtracted inside the wrapper, e.g. 0.4914,0.4822,0.4465")
    p.add_argument("--std", default=None, metavar="S1,S2,S3", help="with --model: per-channel std, e.g. 0.2471,0.2435,0.2616")
    p.add_argument("--name", default=None, help="with --model: its name in records and boards (default: from the file)")
    p.add_argument("--gradient", default=None, choices=["exact", "adjoint", "bpda", "surrogate"],
                   help="with --defense: the gradient mode attacks get (default: the entry's)")
    p.add_argument("--checkpoint", default=None,
                   help="weights file for the classifier instead of the published ones (with --defense alone: "
                        "for the defense's own classifier)")
    p.add_argument("--score-model", default=None,
                   help="with a diffusion --defense: the score model replacing the entry's, either a finished "
                        "train-diffusion run's folder (e.g. runs/dit) or a registered name, e.g. dit_tiny.digits "
                        "or diffussm_tiny.digits (robustkit list score-models)")
    p.add_argument("--score-checkpoint", default=None,
                   help="weights file for --score-model NAME (e.g. runs/dit/ema.safetensors from robustkit "
                        "train-diffusion) instead of its published ones; not with a run folder")
    p.add_argument("--random-weights", action="store_true",
                   help="build the registered models without their trained weights and benchmark them anyway "
                        "(architecture checks only: the numbers mean nothing about the published model)")
    p.add_argument("--dataset", default=None, help="dataset (default: the classifier's own)")
    p.add_argument("--data-dir", default=None, help="dataset directory (default: $ROBUSTKIT_DATA)")
    p.add_argument("--threat-model", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--eps", required=classifier_default is None, default=None,
                   help="budget in [0,1] pixel units, e.g. 8/255 or 0.5")
    p.add_argument("--attacks", default="auto",
                   help="'auto' (from the defense's traits) or a comma-separated list, e.g. autoattack-rand,pgd-eot")
    p.add_argument("--attack-option", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="override one preset parameter of an attack, e.g. pgd-eot.steps=50 or pgd-eot.step_size=2/255 "
                        "(repeatable; recorded with the result)")
    p.add_argument("--n-examples", type=positive_int, default=None,
                   help="first N test examples (default: all, or the entry's reduced default budget's)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="examples per shard (default 64; 200, the papers' batch, for test-time adaptation)")
    p.add_argument("--tta-threat-model", default=None, choices=["episodic", "continual"],
                   help="for a defense that adapts at test time: every batch from the initial state (episodic, "
                        "default) or the test stream in order, the defense adapting on each adversarial batch")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--n-reeval", type=positive_int, default=None,
                   help="re-evaluations per example (stochastic defenses; default 10, or the entry's reduced "
                        "default budget's)")
    p.add_argument("--full-budget", action="store_true",
                   help="ignore the registry entry's reduced default budget (the tiny teaching entries declare one "
                        "so that a default run takes minutes): the attack presets, all examples, 10 re-evaluations")
    p.add_argument("--run-dir", default=None, help="resumable run directory (default: a temporary one)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1, ... (default: where the model is)")
    p.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
    add_check_arguments(p)
    p.add_argument("--no-cascade", action="store_true", help="run every attack on every example")
    p.add_argument("--executor", default="inline", choices=["inline", "processes", "submitit", "submitit-local"])
    p.add_argument("--workers", type=positive_int, default=None, help="worker processes / Slurm tasks")
    p.add_argument("--lease-timeout", type=positive_float, default=60.0, metavar="SECONDS",
                   help="take over a shard whose worker on another host has sent no heartbeat for this long "
                        "(default 60; a worker gone from this host is taken over at once)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of the table")


def _option_value(text: str) -> Any:
    """JSON scalars (``20``, ``0.5``, ``true``, ``null``), fractions (``2/255``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        return text


def add_check_arguments(p: argparse.ArgumentParser, *, loss_default: str | None = None) -> None:
    """The sanity checks' probe and budget flags; :func:`check_options_from_args` reads them back."""
    p.add_argument("--probe-size", type=positive_int, default=None,
                   help="examples the sanity checks run on (the first N; default 16, or the entry's reduced default "
                        "budget's)")
    sized = "; not given: sized with the others to at most 30%% of the run's estimated cost"
    p.add_argument("--check-steps", type=positive_int, default=None,
                   help="PGD steps of the checks' attacks (default 20" + sized + ")")
    p.add_argument("--check-eot", type=positive_int, default=None,
                   help="EOT of the checks' attacks (default 8 for a stochastic defense, else 1" + sized + ")")
    p.add_argument("--check-square-queries", type=positive_int, default=None,
                   help="Square Attack queries of the black-box check (default 1000" + sized + ")")
    p.add_argument("--check-loss", choices=["auto", "ce", "margin"], default=loss_default,
                   help=f"PGD loss of the checks' attacks (default {loss_default or 'auto'}: the margin for a "
                        "generative classifier, whose logits can saturate the softmax, else ce)")


def check_options_from_args(args: argparse.Namespace) -> dict[str, int | str]:
    """``benchmark``'s ``check_options`` from the flags of :func:`add_check_arguments` that were given."""
    return {k: v for k, v in (("steps", args.check_steps), ("eot", args.check_eot),
                              ("square_queries", args.check_square_queries), ("loss", args.check_loss))
            if v is not None}


def parse_attack_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["pgd-eot.steps=20", "pgd-eot.eot=4"]`` → ``{"pgd-eot": {"steps": 20, "eot": 4}}``.

    Example::

        >>> parse_attack_options(["pgd-eot.steps=20", "pgd-eot.step_size=2/255", "transfer.attack=pgd"])
        {'pgd-eot': {'steps': 20, 'step_size': 0.00784313725490196}, 'transfer': {'attack': 'pgd'}}
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        attack, dot, name = key.rpartition(".")
        if not sep or not dot or not attack or not name.isidentifier() or not value:
            raise InputError(f"--attack-option must look like ATTACK.KEY=VALUE (e.g. pgd-eot.steps=50), got {item!r}")
        if name in out.get(attack, {}):
            raise InputError(f"--attack-option sets {attack}.{name} twice")
        out.setdefault(attack, {})[name] = _option_value(value)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark a classifier against attacks, with sanity checks")
    add_arguments(p)
    p.set_defaults(run=run)


def _build(args: argparse.Namespace):
    """(model to benchmark, its undefended base classifier or None, its dataset)."""
    if args.model is None:
        for flag, value in (("--input-shape", args.input_shape), ("--mean", args.mean), ("--std", args.std),
                            ("--name", args.name)):
            if value is not None:
                raise InputError(f"{flag} applies to --model FILE.py:FUNCTION or --model FILE.pt")
    elif args.classifier is not None or args.checkpoint is not None:
        raise InputError("--model is your classifier: give it instead of --classifier/--checkpoint, not with them")
    elif args.dataset is None and args.defense is None:
        raise InputError("--model needs --dataset (e.g. cifar10): robustkit cannot tell which data it classifies")
    if args.classifier is None and args.defense is None and args.model is None:
        raise InputError("give --classifier NAME, --model FILE.py:FUNCTION or --defense NAME (see `robustkit list`)")
    for flag, value in (("--gradient", args.gradient), ("--score-model", args.score_model),
                        ("--score-checkpoint", args.score_checkpoint)):
        if value is not None and args.defense is None:
            raise InputError(f"{flag} applies to a defense: give --defense NAME")
    if args.score_checkpoint is not None and args.score_model is None:
        raise InputError("--score-checkpoint loads weights into --score-model NAME: give both")
    from ..defenses import create_defense, defense_config

    name = args.classifier
    if name is None and args.checkpoint is not None:  # --defense D --checkpoint F: D's own classifier, from F
        name = defense_config(args.defense).classifier
        if name is None:
            raise InputError(f"--checkpoint loads a classifier, but {args.defense} has no separate classifier")
    clf = None
    if args.model is not None:
        from ..models.user import load_user_model, parse_floats, parse_input_shape

        clf = load_user_model(args.model, input_shape=parse_input_shape(args.input_shape),
                              mean=parse_floats("--mean", args.mean), std=parse_floats("--std", args.std),
                              name=args.name)
        if args.defense is None:
            return clf, None, args.dataset
    elif name is not None:
        clf = create_classifier(name, pretrained=args.checkpoint is None and not args.random_weights,
                                checkpoint=args.checkpoint)
    if args.defense is None:
        return clf, None, clf.config.dataset

    options = {k: v for k, v in (("classifier", clf), ("gradient", args.gradient), ("score_model", args.score_model),
                                 ("score_checkpoint", args.score_checkpoint)) if v is not None}
    defense = create_defense(args.defense, pretrained=not args.random_weights, **options)
    # purifiers keep their classifier as .classifier, test-time adaptation its static copy as .base_classifier
    base = getattr(defense, "base_classifier", getattr(defense, "classifier", None))
    return defense, base, defense_config(args.defense).dataset


def run(args: argparse.Namespace) -> int:
    options = parse_attack_options(args.attack_option)
    with stage(f"loading {args.defense or args.model or args.classifier}"):
        model, base, dataset = _build(args)
    rec = benchmark(model, dataset=args.dataset or dataset, base_classifier=base, threat_model=args.threat_model,
                    eps=args.eps, attacks=args.attacks, n_examples=args.n_examples, batch_size=args.batch_size,
                    seed=args.seed, n_reeval=args.n_reeval, run_dir=args.run_dir, data_dir=args.data_dir, device=args.device,
                    checks=not args.no_checks, probe_size=args.probe_size, cascade=not args.no_cascade,
                    check_options=check_options_from_args(args),
                    attack_options=options,
                    executor=args.executor, workers=args.workers, lease_timeout=args.lease_timeout,
                    allow_random_weights=args.random_weights, tta_threat_model=args.tta_threat_model,
                    entry_budget=not args.full_budget)
    if args.json:
        print(rec.to_json())
    else:
        print(rec.summary())
        if args.run_dir:
            print(f"record: {Path(args.run_dir) / 'record.json'}")
    return 1 if rec.unreliable else 0
