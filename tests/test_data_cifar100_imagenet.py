"""CIFAR-100 (official python layout) and ImageNet validation (class folders, RobustBench's subset and
preprocessing), each read from files the tests write in that format."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import hub
from robustkit.data import DATASETS, load_dataset
from robustkit.data import cifar100, imagenet
from robustkit.errors import DatasetError, InputError

PIL = pytest.importorskip("PIL.Image")


pytestmark = pytest.mark.usefixtures("hermetic_data_env")  # offline, no user data (conftest.py)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ CIFAR-100

ROWS = {"train": 30, "test": 20}


def write_cifar100(folder: Path, seed: int = 0) -> dict:
    """The official python layout: one pickled dict per split (protocol 2, byte keys, R/G/B planes)."""
    rng = np.random.default_rng(seed)
    out = {}
    (folder / cifar100.BATCH_DIR).mkdir(parents=True, exist_ok=True)
    for split, n in ROWS.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = rng.integers(0, 20, size=n).tolist()
        d = {b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": b"testing batch",
             b"fine_labels": fine, b"coarse_labels": coarse, b"data": data}
        (folder / cifar100.BATCH_DIR / split).write_bytes(pickle.dumps(d, protocol=2))
        out[split] = (data, np.asarray(fine), np.asarray(coarse))
    return out


@pytest.fixture
def small_cifar100(monkeypatch):
    monkeypatch.setattr(cifar100, "ROWS", ROWS)


def patch_md5(monkeypatch, folder: Path) -> None:
    monkeypatch.setattr(cifar100, "FILE_MD5", {s: md5(folder / cifar100.BATCH_DIR / s) for s in ROWS})


@pytest.mark.parametrize("sub", ["", "cifar100"])
def test_cifar100_python_layout_pixels_and_labels(tmp_path, small_cifar100, monkeypatch, sub):
    files = write_cifar100(tmp_path / sub)
    patch_md5(monkeypatch, tmp_path / sub)
    for split in ROWS:
        x, y = load_dataset("cifar100", split=split, data_dir=tmp_path)
        data, fine, coarse = files[split]
        assert x.shape == (ROWS[split], 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        # the row is three 32x32 planes R, G, B, each row-major
        np.testing.assert_array_equal((x[1, 1] * 255).round().numpy().astype(np.uint8), data[1, 1024:2048].reshape(32, 32))
        assert y.tolist() == fine.tolist()
        _, yc = load_dataset("cifar100", split=split, data_dir=tmp_path, labels="coarse")
        assert yc.tolist() == coarse.tolist()
    assert DATASETS["cifar100"] is cifar100.load_arrays


def test_cifar100_refuses_a_file_whose_md5_is_not_official(tmp_path, small_cifar100):
    write_cifar100(tmp_path)
    with pytest.raises(DatasetError, match="not the official CIFAR-100 test.*refusing to unpickle"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar100_tarball_and_download(tmp_path, small_cifar100, monkeypatch):
    files = write_cifar100(tmp_path / "src")
    patch_md5(monkeypatch, tmp_path / "src")
    staged = tmp_path / "staged.tar.gz"
    with tarfile.open(staged, "w:gz") as tf:
        tf.add(tmp_path / "src" / cifar100.BATCH_DIR, arcname=cifar100.BATCH_DIR)
    monkeypatch.setattr(cifar100, "TARBALL_MD5", md5(staged))
    # the archive beside the data: extracted and read
    (tmp_path / "a").mkdir()
    shutil.copyfile(staged, tmp_path / "a" / cifar100.TARBALL)
    x, y = load_dataset("cifar100", data_dir=tmp_path / "a")
    assert y.tolist() == files["test"][1].tolist()
    # nothing there, online: downloaded from the official URL, md5-checked, read
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")
    calls = []

    def fake_download(url, dest, *, digest, algorithm, error, **kw):
        calls.append((url, digest, algorithm))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, dest)
        return Path(dest)

    monkeypatch.setattr(hub, "download", fake_download)
    x2, y2 = load_dataset("cifar100", split="train", data_dir=tmp_path / "b")
    assert calls == [(cifar100.URL, md5(staged), "md5")]
    assert y2.tolist() == files["train"][1].tolist()


def test_cifar100_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="labels must be 'fine' or 'coarse'"):
        load_dataset("cifar100", data_dir=tmp_path, labels="medium")
    with pytest.raises(DatasetError, match="ROBUSTKIT_OFFLINE.*cifar-100-python"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_cifar100_official_constants():
    # torchvision's published checksums of the official archive and files
    assert cifar100.TARBALL_MD5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert cifar100.FILE_MD5 == {"train": "16019d7e3df5f24257cddd939b257f8d",
                                 "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}
    assert cifar100.ROWS == {"train": 50000, "test": 10000}


# ------------------------------------------------------------------------------------------------ ImageNet

def make_val(root: Path, n_classes: int = 1000) -> Path:
    val = root / "imagenet" / "val"
    val.mkdir(parents=True)
    for i in range(n_classes):
        (val / f"n{i:08d}").mkdir(parents=True)
    return val


def save(path: Path, arr: np.ndarray) -> None:
    PIL.fromarray(arr).save(path)


def test_imagenet_rows_labels_and_preprocessing(tmp_path):
    val = make_val(tmp_path)
    rng = np.random.default_rng(0)
    # w = 256 <= h = 300: no resize; the crop is rows 38..261, columns 16..239 (round((side - 224) / 2))
    a = rng.integers(0, 256, size=(300, 256, 3), dtype=np.uint8)
    save(val / "n00000007" / "ILSVRC2012_val_00000001.png", a)
    # 512 x 384 (w x h), left half red, right half blue: resized to 341 x 256, then the centre 224 crop
    b = np.zeros((384, 512, 3), dtype=np.uint8)
    b[:, :256, 0] = 255
    b[:, 256:, 2] = 255
    save(val / "n00000999" / "ILSVRC2012_val_00000002.png", b)
    # grey-scale input is converted to RGB
    c = np.full((250, 260), 77, dtype=np.uint8)
    save(val / "n00000000" / "ILSVRC2012_val_00000003.png", c)
    listing = tmp_path / "ids.txt"
    listing.write_text("n00000999/ILSVRC2012_val_00000002.png\nn00000007/ILSVRC2012_val_00000001.png\n"
                       "n00000000/ILSVRC2012_val_00000003.png\n")
    x, y = load_dataset("imagenet", data_dir=tmp_path, subset=listing)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert y.tolist() == [999, 7, 0]  # the sorted class-folder index
    np.testing.assert_array_equal((x[1] * 255).round().numpy().astype(np.uint8),
                                  a[38:262, 16:240].transpose(2, 0, 1))
    red, blue = x[0, 0], x[0, 2]
    assert torch.all(red[:, :110] == 1) and torch.all(blue[:, :110] == 0)
    assert torch.all(red[:, 114:] == 0) and torch.all(blue[:, 114:] == 1)  # the edge is at the centre
    assert torch.all(x[2] == 77 / 255)
    # n_examples / indices select rows before any file is decoded
    xi, yi = load_dataset("imagenet", data_dir=tmp_path, subset=listing, indices=[2, 0])
    assert yi.tolist() == [0, 999] and torch.equal(xi[1], x[0])


def test_imagenet_decodes_only_the_rows_asked_for(tmp_path):
    val = make_val(tmp_path)
    save(val / "n00000001" / "good.png", np.zeros((256, 256, 3), dtype=np.uint8))
    (val / "n00000002" / "broken.JPEG").write_bytes(b"not an image")
    listing = tmp_path / "ids.txt"
    listing.write_text("n00000001/good.png\nn00000002/broken.JPEG\n")
    x, y = load_dataset("imagenet", data_dir=tmp_path, subset=listing, n_examples=1)
    assert y.tolist() == [1]
    with pytest.raises(DatasetError, match="cannot decode .*broken.JPEG"):
        load_dataset("imagenet", data_dir=tmp_path, subset=listing)


def test_imagenet_robustbench_subset(tmp_path):
    names = imagenet.robustbench_subset()
    assert len(names) == len(set(names)) == 5000
    assert names[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"
    wnids = sorted({n.split("/")[0] for n in names})
    val = make_val(tmp_path, 0)
    for w in wnids:
        (val / w).mkdir()
    for i in range(1000 - len(wnids)):  # the 3 classes the subset never samples
        (val / f"n99{i:06d}").mkdir()
    for n in names[2:]:
        (val / n).touch()  # listed files must exist; only the requested rows are decoded
    save(val / names[0], np.full((256, 256, 3), 10, dtype=np.uint8))
    save(val / names[1], np.full((256, 256, 3), 20, dtype=np.uint8))
    x, y = load_dataset("imagenet", data_dir=tmp_path, n_examples=2)
    all_wnids = sorted(e.name for e in val.iterdir())
    assert y.tolist() == [all_wnids.index(n.split("/")[0]) for n in names[:2]]
    assert torch.all(x[0] == 10 / 255) and torch.all(x[1] == 20 / 255)
    (val / names[4000]).unlink()
    with pytest.raises(DatasetError, match="ILSVRC2012_val.*is missing"):
        load_dataset("imagenet", data_dir=tmp_path, n_examples=2)


def test_imagenet_all_and_failures(tmp_path):
    with pytest.raises(DatasetError, match="ImageNet validation not found.*image-net.org"):
        load_dataset("imagenet", data_dir=tmp_path)
    val = make_val(tmp_path, 999)
    with pytest.raises(DatasetError, match="999 class folders"):
        load_dataset("imagenet", data_dir=tmp_path, subset="all")
    (val / "n00000999").mkdir()
    for wnid, name in [("n00000005", "b.png"), ("n00000005", "a.png"), ("n00000002", "c.png")]:
        save(val / wnid / name, np.zeros((224, 224, 3), dtype=np.uint8))
    (val / "n00000005" / "notes.txt").write_text("not an image")
    assert imagenet.count("test", tmp_path, subset="all") == 3
    _, y = load_dataset("imagenet", data_dir=tmp_path, subset="all")
    assert y.tolist() == [2, 5, 5]
    with pytest.raises(InputError, match="only the validation set"):
        load_dataset("imagenet", split="train", data_dir=tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("n12345678/x.png\n")
    with pytest.raises(DatasetError, match="not '<wnid>/<file>' with a class folder"):
        load_dataset("imagenet", data_dir=tmp_path, subset=bad)


def test_diffpure_imagenet_end_to_end_with_a_users_classifier(tmp_path):
    """The registered ImageNet DiffPure entry on generated validation images: 224 → 256 → purify → 224 → the
    user's classifier (a small score model replaces the 552M ADM, which a CPU test cannot run)."""
    from robustkit.defenses.diffpure import GaussianScoreModel

    val = make_val(tmp_path)
    rng = np.random.default_rng(1)
    listing = tmp_path / "ids.txt"
    rows = []
    for k, wnid in enumerate(["n00000003", "n00000500"]):
        save(val / wnid / f"img{k}.png", rng.integers(0, 256, size=(260 + 40 * k, 300, 3), dtype=np.uint8))
        rows.append(f"{wnid}/img{k}.png")
    listing.write_text("\n".join(rows))
    x, y = load_dataset("imagenet", data_dir=tmp_path, subset=listing)

    torch.manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 1000))
    clf = robustkit.wrap_classifier(net, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                    input_shape=(3, 224, 224))
    defense = robustkit.create_defense("diffpure.imagenet", classifier=clf,
                                       score_model=GaussianScoreModel((3, 256, 256)), t_star=0.01, seed=0)
    x_adv = x.clone().requires_grad_(True)
    logits = defense(x_adv)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    logits.gather(1, y[:, None]).sum().backward()  # exact gradients reach the 224x224 input
    assert x_adv.grad.shape == x.shape and x_adv.grad.abs().sum() > 0
