"""U-Net vs DiT vs DiffuSSM at equal parameter count and equal training budget.

Each backbone of a matched set is trained by :func:`robustkit.diffusion.train` with the *same*
:class:`~robustkit.diffusion.DiffusionTrainConfig` except ``model`` (same data, steps, batch, learning-rate
schedule, EMA, label dropout, seed), each in ``--out/<backbone>/``, then its EMA model is measured:

* the denoising loss ``mean (ε̂(x_t, t, y) − ε)²`` per t on the **test** split, with the true label
  (cond) and the null label (uncond), by :func:`robustkit.diffusion.loss_per_t`: the noise
  of each t is drawn from a generator seeded by ``(--seed, t)``, so all backbones see the same noise draws
  (the loss of the zero predictor ε̂ = 0 on that noise, ≈ 1, is the table's last row);
* the class-conditional sample accuracy: ``--per-class`` DDIM samples per class (``--sample-steps`` steps
  from pure noise drawn from a generator seeded by ``--seed``, hence the same initial noise for every
  backbone; CFG weight ``--guidance``, default 0: the plain conditional model), classified by the judge
  — ``tiny_cnn.digits`` (digits) or ``resnet56.cifar10`` (cifar10) — counted right when the judge
  assigns the conditioning class; 95 % Wilson interval. The judge's accuracy on the real test images of
  the loss measurement is printed for reference. The samples are saved as
  ``--out/<backbone>/eval_samples.png`` (one row per class);
* the parameter count, the optimiser steps, the training wall time (summed over the resumed chunks, kept
  in ``--out/<backbone>/timing.json``; a chunk killed before it returns is not counted), and the forward
  FLOPs per image by ``count_flops`` of ``bench/bench_backbone_scaling.py`` (FlopCounterMode plus its
  analytic FFT and CPU-attention terms) over one forward at batch 8, divided by 8.

Datasets (``--dataset``):

* ``digits`` (default): :data:`MATCHED_DIGITS`, three 8×8 1-channel configs of about 190 k parameters
  (within ±5 % of one another; the U-Net is ``tiny_unet.digits``' architecture), trained with the recipe
  of ``tiny_unet.digits`` (``TINY_UNET_DIGITS_RECIPE``: 4000 steps of 128, AdamW lr 2e-3, warm-up 200,
  cosine, grad clip 1, EMA 0.999, p_uncond 0.1, no flips, seed 0); judged by ``tiny_cnn.digits``.
* ``cifar10``: ``MATCHED`` of ``bench/bench_backbone_scaling.py`` (about 2.8 M parameters each), trained
  with :data:`CIFAR10_RECIPE`, a CPU-sized recipe (batch 64, lr 2e-4 for all three, warm-up 500,
  cosine, grad clip 1, EMA 0.999, p_uncond 0.1, horizontal flips, 5000 steps; DiT and DiffuSSM might
  prefer a lower lr, but one shared lr keeps the budget equal); judged by ``resnet56.cifar10`` (weights
  ``--classifier-checkpoint``); data from ``--data-dir``.

``--steps``, ``--warmup``, ``--lr`` and ``--ema`` override the recipe's step count, warm-up steps, peak
learning rate and EMA decay, for all backbones alike (a different recipe is a different config, so train it
in a fresh ``--out``). Rerunning the same command resumes: finished backbones are not retrained, unfinished
ones continue from their last checkpoint; ``--max-minutes`` bounds each backbone's training chunk of this
call, and the evaluation only runs once all backbones have finished.

Reproduce (repository root; runtimes measured on this 2-core machine while 3-4 other jobs ran, 1 thread)::

    # digits, full recipe (4000 steps per backbone), 18.4 min in all: training unet 7.1 min, dit 3.7 min,
    # diffussm 6.9 min; evaluation 43 s. Rerunning it (nothing left to train, evaluation only) takes 51 s
    # and prints the same table.
    OMP_NUM_THREADS=1 .venv/bin/python bench/compare_backbones.py --out runs/compare_digits \\
        --json /tmp/compare_digits.json > /tmp/compare_digits.txt

    # cifar10 at a budget one session holds (docs/results/backbones.md §1b): 1200 steps with the schedule
    # shortened alike for all three; a step took 1.04 s (unet), 2.83 s (dit) and 3.61 s (diffussm) on one
    # core, two runs side by side, so training took 21, 57 and 72 min; evaluation 4-10 min per backbone.
    # The recipe's own 5000 steps take about 4x as long: train in chunks with --max-minutes and rerun.
    OMP_NUM_THREADS=1 .venv/bin/python bench/compare_backbones.py --dataset cifar10 \\
        --out runs/cifar_short --data-dir ../shared/data/cifar10 \\
        --classifier-checkpoint ../shared/models/resnet56-4bfd9763.th \\
        --steps 1200 --warmup 100 --lr 5e-4 --ema 0.995 --json /tmp/compare_cifar10.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and `scripts` importable like with PYTHONPATH=.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robustkit  # noqa: E402
from bench.bench_backbone_scaling import MATCHED, BackboneConfig, count_flops, count_params  # noqa: E402
from robustkit.diffusion import DiffusionTrainConfig, DiffuSSMConfig, DiTConfig, VPSDE, save_image_grid  # noqa: E402
from robustkit.diffusion import TIMES, class_conditional_accuracy, loss_per_t  # noqa: E402
from robustkit.diffusion import train as train_diffusion  # noqa: E402
from robustkit.diffusion.train import atomic_write  # noqa: E402
from robustkit.diffusion.zoo import TINY_UNET_DIGITS, TINY_UNET_DIGITS_RECIPE, UNET_CIFAR10_RECIPE  # noqa: E402
from robustkit.eval.stats import Accuracy, accuracy_with_ci  # noqa: E402
from robustkit.diffusion.train import BACKBONES as TRAINABLE  # noqa: E402

BACKBONES = tuple(TRAINABLE)  # ("unet", "dit", "diffussm"): every backbone the trainer builds

#: Three 8×8 grey-scale backbones of about 190 k parameters (equal within ±5 %).
MATCHED_DIGITS: dict[str, BackboneConfig] = {
    # tiny_unet.digits: 16/32 channels, levels 8-4, attention at 4×4 and in the middle (191,073).
    "unet": TINY_UNET_DIGITS,
    # DiT, patch 2 (16 tokens), width 44, 5 blocks of 4 heads (187,224).
    "dit": DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=44, depth=5, num_heads=4,
                     num_classes=10, frequency_size=64),
    # DiffuSSM, width 72, 2 blocks, hourglass 2 (SSM over 32 steps), 16 complex modes (186,193).
    "diffussm": DiffuSSMConfig(in_channels=1, image_size=8, hidden_size=72, depth=2, downsample=2, state_size=16,
                               num_classes=10, frequency_size=64),
}

#: CPU-sized CIFAR-10 recipe shared by the three backbones of ``MATCHED`` (``model`` is replaced per
#: backbone): the recipe of the registry's ``unet.cifar10``, so the U-Net run here trains that model.
CIFAR10_RECIPE = UNET_CIFAR10_RECIPE


@dataclass(frozen=True)
class Setup:
    """Per-dataset choices: the matched configs, the shared recipe, the judge and evaluation defaults."""

    configs: dict[str, BackboneConfig]
    recipe: DiffusionTrainConfig
    judge: str
    loss_examples: Optional[int]  # test images for the loss (None: the whole test split)
    draws: int
    per_class: int
    sample_steps: int


SETUPS = {
    "digits": Setup(MATCHED_DIGITS, TINY_UNET_DIGITS_RECIPE, "tiny_cnn.digits", loss_examples=None, draws=8,
                    per_class=50, sample_steps=100),
    "cifar10": Setup(MATCHED, CIFAR10_RECIPE, "resnet56.cifar10", loss_examples=1000, draws=1, per_class=20,
                     sample_steps=50),
}

TIMING_NAME = "timing.json"
FLOP_BATCH = 8


@dataclass
class Row:
    """One trained backbone, measured. ``losses``: ``loss_per_t`` rows (``t``, ``cond``, ``uncond``, ``zero``)."""

    backbone: str
    params: int
    steps: int
    train_s: float
    losses: list[dict]
    sample_accuracy: Accuracy
    gflops_per_image: float


# ------------------------------------------------------------------------------------------------- train

def _read_timing(run_dir: Path) -> dict:
    path = run_dir / TIMING_NAME
    return json.loads(path.read_text()) if path.exists() else {"train_s": 0.0, "steps": 0, "chunks": []}


def train_backbone(config: DiffusionTrainConfig, run_dir: Path, *, max_minutes: Optional[float],
                   data_dir: Optional[Path]) -> tuple[torch.nn.Module, bool, dict]:
    """Train (or resume, or just load when finished) one backbone in ``run_dir``.

    Returns the EMA model, whether all steps are done, and the timing record: ``train_s`` (wall time of
    the calls that trained, summed), ``steps`` (done so far) and ``chunks`` (``[steps, seconds]`` per call
    that trained), also written to ``run_dir/timing.json``.
    """
    timing = _read_timing(run_dir)
    result = train_diffusion(config, run_dir, max_time_s=None if max_minutes is None else 60 * max_minutes,
                             checkpoint_every=500, data_dir=data_dir, samples_per_class=0)
    done = result.step - timing["steps"]
    if done > 0:
        timing = {"train_s": timing["train_s"] + result.elapsed_s, "steps": result.step,
                  "chunks": timing["chunks"] + [[done, result.elapsed_s]]}
        atomic_write(run_dir / TIMING_NAME, lambda f: f.write(json.dumps(timing, indent=2).encode()))
    return result.model, result.finished, timing


# -------------------------------------------------------------------------------------------------- eval

def forward_gflops(model: torch.nn.Module) -> float:
    """Forward GFLOPs per image (``count_flops`` at batch :data:`FLOP_BATCH`, divided by the batch)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(FLOP_BATCH, *model.input_shape, generator=g)
    y = torch.arange(FLOP_BATCH) % model.num_classes
    return count_flops(model, x, torch.full((FLOP_BATCH,), 0.5), y).total / FLOP_BATCH / 1e9


def evaluate(name: str, model: torch.nn.Module, timing: dict, judge: torch.nn.Module, x0: torch.Tensor,
             y: torch.Tensor, *, draws: int, per_class: int, sample_steps: int, guidance: float, seed: int,
             grid_path: Path, sde: VPSDE) -> Row:
    """Measure one trained EMA model (``x0`` test images in [-1, 1]); saves its samples to ``grid_path``."""
    with torch.no_grad():
        losses = loss_per_t(model, x0, y, draws=draws, seed=seed, sde=sde)
        acc, imgs = class_conditional_accuracy(model, judge, per_class=per_class, steps=sample_steps,
                                               guidance=guidance, seed=seed, sde=sde)
    save_image_grid(imgs, grid_path, nrow=per_class, scale=max(1, 32 // model.input_shape[-1]))
    return Row(backbone=name, params=count_params(model), steps=timing["steps"], train_s=timing["train_s"],
               losses=losses, sample_accuracy=acc, gflops_per_image=forward_gflops(model))


def format_table(rows: list[Row]) -> str:
    """Markdown table: one row per backbone, then the zero predictor's loss on the same noise."""
    times = [r["t"] for r in rows[0].losses]
    head = (["backbone", "params", "steps", "train min"] + [f"loss t={t:g} cond/uncond" for t in times]
            + ["sample acc [95% CI]", "GFLOP/img"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        a = r.sample_accuracy
        cells = ([r.backbone, f"{r.params:,}", str(r.steps), f"{r.train_s / 60:.1f}"]
                 + [f"{x['cond']:.4f} / {x['uncond']:.4f}" for x in r.losses]
                 + [f"{100 * a.value:.1f}% [{100 * a.low:.1f}, {100 * a.high:.1f}] ({a.correct}/{a.n})",
                    f"{r.gflops_per_image:.4f}"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| ε̂ = 0 (same noise) | | | | " + " | ".join(f"{x['zero']:.4f}" for x in rows[0].losses) + " | | |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- main

def main(argv: Optional[list[str]] = None) -> Optional[list[Row]]:
    """Train what is left, then (once every backbone is finished) evaluate, print the table, write ``--json``.

    Returns the rows, or ``None`` when some backbone is not finished yet (rerun to continue).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits", choices=tuple(SETUPS))
    p.add_argument("--out", type=Path, required=True, help="run folders go to OUT/<backbone>/")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated subset of unet, dit, diffussm")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--warmup", type=int, default=None, help="override the recipe's learning-rate warm-up steps")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's peak learning rate")
    p.add_argument("--ema", type=float, default=None, help="override the recipe's EMA decay")
    p.add_argument("--max-minutes", type=float, default=None, help="training time per backbone in this call")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (cifar10)")
    p.add_argument("--classifier-checkpoint", type=Path, default=None,
                   help="the judge's weights file (default: its published or bundled weights)")
    p.add_argument("--loss-examples", type=int, default=None,
                   help="test images for the loss (default: digits all 360, cifar10 1000)")
    p.add_argument("--draws", type=int, default=None, help="noise draws per test image (default: digits 8, cifar10 1)")
    p.add_argument("--per-class", type=int, default=None, help="samples per class (default: digits 50, cifar10 20)")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: digits 100, cifar10 50)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance weight of the samples")
    p.add_argument("--seed", type=int, default=0, help="seeds the loss noise and the sampling noise")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the settings and all rows here")
    args = p.parse_args(argv)
    setup = SETUPS[args.dataset]
    names = [s.strip() for s in args.backbones.split(",") if s.strip()]
    unknown = [n for n in names if n not in setup.configs]
    if unknown or not names:
        raise SystemExit(f"unknown backbone(s) {unknown}; choose from {', '.join(setup.configs)}")
    overrides = {"steps": args.steps, "warmup_steps": args.warmup, "lr": args.lr, "ema_decay": args.ema}
    recipe = replace(setup.recipe, **{k: v for k, v in overrides.items() if v is not None})
    draws = args.draws or setup.draws
    per_class = args.per_class or setup.per_class
    sample_steps = args.sample_steps or setup.sample_steps
    loss_examples = args.loss_examples or setup.loss_examples
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; dataset {args.dataset}, {recipe.steps} steps of {recipe.batch_size}, lr {recipe.lr:g} "
          f"({recipe.lr_schedule}, warm-up {recipe.warmup_steps}), EMA {recipe.ema_decay}", flush=True)

    models, timings, unfinished = {}, {}, []
    for name in names:
        config = replace(recipe, model=setup.configs[name])
        model, finished, timing = train_backbone(config, args.out / name, max_minutes=args.max_minutes,
                                                 data_dir=args.data_dir)
        models[name], timings[name] = model, timing
        print(f"{name}: {count_params(model):,} parameters, step {timing['steps']}/{recipe.steps}, "
              f"{timing['train_s'] / 60:.1f} min of training", flush=True)
        if not finished:
            unfinished.append(name)
    counts = [count_params(m) for m in models.values()]
    print(f"parameter count max/min {max(counts) / min(counts):.3f}")
    if unfinished:
        print(f"not finished: {', '.join(unfinished)}; rerun the same command to continue")
        return None

    t0 = time.perf_counter()
    x, y = robustkit.load_dataset(args.dataset, split="test", n_examples=loss_examples, data_dir=args.data_dir)
    judge = robustkit.create_classifier(setup.judge, pretrained=args.classifier_checkpoint is None,
                                        checkpoint=args.classifier_checkpoint)
    with torch.no_grad():
        judge_acc = accuracy_with_ci(judge(x).argmax(1) == y)
    print(f"judge {setup.judge} on the {len(y)} real test images: {judge_acc}")
    rows = []
    for name in names:
        rows.append(evaluate(name, models[name], timings[name], judge, x * 2 - 1, y, draws=draws, per_class=per_class,
                             sample_steps=sample_steps, guidance=args.guidance, seed=args.seed,
                             grid_path=args.out / name / "eval_samples.png", sde=recipe.sde))
        print(f"{name}: samples {rows[-1].sample_accuracy}", flush=True)
    print(f"evaluation {time.perf_counter() - t0:.0f} s; loss on {len(y)} test images x {draws} draws, "
          f"{per_class} samples per class, DDIM {sample_steps} steps, w = {args.guidance:g}\n")
    print(format_table(rows))
    if args.json is not None:
        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "resolved": {"loss_examples": len(y), "draws": draws, "per_class": per_class,
                               "sample_steps": sample_steps, "times": list(TIMES)},
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "recipe": {k: v for k, v in recipe.to_dict().items() if k != "model"},
                  "configs": {n: replace(recipe, model=setup.configs[n]).to_dict()["model"] for n in names},
                  "judge": {"name": setup.judge, "real_accuracy": {**asdict(judge_acc), "value": judge_acc.value}},
                  "rows": [{**asdict(r), "train_min": r.train_s / 60,
                            "sample_accuracy": {**asdict(r.sample_accuracy), "value": r.sample_accuracy.value}}
                           for r in rows]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    return rows


if __name__ == "__main__":
    main()
