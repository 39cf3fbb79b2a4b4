"""Issue 25 item 3: no silent random weights. A model built from the registry without its trained weights is
refused by benchmark() and `robustkit bench` unless asked for explicitly, and `robustkit list` says where every
entry's weights stand."""

import json

import pytest
import torch

import robustkit
from robustkit.cli import main
from robustkit.errors import CheckpointError
from robustkit.eval import benchmark
from robustkit.registry import WeightSource, random_weight_parts, weights_status

KW = dict(dataset="digits", eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, n_examples=8,
          checks=False)


def test_benchmark_refuses_an_untrained_registered_classifier_with_how_to_get_the_weights(tmp_path):
    clf = robustkit.create_classifier("tiny_cnn.digits")  # the architecture only
    with pytest.raises(CheckpointError) as e:
        benchmark(clf, run_dir=tmp_path / "r", **KW)
    msg = str(e.value)
    assert "tiny_cnn.digits has random weights" in msg and "pretrained=True" in msg
    assert "allow_random_weights=True" in msg and "--random-weights" in msg and "\n" not in msg
    assert not (tmp_path / "r").exists()  # refused before anything is written

    rec = benchmark(clf, allow_random_weights=True, **KW)
    assert rec.defense_config["random_weights"] == ["tiny_cnn.digits"]
    assert "RANDOM WEIGHTS (never trained): tiny_cnn.digits" in rec.summary()


def test_trained_or_loaded_weights_lift_the_refusal():
    assert random_weight_parts(robustkit.create_classifier("tiny_cnn.digits", pretrained=True)) == []
    clf = robustkit.create_classifier("tiny_cnn.digits")
    assert [p.name for p in random_weight_parts(clf)] == ["tiny_cnn.digits"]
    opt = torch.optim.SGD(clf.parameters(), lr=0.1)  # a user training the architecture
    torch.nn.functional.cross_entropy(clf(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert random_weight_parts(clf) == []
    rec = benchmark(clf, **KW)
    assert "random_weights" not in rec.defense_config


def test_a_defense_with_a_random_diffusion_model_is_refused_even_around_a_trained_classifier():
    cnn = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    defense = robustkit.create_defense("tiny_diffpure.digits", classifier=cnn)  # pretrained=False: random U-Net
    assert [p.name for p in random_weight_parts(defense)] == ["tiny_unet.digits"]
    with pytest.raises(CheckpointError, match="tiny_unet.digits has random weights"):
        benchmark(defense, **KW)
    assert random_weight_parts(robustkit.create_defense("tiny_diffpure.digits", pretrained=True)) == []


def test_weights_status_present_downloadable_manual_none(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    assert weights_status(None) == "none published"
    assert weights_status(WeightSource("a.pt", url="https://example.org/a.pt")) == "downloadable: https://example.org/a.pt"
    manual = WeightSource("b.pt", manual="the authors' Drive folder")
    assert weights_status(manual) == f"manual: put b.pt in {tmp_path / 'checkpoints'} (from the authors' Drive folder)"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "b.pt").write_bytes(b"x")
    assert weights_status(manual) == "present"
    assert weights_status(WeightSource("c.pt", package_file=("robustkit", "no/such/file"))) == "missing from robustkit"
    assert weights_status(WeightSource("d.pt", package_file=("no_such_pkg_xyz", "w.pt"))) == "manual: pip install no_such_pkg_xyz"


def test_list_shows_where_each_entry_s_weights_stand(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    assert main(["list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["tiny_cnn.digits"].endswith("[weights: present]")
    assert "[weights: downloadable: https://github.com/akamaster/" in rows["resnet20.cifar10"]
    assert main(["list", "defenses"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "diffusion weights: manual: put score_sde_vp_cifar10_ddpmpp_deep_continuous_checkpoint_8.pth" in rows["diffpure.cifar10"]
    assert "drive.google.com/drive/folders/1tFmF_uh57O6lx9ggtZT_5LdonVK2cV-e" in rows["diffpure.cifar10"]
    assert "diffusion (tiny_unet.digits) weights: present; classifier weights: present" in rows["tiny_diffpure.digits"]
    assert main(["list", "score-models", "--pattern", "dit_tiny.*"]) == 0
    assert "robustkit train-diffusion" in capsys.readouterr().out


def test_cli_bench_missing_weights_is_one_line_and_random_weights_is_explicit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    assert main(["bench", "--defense", "diffpure.cifar10", "--eps", "8/255"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "score_sde_vp_cifar10" in err and str(tmp_path / "checkpoints") in err
    assert "get it from vp/cifar10_ddpmpp_deep_continuous/checkpoint_8.pth of score_sde's Google Drive folder" in err

    args = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd", "--attack-option",
            "pgd.steps=2", "--n-examples", "8", "--no-checks", "--json"]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out)
    assert "random_weights" not in rec["defense_config"]
    assert main([*args, "--random-weights"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["defense_config"]["random_weights"] == ["tiny_cnn.digits"]
