"""Measure a registered class-conditional score model: denoising loss per t and class-conditional sample accuracy.

    python scripts/eval_score_model.py                       # the bundled tiny_unet.digits
    python scripts/eval_score_model.py unet.cifar10 --data-dir ../shared/data/cifar10 \\
        --classifier-checkpoint ../shared/models/resnet56-4bfd9763.th --guidance 0,1,3 --json runs/unet.json

Two numbers, on data the model never saw (:mod:`robustkit.diffusion.quality`):

* the denoising loss ``mean (ε̂(x_t, t, y) − ε)²`` per t on the **test** split (``--n-examples`` images ×
  ``--draws`` noise draws, seeded), with the true label and with the null label (y = None), next to
  the loss of predicting ε̂ = 0 on the same noise (≈ 1);
* the fraction of class-conditional samples (``--per-class`` per class, deterministic DDIM with
  ``--sample-steps`` steps from pure noise, seeded) that an independent classifier — ``tiny_cnn.digits``
  (digits) or ``resnet56.cifar10`` (cifar10) — assigns to their conditioning class, with a 95 % Wilson
  interval, for each classifier-free-guidance weight of ``--guidance`` (0: the plain conditional model);
  the classifier's accuracy on the same real test images is printed for reference.

``--out FILE.png`` writes the sample grid of the first guidance weight (one row per class); ``--json``
the settings and every number.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import robustkit
from robustkit.diffusion import class_conditional_accuracy, create_score_model, loss_per_t, save_image_grid
from robustkit.diffusion import score_model_config
from robustkit.eval.stats import accuracy_with_ci

JUDGES = {"digits": "tiny_cnn.digits", "cifar10": "resnet56.cifar10"}
LOSS_EXAMPLES = {"digits": None, "cifar10": 1000}  # None: the whole test split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", default="tiny_unet.digits", help="a registered score model")
    ap.add_argument("--checkpoint", type=Path, default=None, help="weights file (default: the published ones)")
    ap.add_argument("--classifier-checkpoint", type=Path, default=None,
                    help="the judge's weights file (default: its published or bundled weights)")
    ap.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $ROBUSTKIT_DATA)")
    ap.add_argument("--n-examples", type=int, default=None, help="test images for the loss (digits: all; cifar10: 1000)")
    ap.add_argument("--draws", type=int, default=8, help="noise draws per test image for the loss")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--guidance", default="0,1", help="comma-separated CFG weights of the sample runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="write the first guidance weight's sample grid here")
    ap.add_argument("--json", type=Path, default=None, help="write the settings and results here")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.guidance.split(",") if w.strip()]
    t0 = time.perf_counter()
    cfg = score_model_config(args.name)
    model = create_score_model(args.name, pretrained=args.checkpoint is None, checkpoint=args.checkpoint)
    n = args.n_examples if args.n_examples is not None else LOSS_EXAMPLES.get(cfg.dataset)
    x, y = robustkit.load_dataset(cfg.dataset, split="test", n_examples=n, data_dir=args.data_dir)
    print(f"{args.name}: weights {model.weights_path}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"denoising loss on the {cfg.dataset} test split ({len(y)} images x {args.draws} noise draws):")
    print(f"{'t':>6} {'cond':>8} {'uncond':>8} {'zero':>8} {'cond/zero':>10}")
    with torch.no_grad():
        losses = loss_per_t(model, x * 2 - 1, y, draws=args.draws, seed=args.seed)
    for r in losses:
        print(f"{r['t']:>6.2f} {r['cond']:>8.4f} {r['uncond']:>8.4f} {r['zero']:>8.4f} {r['cond'] / r['zero']:>10.3f}")
    judge_name = JUDGES[cfg.dataset]
    judge = robustkit.create_classifier(judge_name, pretrained=args.classifier_checkpoint is None,
                                        checkpoint=args.classifier_checkpoint)
    with torch.no_grad():
        real = accuracy_with_ci(judge(x).argmax(1) == y)
    print(f"{judge_name} on these real test images: {real}")
    samples = []
    for i, w in enumerate(weights):
        with torch.no_grad():
            acc, imgs = class_conditional_accuracy(model, judge, per_class=args.per_class, steps=args.sample_steps,
                                                   guidance=w, seed=args.seed)
        samples.append({"guidance": w, "accuracy": {**asdict(acc), "value": acc.value}})
        print(f"class-conditional samples (DDIM {args.sample_steps} steps, w = {w:g}) that {judge_name} assigns to "
              f"their class: {acc}")
        if i == 0 and args.out is not None:
            save_image_grid(imgs, args.out, nrow=args.per_class, scale=max(1, 32 // model.input_shape[-1]))
            print(f"wrote {args.out}")
    elapsed = time.perf_counter() - t0
    print(f"[{elapsed:.1f}s]")
    if args.json is not None:
        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "weights": model.weights_path, "loss_examples": len(y), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "losses": losses, "judge": judge_name,
                  "judge_real_accuracy": {**asdict(real), "value": real.value}, "samples": samples,
                  "elapsed_s": elapsed}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
