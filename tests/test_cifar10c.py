"""Tests of the CIFAR-10-C loader (robustkit.data.cifar10c) and `robustkit make-cifar10c`."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit import hub
from robustkit.cli import main
from robustkit.data import DATASETS, DatasetError, load_dataset
from robustkit.data import cifar10, cifar10c
from robustkit.data.corruptions import CORRUPTIONS, corrupt
from robustkit.errors import InputError

N = 4  # images per severity in the hand-built layouts
CLEAN_ROWS = 6  # rows of the synthetic CIFAR-10 test.npz


pytestmark = pytest.mark.usefixtures("hermetic_data_env")  # offline, no user data (conftest.py)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def official_arrays(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One corruption file's content: 5 severities x n images (row values encode the severity) and labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.repeat(np.arange(1, 6), n)  # pixel (0, 0, R) = severity
    y = np.tile(rng.integers(0, 10, n), 5).astype(np.uint8)
    return x, y


def write_layout(folder: Path, corruptions=("fog", "contrast"), n: int = N) -> dict[str, np.ndarray]:
    """The official layout by hand: <corruption>.npy and labels.npy in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, c in enumerate(corruptions):
        x, y = official_arrays(n, seed=i)
        np.save(folder / f"{c}.npy", x)
        out[c] = x
    np.save(folder / "labels.npy", y)
    out["labels"] = y
    return out


# ----------------------------------------------------------------------------------- hand-built layout

def test_registered():
    assert DATASETS["cifar10c"] is cifar10c.load_arrays


@pytest.mark.parametrize("where", ["CIFAR-10-C", "cifar10c/CIFAR-10-C", "."])
def test_reads_hand_built_layout(tmp_path, where):
    files = write_layout(tmp_path / where)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # official-looking data: no "regenerated" warning
        for s in range(1, 6):
            x, y = load_dataset("cifar10c", corruption="fog", severity=s, data_dir=tmp_path)
            assert tuple(x.shape) == (N, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
            rows = files["fog"][(s - 1) * N:s * N]
            assert torch.equal(x, torch.from_numpy(rows.transpose(0, 3, 1, 2).copy()).float() / 255)
            assert y.tolist() == files["labels"][:N].tolist()
            assert (x[:, 0, 0, 0] * 255).round().tolist() == [s] * N
    x, y = load_dataset("cifar10c", corruption="contrast", severity=2, data_dir=tmp_path, indices=[3, 0], n_examples=1)
    assert torch.equal(x[0], torch.from_numpy(files["contrast"][N + 3].transpose(2, 0, 1).copy()).float() / 255)


def test_default_data_dir_from_env(tmp_path, monkeypatch):
    files = write_layout(tmp_path / "home" / "data" / "CIFAR-10-C")
    x, _ = load_dataset("cifar10c", corruption="fog", severity=5, n_examples=2)
    assert (x[:, 0, 0, 0] * 255).round().tolist() == [5, 5]
    assert np.array_equal(cifar10c.load_arrays("test", None, corruption="fog", severity=1)[0],
                          files["fog"][:N].transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------- make-cifar10c + loader

@pytest.fixture
def clean_cifar(tmp_path, monkeypatch) -> tuple[Path, np.ndarray, np.ndarray]:
    """A synthetic CIFAR-10 test.npz with CLEAN_ROWS rows."""
    monkeypatch.setattr(cifar10, "ROWS_PER_FILE", CLEAN_ROWS)
    rng = np.random.default_rng(42)
    x = rng.integers(0, 256, (CLEAN_ROWS, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, CLEAN_ROWS).astype(np.uint8)
    d = tmp_path / "cifar"
    d.mkdir()
    np.savez(d / "test.npz", x=x, y=y)
    return d, x, y


def test_make_cifar10c_round_trip(tmp_path, clean_cifar, capsys):
    d, clean, labels = clean_cifar
    out = tmp_path / "out"
    assert main(["make-cifar10c", "--out", str(out), "--data-dir", str(d), "--n-examples", "3", "--seed", "9"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "CIFAR-10-C")
    folder = out / "CIFAR-10-C"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{c}.npy" for c in CORRUPTIONS] +
                                                              ["labels.npy", "GENERATED.json"])
    assert [p.name for p in out.iterdir()] == ["CIFAR-10-C"]  # no partial folder left behind
    info = json.loads((folder / "GENERATED.json").read_text())
    assert info["seed"] == 9 and info["n_examples"] == 3
    assert set(info["substitutes"]) == {"motion_blur", "snow", "frost"} and info["frost"] == "procedural substitute"
    lab = np.load(folder / "labels.npy")
    assert lab.dtype == np.uint8 and lab.tolist() == labels[:3].tolist() * 5
    for c in CORRUPTIONS:
        arr = np.load(folder / f"{c}.npy")
        assert arr.dtype == np.uint8 and arr.shape == (15, 32, 32, 3), c
        for s in (1, 5):
            expected = corrupt(clean[:3], c, s, seed=9)
            assert np.array_equal(arr[(s - 1) * 3:s * 3], expected), (c, s)
            with pytest.warns(UserWarning, match="regeneration of CIFAR-10-C.*not comparable"):
                x, y = load_dataset("cifar10c", corruption=c, severity=s, data_dir=out)
            back = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(back, expected), (c, s)  # uint8 -> float -> uint8 is exact
            assert y.tolist() == labels[:3].tolist()


def test_make_cifar10c_same_seed_same_files_and_prefix_property(tmp_path, clean_cifar):
    d, _, _ = clean_cifar
    args = ["make-cifar10c", "--data-dir", str(d), "--corruptions", "glass_blur,frost", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a"), "--n-examples", "2"]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # all 6 rows
    for c in ("glass_blur", "frost"):
        a, b = np.load(tmp_path / "a" / "CIFAR-10-C" / f"{c}.npy"), np.load(tmp_path / "b" / "CIFAR-10-C" / f"{c}.npy")
        for s in range(5):  # image i gets the same draws whatever N is
            assert np.array_equal(a[2 * s:2 * s + 2], b[6 * s:6 * s + 2])
    assert not (tmp_path / "a" / "CIFAR-10-C" / "fog.npy").exists()


def test_make_cifar10c_with_frost_photographs(tmp_path, clean_cifar):
    from PIL import Image

    from robustkit.data.corruptions import FROST_FILES, load_frost_images

    d, clean, _ = clean_cifar
    photos_dir = tmp_path / "frost"
    photos_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in FROST_FILES:
        Image.fromarray(rng.integers(0, 256, (190, 210, 3), dtype=np.uint8)).save(photos_dir / name)
    assert main(["make-cifar10c", "--out", str(tmp_path / "o"), "--data-dir", str(d), "--corruptions",
                 "frost,snow", "--frost-dir", str(photos_dir), "--seed", "2"]) == 0
    folder = tmp_path / "o" / "CIFAR-10-C"
    info = json.loads((folder / "GENERATED.json").read_text())
    assert info["frost"] == "official photographs" and set(info["substitutes"]) == {"snow"}
    expected = corrupt(clean, "frost", 4, seed=2, frost_images=load_frost_images(photos_dir))
    assert np.array_equal(np.load(folder / "frost.npy")[3 * CLEAN_ROWS:4 * CLEAN_ROWS], expected)
    assert main(["make-cifar10c", "--out", str(tmp_path / "p"), "--data-dir", str(d), "--frost-dir",
                 str(tmp_path / "nowhere")]) == 2  # missing photographs: a clear error, nothing written
    assert not (tmp_path / "p").exists()


def test_make_cifar10c_refuses_to_overwrite_unless_asked(tmp_path, clean_cifar, capsys):
    d, _, _ = clean_cifar
    args = ["make-cifar10c", "--out", str(tmp_path / "o"), "--data-dir", str(d), "--corruptions", "contrast"]
    assert main([*args, "--n-examples", "2"]) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert np.load(tmp_path / "o" / "CIFAR-10-C" / "contrast.npy").shape[0] == 10
    assert main([*args, "--overwrite"]) == 0
    assert np.load(tmp_path / "o" / "CIFAR-10-C" / "contrast.npy").shape[0] == 30
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["CIFAR-10-C"]


def test_make_cifar10c_leaves_nothing_when_interrupted(tmp_path, clean_cifar, monkeypatch):
    from robustkit.data import corruptions

    calls = []

    def flaky(images, corruption, severity, **kw):
        calls.append(corruption)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return images

    monkeypatch.setattr(corruptions, "corrupt", flaky)
    with pytest.raises(KeyboardInterrupt):
        cifar10c.write_cifar10c(tmp_path / "o", np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64))
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("argv,match", [
    (["--corruptions", "fog,nope"], "unknown corruption.*nope"),
    (["--n-examples", "7"], "at most 6"),
])
def test_make_cifar10c_bad_arguments(tmp_path, clean_cifar, capsys, argv, match):
    d, _, _ = clean_cifar
    assert main(["make-cifar10c", "--out", str(tmp_path / "o"), "--data-dir", str(d), *argv]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["--out", "o", "--n-examples", "0"], ["--out", "o", "--seed", "-1"], []],
                         ids=["zero-n", "negative-seed", "no-out"])
def test_make_cifar10c_argparse_errors(argv, capsys):
    assert main(["make-cifar10c", *argv]) == 2  # one line on stderr, exit status 2 (main returns it)
    err = capsys.readouterr().err
    assert err.startswith("robustkit make-cifar10c: error:") and len(err.strip().splitlines()) == 1


def test_write_cifar10c_input_validation(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        cifar10c.write_cifar10c(tmp_path, np.zeros((2, 3, 32, 32), np.uint8), np.zeros(2, int))
    with pytest.raises(InputError, match="labels"):
        cifar10c.write_cifar10c(tmp_path, np.zeros((2, 32, 32, 3), np.uint8), np.full(2, 10))
    with pytest.raises(InputError, match="unknown corruption"):
        cifar10c.write_cifar10c(tmp_path, np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, int), corruptions=("x",))


# ------------------------------------------------------------------------------------ tarball / download

def make_tar(path: Path, src: Path, extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w") as tf:  # the official archive is an uncompressed tar
        tf.add(src / "CIFAR-10-C", arcname="CIFAR-10-C")
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


@pytest.mark.parametrize("sub", ["", "cifar10c"])
def test_tarball_layout(tmp_path, monkeypatch, sub):
    files = write_layout(tmp_path / "src" / "CIFAR-10-C")
    data = tmp_path / "data"
    (data / sub).mkdir(parents=True)
    tar = make_tar(data / sub / "CIFAR-10-C.tar", tmp_path / "src")
    monkeypatch.setattr(cifar10c, "TARBALL_MD5", md5(tar))
    x, _ = cifar10c.load_arrays("test", data, corruption="fog", severity=3)
    assert np.array_equal(x, files["fog"][2 * N:3 * N].transpose(0, 3, 1, 2))
    assert (data / sub / "CIFAR-10-C" / "contrast.npy").is_file()
    shutil.rmtree(data / sub / "CIFAR-10-C")  # the archive is extracted again, but lacks snow
    with pytest.raises(DatasetError, match="has no CIFAR-10-C/snow.npy"):
        cifar10c.load_arrays("test", data, corruption="snow", severity=3)


def test_tarball_md5_mismatch_and_unsafe_member(tmp_path, monkeypatch):
    write_layout(tmp_path / "src" / "CIFAR-10-C")
    (tmp_path / "data").mkdir()
    tar = make_tar(tmp_path / "data" / "CIFAR-10-C.tar", tmp_path / "src")
    with pytest.raises(DatasetError, match="md5"):
        cifar10c.load_arrays("test", tmp_path / "data", corruption="fog", severity=1)
    evil = tarfile.TarInfo("CIFAR-10-C/../../evil")
    evil.size = 1
    tar = make_tar(tar, tmp_path / "src", extra=[evil])
    monkeypatch.setattr(cifar10c, "TARBALL_MD5", md5(tar))
    with pytest.raises(DatasetError, match="unsafe archive member"):
        cifar10c.load_arrays("test", tmp_path / "data", corruption="fog", severity=1)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data" / "CIFAR-10-C").exists()


def test_download_path(tmp_path, monkeypatch):
    files = write_layout(tmp_path / "src" / "CIFAR-10-C")
    staged = make_tar(tmp_path / "staged.tar", tmp_path / "src")
    monkeypatch.setattr(cifar10c, "TARBALL_MD5", md5(staged))
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")
    calls = []

    def fake_download(url, dest, *, digest, algorithm, error, **kw):
        calls.append((url, dest, digest, algorithm, error))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged, dest)
        return Path(dest)

    monkeypatch.setattr(hub, "download", fake_download)
    x, _ = cifar10c.load_arrays("test", tmp_path / "data", corruption="fog", severity=2)
    assert calls == [(cifar10c.URL, tmp_path / "data" / "CIFAR-10-C.tar", md5(staged), "md5", DatasetError)]
    assert np.array_equal(x, files["fog"][N:2 * N].transpose(0, 3, 1, 2))
    assert cifar10c.URL.startswith("https://zenodo.org/records/2535967/")


def test_download_failure_lists_layouts(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUSTKIT_OFFLINE")

    def fails(*a, **k):
        raise DatasetError("could not download (test)")

    monkeypatch.setattr(hub, "download", fails)
    with pytest.raises(DatasetError, match="download failed.*CIFAR-10-C.tar.*make-cifar10c"):
        cifar10c.load_arrays("test", tmp_path, corruption="fog", severity=1)


def test_missing_offline_names_layouts_and_generator(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "download", lambda *a, **k: pytest.fail("must not download offline"))
    with pytest.raises(DatasetError, match="ROBUSTKIT_OFFLINE") as info:
        load_dataset("cifar10c", corruption="fog", severity=1, data_dir=tmp_path / "none")
    msg = str(info.value)
    for needle in ("CIFAR-10-C/", "labels.npy", "CIFAR-10-C.tar", "zenodo", "robustkit make-cifar10c",
                   str(tmp_path / "none")):
        assert needle in msg, needle
    assert isinstance(info.value, FileNotFoundError)


def test_layout_missing_one_corruption(tmp_path):
    write_layout(tmp_path / "CIFAR-10-C", corruptions=("fog",))
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("cifar10c", corruption="snow", severity=1, data_dir=tmp_path)


# --------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kw,match", [
    (dict(corruption="Fog", severity=1), "unknown corruption 'Fog'.*gaussian_noise"),
    (dict(corruption="speckle_noise", severity=1), "unknown corruption"),
    (dict(corruption="fog", severity=0), "severity must be an int in 1..5"),
    (dict(corruption="fog", severity=6), "severity"),
    (dict(corruption="fog", severity="5"), "severity"),
    (dict(corruption="fog", severity=True), "severity"),
    (dict(corruption="fog"), "needs corruption= and severity="),
    (dict(severity=2), "needs corruption= and severity="),
    (dict(corruption="fog", severity=1, split="train"), "only the 'test' split"),
    (dict(corruption="fog", severity=1, level=3), "takes no option level.*corruption, severity"),
])
def test_bad_arguments(tmp_path, kw, match):
    write_layout(tmp_path / "CIFAR-10-C")
    with pytest.raises(InputError, match=match):
        load_dataset("cifar10c", data_dir=tmp_path, **kw)


def test_other_datasets_take_no_options():
    with pytest.raises(InputError, match="dataset 'digits' takes no option corruption.*none"):
        load_dataset("digits", corruption="fog")


@pytest.mark.parametrize("bad,match", [
    (np.zeros((5 * N, 3, 32, 32), np.uint8), r"uint8 \[5\*N, 32, 32, 3\]"),
    (np.zeros((5 * N, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((5 * N - 1, 32, 32, 3), np.uint8), "severities 1..5 stacked"),
    (np.zeros((0, 32, 32, 3), np.uint8), "uint8"),
], ids=["chw", "float", "not-5n", "empty"])
def test_bad_image_file(tmp_path, bad, match):
    write_layout(tmp_path / "CIFAR-10-C")
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", bad)
    with pytest.raises(DatasetError, match=match):
        load_dataset("cifar10c", corruption="fog", severity=1, data_dir=tmp_path)


@pytest.mark.parametrize("bad,match", [
    (np.zeros(5 * N + 1, np.uint8), "labels must be 20 ints"),
    (np.zeros(5 * N, np.float32), "labels must be 20 ints"),
    (np.full(5 * N, 10, np.uint8), r"0\.\.9"),
], ids=["long", "float", "label-10"])
def test_bad_labels_file(tmp_path, bad, match):
    write_layout(tmp_path / "CIFAR-10-C")
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", bad)
    with pytest.raises(DatasetError, match=match):
        load_dataset("cifar10c", corruption="fog", severity=1, data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_corrupt_files(tmp_path, damage):
    write_layout(tmp_path / "CIFAR-10-C")
    path = tmp_path / "CIFAR-10-C" / "fog.npy"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"not an npy file")
    else:
        np.save(path, np.array([None] * 20, dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="fog.npy"):
        load_dataset("cifar10c", corruption="fog", severity=5, data_dir=tmp_path)
