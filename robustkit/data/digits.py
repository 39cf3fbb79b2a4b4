"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1797 images, 8×8, 1 channel.

Pixel values 0..16 are scaled to [0, 1] by dividing by 16. The split is fixed and does not depend on
any random generator or library version: the **test** split is every image whose index is a multiple
of 5 (360 images), the **train** split the other 1437, both in scikit-learn's order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NUM_CLASSES = 10
INPUT_SHAPE = (1, 8, 8)
TEST_EVERY = 5


def load_arrays(split: str, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x float32 [N,1,8,8] in [0,1], y int64 [N])`` for ``split``; ``data_dir`` is unused."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    is_test = np.arange(len(y)) % TEST_EVERY == 0
    mask = is_test if split == "test" else ~is_test
    return x[mask], y[mask]
