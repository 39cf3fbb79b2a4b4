"""Tests of robustkit.data.corruptions: the 15 CIFAR-10-C corruptions at 5 severities."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from robustkit.data import corruptions as C
from robustkit.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from robustkit.errors import InputError

# No randomness at all in these (the official code draws none either).
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
# Mean |corrupted - clean| rises strictly with severity under CIFAR-10-C's constants for these.
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "fog",
            "brightness", "contrast", "pixelate", "jpeg_compression"]


def textured_images(n: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields plus edges: stands in for photos when CIFAR-10 is not available."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.uniform(0, 1, (n, 32, 32, 3)), (0, 2, 2, 0), mode="wrap")
    field = (field - field.min()) / (field.max() - field.min())
    field[:, 8:24, 12:14] = rng.uniform(0, 1, (n, 1, 1, 3))  # a hard edge
    grain = rng.normal(0, 0.06, (n, 32, 32, 1))  # pixel-level detail, as photos have
    return np.round(20 + 215 * np.clip(field + grain, 0, 1)).astype(np.uint8)


@pytest.fixture(scope="module")
def cifar_images(request) -> np.ndarray:
    """Six CIFAR-10 test images (HWC uint8) when $ROBUSTKIT_SHARED has them, else textured stand-ins."""
    import os
    from pathlib import Path

    env = os.environ.get("ROBUSTKIT_SHARED")
    path = Path(env) / "data" / "cifar10" / "test.npz" if env else None
    if path is not None and path.is_file():
        with np.load(path) as d:
            return d["x"][:6]
    return textured_images(6)


def gray(n: int = 4, value: int = 128) -> np.ndarray:
    return np.full((n, 32, 32, 3), value, np.uint8)


# ------------------------------------------------------------------------------ every (name, severity)

@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_deterministic_in_range_and_changes_the_image(corruption, severity):
    x = textured_images(3)
    y = corrupt(x, corruption, severity, seed=7)
    assert y.dtype == np.uint8 and y.shape == x.shape
    assert np.array_equal(y, corrupt(x, corruption, severity, seed=7))
    assert np.abs(y.astype(float) - x).mean() > 0.5, "the image must change"
    other = corrupt(x, corruption, severity, seed=8)
    if corruption in DETERMINISTIC:
        assert np.array_equal(y, other)
    else:
        assert not np.array_equal(y, other), "a different seed must give different draws"
    # uint8 round trip through the loader's float convention is exact
    back = np.round(torch.from_numpy(y).float().div(255).numpy() * 255).astype(np.uint8)
    assert np.array_equal(back, y)


def test_batches_reproduce_the_whole_set_and_global_rng_is_untouched():
    x = textured_images(5)
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    for c in CORRUPTIONS:
        whole = corrupt(x, c, 3, seed=1)
        parts = np.concatenate([corrupt(x[:2], c, 3, seed=1), corrupt(x[2:], c, 3, seed=1, start_index=2)])
        assert np.array_equal(whole, parts), c
        assert np.array_equal(corrupt(x[3], c, 3, seed=1, start_index=3), whole[3]), c  # one HWC image
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


# ------------------------------------------------------------------------------- severity ordering

def _mad(x: np.ndarray, c: str) -> list[float]:
    return [float(np.abs(corrupt(x, c, s, seed=0).astype(float) - x).mean()) for s in SEVERITIES]


@pytest.mark.parametrize("corruption", MONOTONE)
def test_change_increases_with_severity(cifar_images, corruption):
    d = _mad(cifar_images, corruption)
    assert all(a < b for a, b in zip(d, d[1:])), d


def test_severity_order_of_the_non_monotone_corruptions(cifar_images):
    """CIFAR-10-C's own constants do not order these strictly; check what they do imply."""
    g = _mad(cifar_images, "glass_blur")  # severities 4, 5 shuffle twice, 1..3 once
    assert min(g[3], g[4]) > max(g[:3]), g
    m = _mad(cifar_images, "motion_blur")  # 3 and 4 share sigma 2 (radius 6 vs 8): nearly equal
    assert m[0] < m[1] < m[2] and m[0] < m[3] < m[4], m
    f = _mad(cifar_images, "frost")  # weights (1, .2), (1, .3), (.9, .4), (.85, .4), (.75, .45)
    assert f[0] < f[1] and f[0] < f[2] and f[0] < f[4], f
    e = _mad(cifar_images, "elastic_transform")  # severity 1 is a large affine jitter, 5 a small one
    assert min(e) > 2, e


# ------------------------------------------------------------------ magnitudes from the constants

@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_std(severity):
    x = gray(8)
    diff = corrupt(x, "gaussian_noise", severity, seed=0).astype(float) - x
    expected = C.GAUSSIAN_NOISE[severity - 1] * 255
    assert diff.std() == pytest.approx(expected, rel=0.04)
    assert diff.mean() == pytest.approx(-0.5, abs=1.0)  # truncation to uint8 floors


@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_std(severity):
    x = gray(8)
    diff = corrupt(x, "shot_noise", severity, seed=0).astype(float) - x
    rate = C.SHOT_NOISE[severity - 1]
    assert diff.std() == pytest.approx(np.sqrt(128 / 255 / rate) * 255, rel=0.05)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_noise_fractions(severity):
    x = gray(16)
    y = corrupt(x, "impulse_noise", severity, seed=0)
    amount, n = C.IMPULSE_NOISE[severity - 1], y.size
    tol = 5 * np.sqrt(amount / 2 / n)
    assert (y == 0).mean() == pytest.approx(amount / 2, abs=tol)
    assert (y == 255).mean() == pytest.approx(amount / 2, abs=tol)
    assert ((y != 0) & (y != 255) & (y != 128)).sum() == 0


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_magnitude(cifar_images, severity):
    x = cifar_images.astype(float)
    y = corrupt(cifar_images, "contrast", severity, seed=0).astype(float)
    c = C.CONTRAST[severity - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    expected = (1 - c) * np.abs(x - means).mean()
    assert np.abs(y - x).mean() == pytest.approx(expected, abs=0.6)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), means[:, 0, 0], atol=1.0)  # per-channel mean kept


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_magnitude(severity):
    c = C.BRIGHTNESS[severity - 1]
    grey = corrupt(gray(1, 100), "brightness", severity)  # S = 0: V goes up by c
    assert np.abs(grey.astype(float) - min(100 + 255 * c, 255)).max() <= 1
    colour = np.zeros((1, 32, 32, 3), np.uint8)
    colour[..., :] = (200, 100, 50)  # hue and saturation kept: every channel scales by V'/V
    y = corrupt(colour, "brightness", severity).astype(float)
    v = 200 / 255
    scale = min(v + c, 1) / v
    np.testing.assert_allclose(y[0, 0, 0], np.floor(np.array([200, 100, 50]) * scale + 1e-6), atol=1)
    black = corrupt(np.zeros((1, 32, 32, 3), np.uint8), "brightness", severity)
    assert np.abs(black.astype(float) - 255 * c).max() <= 1  # black becomes grey V' = c


@pytest.mark.parametrize("severity", SEVERITIES)
def test_brightness_matches_an_hsv_round_trip(cifar_images, severity):
    """Our closed form equals RGB -> HSV, V += c, HSV -> RGB (matplotlib's HSV, same formulas as skimage's)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(cifar_images / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + C.BRIGHTNESS[severity - 1], 0, 1)
    ref = np.uint8(np.clip(hsv_to_rgb(hsv), 0, 1) * 255)
    diff = np.abs(corrupt(cifar_images, "brightness", severity).astype(int) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05  # float rounding before truncation only


@pytest.mark.parametrize("corruption", ["defocus_blur", "zoom_blur", "pixelate", "jpeg_compression"])
def test_filters_keep_a_constant_image(corruption):
    x = gray(1, 90)
    for s in SEVERITIES:
        assert np.abs(corrupt(x, corruption, s).astype(int) - 90).max() <= 1, s


def test_constants_are_cifar10c_not_imagenet_c():
    assert [len(z) for z in C.ZOOM_BLUR] == [7, 12, 16, 21, 26]  # np.arange's float end points
    assert C.ELASTIC[0] == (0.0, 0.0, 32 * 0.08) and C.ELASTIC[4] == (3.2, 32 * 0.03, 32 * 0.03)
    assert C.GAUSSIAN_NOISE == (0.04, 0.06, 0.08, 0.09, 0.10)  # ImageNet-C uses .08 .. .38
    assert C.FOG[4] == (1.5, 1.75) and C.JPEG_QUALITY == (80, 65, 58, 50, 40)
    assert set(C.SUBSTITUTES) == {"motion_blur", "snow", "frost"}
    assert CORRUPTIONS[0] == "gaussian_noise" and CORRUPTIONS[-1] == "jpeg_compression" and len(CORRUPTIONS) == 15


# ------------------------------------------------------------------ glass blur equals the official loop

@pytest.mark.parametrize("severity", SEVERITIES)
def test_glass_blur_gather_equals_the_sequential_swap_loop(severity):
    """The official loop's 'swap' through NumPy views; our single gather must give the same image."""
    x = textured_images(1, seed=3)
    sigma, delta, iterations = C.GLASS_BLUR[severity - 1]
    rng = np.random.default_rng([5, CORRUPTIONS.index("glass_blur"), severity, 0])
    img = np.uint8(C._gaussian(x[0] / 255.0, sigma) * 255)
    for _ in range(iterations):
        d = rng.integers(-delta, delta, size=(32 - 2 * delta, 32 - 2 * delta, 2))
        for h in range(32 - delta, delta, -1):
            for w in range(32 - delta, delta, -1):
                dx, dy = d[h - delta - 1, w - delta - 1]
                img[h, w], img[h + dy, w + dx] = img[h + dy, w + dx], img[h, w]
    expected = np.uint8(np.clip(C._gaussian(img / 255.0, sigma), 0, 1) * 255)
    assert np.array_equal(corrupt(x, "glass_blur", severity, seed=5)[0], expected)


def test_motion_kernel_follows_imagemagick():
    taps = C._motion_kernel(6, 1, 0.0)  # width 2*ceil(6)+1, one-sided, along +columns at angle 0
    assert len(taps) == 13 and [t[:2] for t in taps] == [(0, i) for i in range(13)]
    w = np.array([t[2] for t in taps])
    assert w.sum() == pytest.approx(1) and w[1] / w[0] == pytest.approx(np.exp(-0.5))
    assert [t[:2] for t in C._motion_kernel(2, 1, 90.0)] == [(i, 0) for i in range(5)]
    assert [t[:2] for t in C._motion_kernel(2, 1, 45.0)] == [(0, 0), (1, 1), (1, 1), (2, 2), (3, 3)]
    img = np.zeros((32, 32))
    img[10, 10] = 1.0
    out = C._motion_blur(img, 2, 1, 0.0)  # each output reads pixels to its right: the dot smears left
    np.testing.assert_allclose(out[10, 6:11], [t[2] for t in C._motion_kernel(2, 1, 0.0)][::-1])
    assert out.sum() == pytest.approx(1) and out[10, 11:].sum() == 0


def test_plasma_fractal_and_frost_texture():
    a = C.plasma_fractal(np.random.default_rng(0), 32, 3.0)
    assert a.shape == (32, 32) and a.min() == 0.0 and a.max() == 1.0
    assert np.array_equal(a, C.plasma_fractal(np.random.default_rng(0), 32, 3.0))
    smooth = np.abs(np.diff(a, axis=0)).mean()
    rough = np.abs(np.diff(C.plasma_fractal(np.random.default_rng(0), 32, 1.5), axis=0)).mean()
    assert rough > smooth  # a smaller wibble decay keeps more fine detail
    with pytest.raises(InputError, match="power of two"):
        C.plasma_fractal(np.random.default_rng(0), 30)
    t = C.frost_texture(np.random.default_rng(0))
    assert t.shape == (32, 32, 3) and t.min() >= 0 and t.max() <= 255
    assert (t[..., 2] >= t[..., 0]).all()  # blue-white tint


# ---------------------------------------------------------------------------------- frost photographs

def write_frost_photos(folder, colours=None, size=(200, 180)):
    """Stand-in photographs named like the official ones (the real files are not in the test data)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(C.FROST_FILES):
        colour = colours[i] if colours else (10 * i, 100 + 10 * i, 250)
        Image.new("RGB", size, colour).save(folder / name, quality=100)


def test_load_frost_images_shrinks_like_opencv(tmp_path):
    from PIL import Image

    write_frost_photos(tmp_path)
    ramp = np.tile(np.arange(200, dtype=np.uint8), (180, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(tmp_path / "frost1.png")
    photos = C.load_frost_images(tmp_path)
    assert len(photos) == 5 and all(p.shape == (36, 40, 3) and p.dtype == np.uint8 for p in photos)
    # OpenCV bilinear at factor 0.2 samples source column (j + 0.5) * 5 - 0.5 = 5j + 2
    assert photos[0][0, :, 0].tolist() == [5 * j + 2 for j in range(40)]


def test_frost_with_photographs_blends_a_crop(tmp_path):
    colours = [(0, 0, 0), (40, 120, 250), (40, 120, 250), (40, 120, 250), (40, 120, 250)]
    colours[0] = colours[1]  # all photographs the same colour: the crop is that colour
    write_frost_photos(tmp_path, colours)
    photos = C.load_frost_images(tmp_path)
    x = textured_images(2)
    for s in SEVERITIES:
        w_img, w_frost = C.FROST[s - 1]
        y = corrupt(x, "frost", s, seed=0, frost_images=photos)
        expected = np.clip(w_img * x.astype(float) + w_frost * np.array([40.0, 120, 250]), 0, 255)
        # JPEG photographs of a flat colour are off by a grey level or so; truncation adds one more
        assert np.abs(y.astype(float) - expected).max() <= 2, s
        assert np.array_equal(y, corrupt(x, "frost", s, seed=0, frost_images=photos))
    assert not np.array_equal(corrupt(x, "frost", 5, frost_images=photos), corrupt(x, "frost", 5))


def test_frost_photograph_errors(tmp_path):
    from robustkit.errors import DatasetError

    with pytest.raises(DatasetError, match="frost1.png.*hendrycks/robustness"):
        C.load_frost_images(tmp_path)
    write_frost_photos(tmp_path, size=(150, 150))
    with pytest.raises(DatasetError, match="too small"):
        C.load_frost_images(tmp_path)
    with pytest.raises(InputError, match="frost_images"):
        corrupt(gray(1), "frost", 1, frost_images=[np.zeros((20, 20, 3), np.uint8)])


# ---------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name", ["fog ", "Fog", "speckle_noise", "", None, 3])
def test_unknown_corruption(name):
    with pytest.raises(InputError, match="unknown corruption.*gaussian_noise.*jpeg_compression"):
        corrupt(gray(1), name, 1)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, "3", True, None])
def test_bad_severity(severity):
    with pytest.raises(InputError, match="severity must be an int in 1..5"):
        corrupt(gray(1), "fog", severity)


@pytest.mark.parametrize("images", [
    np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 3, 32, 32), np.uint8),
    np.zeros((2, 28, 28, 3), np.uint8), np.zeros((32, 32), np.uint8), np.zeros((1, 1, 32, 32, 3), np.uint8),
], ids=["float", "chw", "28px", "2d", "5d"])
def test_bad_images(images):
    with pytest.raises(InputError, match=r"expected uint8 images \[N, 32, 32, 3\]"):
        corrupt(images, "contrast", 1)


@pytest.mark.parametrize("kw", [dict(seed=-1), dict(seed=1.5), dict(start_index=-2), dict(seed=True)])
def test_bad_seed_or_start(kw):
    with pytest.raises(InputError, match="non-negative int"):
        corrupt(gray(1), "fog", 1, **kw)
