"""Train the bundled ``tiny_cnn.digits`` weights (seeded; a few seconds on a CPU).

    python scripts/train_tiny_cnn_digits.py [--out robustkit/models/weights/tiny_cnn_digits.safetensors]

Prints the test accuracy and the sha256 to put in ``robustkit/models/zoo.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from robustkit.data import load_dataset
from robustkit.eval.stats import accuracy_with_ci
from robustkit.hub import file_digest
from robustkit.models.tiny_cnn import train_tiny_cnn

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustkit" / "models" / "weights" / "tiny_cnn_digits.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)  # bit-reproducible on a given machine
    t0 = time.perf_counter()
    x, y = load_dataset("digits", split="train")
    model = train_tiny_cnn(x, y, seed=args.seed, epochs=args.epochs)
    xt, yt = load_dataset("digits", split="test")
    with torch.no_grad():
        correct = (model((xt - 0.5) / 0.5).argmax(1) == yt)
    acc = accuracy_with_ci(correct)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"trained in {time.perf_counter() - t0:.1f}s; test accuracy {acc}")
    print(f"wrote {args.out}\nsha256 {file_digest(args.out)}")


if __name__ == "__main__":
    main()
