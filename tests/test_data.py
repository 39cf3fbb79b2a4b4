"""Tests of robustkit.data: the dispatcher, the digits split and every CIFAR-10 layout."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit import hub
from robustkit.data import DATASETS, DatasetError, default_data_dir, load_dataset
from robustkit.data import cifar10
from robustkit.errors import InputError

ROWS = 20  # rows per synthetic CIFAR-10 file
TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
TRAIN_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
TEST_X_SHA256 = "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"


pytestmark = pytest.mark.usefixtures("hermetic_data_env")  # offline, no user data (conftest.py)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- digits

def test_registry_lists_both_datasets():
    assert {"digits", "cifar10"} <= set(DATASETS)
    assert DATASETS["cifar10"] is cifar10.load_arrays


@pytest.mark.parametrize("split,n", [("test", 360), ("train", 1437)])
def test_digits_shapes_range_dtype(split, n):
    x, y = load_dataset("digits", split=split)
    assert tuple(x.shape) == (n, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert set(y.tolist()) == set(range(10))


def test_digits_split_is_every_fifth_image_of_sklearn_order():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    target = torch.from_numpy(d.target.astype(np.int64))
    is_test = torch.arange(len(target)) % 5 == 0
    x, y = load_dataset("digits", split="test")
    assert torch.equal(x, images[is_test]) and torch.equal(y, target[is_test])
    x, y = load_dataset("digits", split="train")
    assert torch.equal(x, images[~is_test]) and torch.equal(y, target[~is_test])


def test_digits_n_examples_and_indices():
    x_all, y_all = load_dataset("digits")
    x, y = load_dataset("digits", n_examples=7)
    assert torch.equal(x, x_all[:7]) and torch.equal(y, y_all[:7])
    x, y = load_dataset("digits", indices=[359, 0, 42, 0])
    assert torch.equal(x, x_all[[359, 0, 42, 0]]) and y.tolist() == y_all[[359, 0, 42, 0]].tolist()
    x, y = load_dataset("digits", indices=np.array([5, 4, 3]), n_examples=2)
    assert torch.equal(x, x_all[[5, 4]]) and torch.equal(y, y_all[[5, 4]])


@pytest.mark.parametrize("n", [0, -1, 361, 2.5, 3.0, "3"])
def test_digits_bad_n_examples(n):
    with pytest.raises(InputError, match="n_examples"):
        load_dataset("digits", n_examples=n)


@pytest.mark.parametrize("indices", [[-1], [0, 360], [[0, 1]], [0.0, 1.0]])
def test_digits_bad_indices(indices):
    with pytest.raises(InputError, match="indices"):
        load_dataset("digits", indices=indices)


def test_unknown_dataset_and_bad_split():
    with pytest.raises(InputError, match="unknown dataset 'mnist'.*cifar10.*digits"):
        load_dataset("mnist")
    with pytest.raises(InputError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(InputError, match="split"):
        cifar10.load_arrays("validation", None)
    assert issubclass(InputError, ValueError) and issubclass(DatasetError, FileNotFoundError)


# ---------------------------------------------------------------------------------- cifar10, real data

@pytest.fixture(scope="module")
def real_cifar_test(shared_dir):
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before hermetic_data_env
        mp.setenv("ROBUSTKIT_OFFLINE", "1")
        return load_dataset("cifar10", split="test", data_dir=shared_dir / "data")


def test_cifar10_real_test_split(real_cifar_test):
    x, y = real_cifar_test
    assert tuple(x.shape) == (10000, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y[:10].tolist() == TEST_LABELS
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    hwc = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    assert hashlib.sha256(hwc.numpy().tobytes()).hexdigest() == TEST_X_SHA256


def test_cifar10_real_train_split(shared_dir):
    x, y = cifar10.load_arrays("train", shared_dir / "data")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.dtype == np.int64 and y[:10].tolist() == TRAIN_LABELS
    assert np.bincount(y, minlength=10).tolist() == [5000] * 10


def test_cifar10_real_via_env_var(shared_dir, real_cifar_test, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_DATA", str(shared_dir / "data"))
    assert default_data_dir() == shared_dir / "data"
    x, y = load_dataset("cifar10", indices=[9999, 0, 1])
    assert torch.equal(x, real_cifar_test[0][[9999, 0, 1]]) and y.tolist()[1:] == TEST_LABELS[:2]


# ----------------------------------------------------------------------------- cifar10, synthetic files

@pytest.fixture
def small_rows(monkeypatch):
    monkeypatch.setattr(cifar10, "ROWS_PER_FILE", ROWS)


def make_split(seed: int, rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Random HWC uint8 images and labels, like one official file."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, rows).astype(np.uint8)


def write_npz_files(folder: Path, rows: int = ROWS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(["test", *[f"train_{k}" for k in range(1, 6)]]):
        x, y = out[name] = make_split(i, rows)
        np.savez_compressed(folder / f"{name}.npz", x=x, y=y, filenames=np.array([f"{name}_{j}.png" for j in range(rows)]))
    return out


def batch_bytes(x_hwc: np.ndarray, y: np.ndarray) -> bytes:
    """An official python batch: R, G, B planes written out by hand, row-major, pickled at protocol 2."""
    data = np.stack([np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()])
                     for img in x_hwc])
    d = {b"batch_label": b"synthetic", b"labels": [int(v) for v in y], b"data": data,
         b"filenames": [b"f%d.png" % j for j in range(len(y))]}
    return pickle.dumps(d, protocol=2)


def write_batches(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the six batch files into ``folder``/cifar-10-batches-py; returns name -> (x HWC, y)."""
    (folder / cifar10.BATCH_DIR).mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(["test_batch", *[f"data_batch_{k}" for k in range(1, 6)]]):
        out[name] = make_split(100 + i)
        (folder / cifar10.BATCH_DIR / name).write_bytes(batch_bytes(*out[name]))
    return out


def patch_md5s(monkeypatch, batch_folder: Path) -> None:
    monkeypatch.setattr(cifar10, "BATCH_MD5", {n: md5(batch_folder / n) for n in cifar10.BATCH_MD5})


def nchw(x_hwc: np.ndarray) -> np.ndarray:
    return x_hwc.transpose(0, 3, 1, 2)


def expected(files: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([nchw(files[n][0]) for n in names]),
            np.concatenate([files[n][1] for n in names]).astype(np.int64))


TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]


@pytest.mark.parametrize("sub", ["", "cifar10"])
def test_npz_layout(tmp_path, small_rows, sub):
    files = write_npz_files(tmp_path / sub if sub else tmp_path)
    x, y = cifar10.load_arrays("test", tmp_path)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, nchw(files["test"][0]))
    np.testing.assert_array_equal(y, files["test"][1])
    x, y = cifar10.load_arrays("train", tmp_path)
    ex, ey = expected(files, [f"train_{k}" for k in range(1, 6)])
    assert x.shape == (5 * ROWS, 3, 32, 32)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)


def test_default_dir_from_home_and_data_env(tmp_path, small_rows, monkeypatch):
    files = write_npz_files(tmp_path / "home" / "data" / "cifar10")  # $ROBUSTKIT_HOME/data/cifar10
    x, y = load_dataset("cifar10", n_examples=3)
    assert torch.equal(x, torch.from_numpy(nchw(files["test"][0][:3])).float() / 255)
    assert y.tolist() == files["test"][1][:3].tolist()
    other = write_npz_files(tmp_path / "elsewhere", rows=ROWS)
    np.savez_compressed(tmp_path / "elsewhere" / "test.npz", x=other["train_1"][0], y=other["train_1"][1])
    monkeypatch.setenv("ROBUSTKIT_DATA", str(tmp_path / "elsewhere"))  # takes precedence over the home
    x, y = cifar10.load_arrays("test", None)
    np.testing.assert_array_equal(x, nchw(other["train_1"][0]))


def test_python_batches_layout(tmp_path, small_rows, monkeypatch):
    files = write_batches(tmp_path)
    patch_md5s(monkeypatch, tmp_path / cifar10.BATCH_DIR)
    x, y = cifar10.load_arrays("test", tmp_path)
    np.testing.assert_array_equal(x, nchw(files["test_batch"][0]))
    np.testing.assert_array_equal(y, files["test_batch"][1])
    x, y = cifar10.load_arrays("train", tmp_path)
    ex, ey = expected(files, TRAIN_BATCHES)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)


def test_python_batch_pixel_layout(tmp_path, small_rows, monkeypatch):
    """An asymmetric image (R = row, G = column, B = 255 - row - 2*column) survives the plane layout."""
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    img = np.stack([h, w, 255 - h - 2 * w], axis=-1).astype(np.uint8)
    files = write_batches(tmp_path)
    x_test = files["test_batch"][0]
    x_test[3] = img
    (tmp_path / cifar10.BATCH_DIR / "test_batch").write_bytes(batch_bytes(x_test, files["test_batch"][1]))
    patch_md5s(monkeypatch, tmp_path / cifar10.BATCH_DIR)
    x, _ = cifar10.load_arrays("test", tmp_path)
    assert x[3, 0, 5, 7] == 5 and x[3, 1, 5, 7] == 7 and x[3, 2, 5, 7] == 255 - 5 - 14
    np.testing.assert_array_equal(x[3].transpose(1, 2, 0), img)


def test_python_batch_md5_mismatch_is_never_unpickled(tmp_path, small_rows):
    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    write_batches(tmp_path)
    (tmp_path / cifar10.BATCH_DIR / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(DatasetError, match="md5.*refusing to unpickle"):
        cifar10.load_arrays("test", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_python_batch_with_matching_md5_still_cannot_run_code(tmp_path, small_rows, monkeypatch):
    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    write_batches(tmp_path)
    (tmp_path / cifar10.BATCH_DIR / "test_batch").write_bytes(pickle.dumps(Evil(), protocol=2))
    patch_md5s(monkeypatch, tmp_path / cifar10.BATCH_DIR)
    with pytest.raises(DatasetError, match="refusing to load global"):
        cifar10.load_arrays("test", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_python_batch_wrong_row_count(tmp_path, monkeypatch):
    write_batches(tmp_path)  # 20 rows, but ROWS_PER_FILE stays 10000
    patch_md5s(monkeypatch, tmp_path / cifar10.BATCH_DIR)
    with pytest.raises(DatasetError, match=r"\[10000, 3072\]"):
        cifar10.load_arrays("test", tmp_path)


def make_tarball(path: Path, src: Path, extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src / cifar10.BATCH_DIR, arcname=cifar10.BATCH_DIR)
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


@pytest.mark.parametrize("sub", ["", "cifar10"])
def test_tarball_layout(tmp_path, small_rows, monkeypatch, sub):
    files = write_batches(tmp_path / "src")
    patch_md5s(monkeypatch, tmp_path / "src" / cifar10.BATCH_DIR)
    data = tmp_path / "data"
    (data / sub).mkdir(parents=True)
    tarball = make_tarball(data / sub / cifar10.TARBALL, tmp_path / "src")
    monkeypatch.setattr(cifar10, "TARBALL_MD5", md5(tarball))
    x, y = cifar10.load_arrays("train", data)
    ex, ey = expected(files, TRAIN_BATCHES)
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    assert (data / sub / cifar10.BATCH_DIR / "test_batch").is_file()  # extracted next to the tarball


def test_tarball_md5_mismatch(tmp_path, small_rows, monkeypatch):
    write_batches(tmp_path / "src")
    (tmp_path / "data").mkdir()
    make_tarball(tmp_path / "data" / cifar10.TARBALL, tmp_path / "src")  # TARBALL_MD5 left official
    with pytest.raises(DatasetError, match="md5"):
        cifar10.load_arrays("test", tmp_path / "data")
    assert not (tmp_path / "data" / cifar10.BATCH_DIR).exists()


def _member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member", [
    _member("../evil"),
    _member(f"{cifar10.BATCH_DIR}/../../evil"),
    _member("/tmp/robustkit-test-evil-absolute"),
    _member(f"{cifar10.BATCH_DIR}/link", tarfile.SYMTYPE, "../../evil"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_tarball_with_unsafe_member_is_rejected(tmp_path, small_rows, monkeypatch, member):
    write_batches(tmp_path / "src")
    patch_md5s(monkeypatch, tmp_path / "src" / cifar10.BATCH_DIR)
    data = tmp_path / "data"
    data.mkdir()
    tarball = make_tarball(data / cifar10.TARBALL, tmp_path / "src", extra=[member])
    monkeypatch.setattr(cifar10, "TARBALL_MD5", md5(tarball))
    with pytest.raises(DatasetError, match="unsafe archive member"):
        cifar10.load_arrays("test", data)
    assert not (tmp_path / "evil").exists()
    assert not (data / cifar10.BATCH_DIR).exists()  # nothing at all was extracted


def test_download_path_reads_the_downloaded_tarball(tmp_path, small_rows, monkeypatch):
    files = write_batches(tmp_path / "src")
    patch_md5s(monkeypatch, tmp_path / "src" / cifar10.BATCH_DIR)
    staged = make_tarball(tmp_path / "staged.tar.gz", tmp_path / "src")
    monkeypatch.setattr(cifar10, "TARBALL_MD5", md5(staged))
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")
    calls = []

    def fake_download(url, dest, *, digest, algorithm, error, **kw):
        calls.append((url, dest, digest, algorithm, error))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, dest)
        return Path(dest)

    monkeypatch.setattr(hub, "download", fake_download)
    x, y = cifar10.load_arrays("test", tmp_path / "data")
    assert calls == [(cifar10.URL, tmp_path / "data" / cifar10.TARBALL, md5(staged), "md5", DatasetError)]
    np.testing.assert_array_equal(x, nchw(files["test_batch"][0]))
    np.testing.assert_array_equal(y, files["test_batch"][1])


# ---------------------------------------------------------------------------------- cifar10, failures

def _assert_lists_layouts(message: str, folder: Path) -> None:
    assert str(folder) in message
    for needle in ("test.npz", "train_5.npz", "cifar-10-batches-py", "data_batch_5", "cifar-10-python.tar.gz"):
        assert needle in message, needle


def test_missing_data_offline(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download when ROBUSTKIT_OFFLINE is set")

    monkeypatch.setattr(hub, "download", no_download)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="ROBUSTKIT_OFFLINE") as info:
        load_dataset("cifar10", data_dir=tmp_path / "nothing")
    assert time.perf_counter() - start < 2.0
    _assert_lists_layouts(str(info.value), tmp_path / "nothing")
    assert isinstance(info.value, FileNotFoundError)


def test_missing_data_download_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")
    urls = []

    def no_network(url, *a, **k):
        urls.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetError, match="download failed") as info:
        cifar10.load_arrays("test", tmp_path)
    _assert_lists_layouts(str(info.value), tmp_path)
    assert urls == [cifar10.URL]
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_missing_data_download_raises_oserror(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")

    def fails(*a, **k):
        raise PermissionError("read-only file system (test)")

    monkeypatch.setattr(hub, "download", fails)
    with pytest.raises(DatasetError, match="read-only file system") as info:
        cifar10.load_arrays("train", tmp_path)
    _assert_lists_layouts(str(info.value), tmp_path)


def test_partial_npz_layout_is_not_accepted_for_train(tmp_path, small_rows):
    write_npz_files(tmp_path)
    (tmp_path / "train_4.npz").unlink()
    assert cifar10.load_arrays("test", tmp_path)[0].shape == (ROWS, 3, 32, 32)
    with pytest.raises(DatasetError, match="not found"):
        cifar10.load_arrays("train", tmp_path)


def test_truncated_npz(tmp_path, small_rows):
    write_npz_files(tmp_path)
    raw = (tmp_path / "test.npz").read_bytes()
    (tmp_path / "test.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="test.npz"):
        cifar10.load_arrays("test", tmp_path)
    (tmp_path / "test.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match="test.npz"):
        cifar10.load_arrays("test", tmp_path)


def test_npz_with_corrupt_member_data(tmp_path, small_rows):
    """Flip bytes inside the compressed x array: the zip CRC / zlib check must become a DatasetError."""
    write_npz_files(tmp_path)
    raw = bytearray((tmp_path / "test.npz").read_bytes())
    mid = len(raw) // 3
    raw[mid:mid + 64] = bytes(64)
    (tmp_path / "test.npz").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="test.npz"):
        cifar10.load_arrays("test", tmp_path)


@pytest.mark.parametrize("bad,match", [
    (dict(x=np.zeros((ROWS, 32, 32, 3), np.float32)), "uint8"),
    (dict(x=np.zeros((ROWS, 3, 32, 32), np.uint8)), "HWC"),
    (dict(x=np.zeros((ROWS - 1, 32, 32, 3), np.uint8)), "uint8"),
    (dict(y=np.full(ROWS, 10, np.uint8)), r"0\.\.9"),
    (dict(y=np.zeros(ROWS + 1, np.uint8)), "labels"),
    (dict(y=np.zeros(ROWS, np.float32)), "labels"),
    (dict(y=np.array([None] * ROWS, dtype=object)), "cannot read"),  # would need pickle
    (dict(z=np.zeros(ROWS, np.uint8)), "missing arrays"),
], ids=["float-x", "chw-x", "short-x", "label-10", "long-y", "float-y", "object-y", "no-x-y"])
def test_npz_validation(tmp_path, small_rows, bad, match):
    x, y = make_split(0)
    arrays = dict(x=x, y=y)
    arrays.update(bad)
    if "z" in bad:
        arrays = bad
    np.savez(tmp_path / "test.npz", **arrays)
    with pytest.raises(DatasetError, match=match):
        cifar10.load_arrays("test", tmp_path)
