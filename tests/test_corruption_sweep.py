"""corruption_sweep (robustkit.eval.corruption_sweep) and the ``corruption-sweep`` CLI.

Most tests build a tiny CIFAR-10-C folder (random 32x32 images, 2 corruptions) with ``write_cifar10c`` in
``tmp_path`` and sweep a tiny random BatchNorm CNN; the CLI test uses the real ResNet-20 and CIFAR-10
from ``$ROBUSTKIT_SHARED`` (skipped when unset). Torch runs on one thread.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import robustkit
from robustkit import InputError
from robustkit.cli import main
from robustkit.data.cifar10c import write_cifar10c
from robustkit.defenses import NormStatsClassifier, SourceClassifier, TentClassifier
from robustkit.eval.corruption_sweep import SweepResult, corruption_sweep

CORRUPTIONS = ("gaussian_noise", "contrast")
N = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add contention


@pytest.fixture
def c10c_dir(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=N)
    write_cifar10c(tmp_path / "data", images, labels, seed=0, corruptions=CORRUPTIONS, progress=False)
    return tmp_path / "data"


def tiny_classifier(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return robustkit.wrap_classifier(net.eval(), mean=(0.5,) * 3, std=(0.25,) * 3, input_shape=(3, 32, 32))


def methods():
    base = tiny_classifier()
    # a large lr so that TENT's state visibly changes predictions within 8 images
    return {"source": SourceClassifier(base), "bn": NormStatsClassifier(base), "tent": TentClassifier(base, lr=0.5)}


def sweep(data_dir, corruptions=CORRUPTIONS, ms=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "robustkit regeneration" warning of the loader
        return corruption_sweep(ms or methods(), corruptions=corruptions, n_examples=N, data_dir=data_dir, **kw)


def test_accuracy_matches_independent_per_batch_count(c10c_dir):
    result = sweep(c10c_dir, batch_size=3)  # batches 3, 3, 2
    for corruption in CORRUPTIONS:
        x, y = _load(c10c_dir, corruption)
        for name, fresh in methods().items():
            correct = 0
            for i in range(0, N, 3):
                with torch.no_grad():
                    correct += int((fresh(x[i:i + 3]).argmax(1) == y[i:i + 3]).sum())
            cell = result.cell(name, corruption)
            assert (cell.correct, cell.n) == (correct, N)
            assert cell.low <= cell.accuracy <= cell.high


def _load(data_dir, corruption):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return robustkit.load_dataset("cifar10c", corruption=corruption, severity=5, data_dir=data_dir)


def test_reset_per_corruption_no_leak(c10c_dir):
    ms = methods()
    both = sweep(c10c_dir, CORRUPTIONS, ms=ms, batch_size=2)
    assert int(ms["tent"].adam_step) == N // 2  # state was continual within the last corruption
    alone = sweep(c10c_dir, CORRUPTIONS[1:], batch_size=2)
    for name in ms:
        assert both.cell(name, CORRUPTIONS[1]).correct == alone.cell(name, CORRUPTIONS[1]).correct
    # and the continual state does matter: without reset TENT's predictions on B differ
    x, _ = _load(c10c_dir, CORRUPTIONS[1])
    leaked, fresh = ms["tent"], methods()["tent"]
    with torch.no_grad():
        assert not torch.allclose(leaked(x[:2]), fresh(x[:2]))


def test_protocol_json_round_trip_and_table(c10c_dir, tmp_path):
    result = sweep(c10c_dir, batch_size=4, seed=3)
    p = result.protocol
    assert (p["batch_size"], p["n_examples"], p["severity"], p["seed"]) == (4, N, 5, 3)
    assert p["generated_data"] is True and p["generated_info"]["n_examples"] == N
    assert result.method_info["tent"]["config"]["lr"] == 0.5
    assert result.method_info["source"]["config"] is None
    again = SweepResult.from_json(result.to_json(tmp_path / "r.json"))
    assert again == result
    assert SweepResult.from_json(tmp_path / "r.json") == result
    json.loads((tmp_path / "r.json").read_text())
    table = result.to_markdown()
    lines = table.strip().splitlines()
    assert lines[0].split("|")[2:5] == [" source ", " bn ", " tent "]
    assert len(lines) == 2 + len(CORRUPTIONS) + 1 and "**mean**" in lines[-1]
    mean = sum(result.cell("bn", c).accuracy for c in CORRUPTIONS) / len(CORRUPTIONS)
    assert result.mean_accuracy("bn") == pytest.approx(mean)


def test_bad_input(c10c_dir):
    with pytest.raises(InputError, match="unknown corruption"):
        sweep(c10c_dir, ("fogg",))
    with pytest.raises(InputError, match="severity"):
        sweep(c10c_dir, severity=6)
    with pytest.raises(InputError, match="Classifier"):
        sweep(c10c_dir, ms={"net": nn.Linear(2, 2)})
    with pytest.raises(InputError, match="at least one"):
        corruption_sweep({}, data_dir=c10c_dir)


def test_cli_resnet20(shared_dir, tmp_path, capsys):
    data = tmp_path / "c10c"
    assert main(["make-cifar10c", "--out", str(data), "--n-examples", str(N), "--corruptions", ",".join(CORRUPTIONS),
                 "--data-dir", str(shared_dir / "data" / "cifar10")]) == 0
    out = tmp_path / "sweep.json"
    ckpt = shared_dir / "models" / "resnet20-12fca82f.th"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rc = main(["corruption-sweep", "--checkpoint", str(ckpt), "--methods", "source,bn,tent",
                   "--corruptions", ",".join(CORRUPTIONS), "--n-examples", str(N), "--batch-size", "4",
                   "--data-dir", str(data), "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| gaussian_noise |" in table and "**mean**" in table
    result = SweepResult.from_json(out)
    assert result.methods == ["source", "bn", "tent"] and result.protocol["n_examples"] == N
    assert result.method_info["tent"]["class"] == "TentClassifier"
    assert main(["corruption-sweep", "--methods", "nope", "--data-dir", str(data)]) == 2
