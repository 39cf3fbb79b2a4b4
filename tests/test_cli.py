"""The robustkit command line, called through main(argv)."""

import json
import subprocess
import sys

import pytest
import torch

import robustkit
from robustkit.cli import main


def test_help_and_version(capsys):
    assert main(["--help"]) == 0  # main returns argparse's exit status instead of raising SystemExit
    out = capsys.readouterr().out
    for cmd in ("list", "accuracy", "demo"):
        assert cmd in out
    assert main([]) == 2  # no command: help, non-zero


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in out]
    assert "resnet20.cifar10" in names and "tiny_cnn.digits" in names and "wrn28_10.cifar10" in names
    assert main(["list", "classifiers", "--pattern", "*.digits"]) == 0
    assert capsys.readouterr().out.split()[0] == "tiny_cnn.digits"


@pytest.mark.parametrize("what, expected", [("defenses", "tiny_diffpure.digits"),
                                            ("score-models", "tiny_unet.digits")])
def test_list_other_registries(capsys, what, expected):
    assert main(["list", what, "--pattern", "*.digits"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert expected in names and all(n.endswith(".digits") for n in names)


def test_list_says_who_classifies(capsys):
    assert main(["list", "defenses", "--pattern", "*.digits"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "classifier tiny_cnn.digits" in rows["tiny_diffpure.digits"]
    assert "classified by its diffusion model" in rows["tiny_rdc.digits"]  # no classifier to pass


def test_accuracy_on_digits(capsys):
    assert main(["accuracy", "tiny_cnn.digits", "--n-examples", "100"]) == 0
    out = capsys.readouterr().out
    assert "digits/test" in out and "/100;" in out and "95% CI" in out


def test_accuracy_cifar10_resnet20_with_shared_data(capsys, shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet20-12fca82f.th").symlink_to(shared_dir / "models" / "resnet20-12fca82f.th")
    assert main(["accuracy", "resnet20.cifar10", "--n-examples", "200",
                 "--data-dir", str(shared_dir / "data")]) == 0
    out = capsys.readouterr().out
    assert "cifar10/test" in out and "/200;" in out


def test_user_errors_are_one_line_without_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path))
    monkeypatch.setenv("ROBUSTKIT_OFFLINE", "1")
    assert main(["accuracy", "no_such_model.cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit: error: unknown classifier") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["accuracy", "resnet20.cifar10", "--n-examples", "10"]) == 2
    err = capsys.readouterr().err
    assert "resnet20-12fca82f.th" in err and str(tmp_path) in err
    assert main(["accuracy", "tiny_cnn.digits", "--n-examples", "0"]) == 2
    assert "argument --n-examples: expected a positive integer" in capsys.readouterr().err


def test_demo_json(capsys):
    assert main(["demo", "--n-examples", "32", "--attacks", "pgd", "--no-checks", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n_examples"] == 32 and rec["eps"] == 0.1 and rec["defense"] == "tiny_cnn.digits"
    assert rec["attacks"][0]["name"] == "pgd" and rec["attacks"][0]["steps"] == 100
    robust, clean = rec["robust"]["single_draw"], rec["clean"]["single_draw"]
    assert 0 <= robust["value"] < clean["value"] <= 1
    assert robust["ci_low"] <= robust["value"] <= robust["ci_high"]


def test_bench_writes_resumable_record(capsys, tmp_path):
    run_dir = tmp_path / "run"
    args = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd", "--n-examples", "16",
            "--batch-size", "8", "--no-checks", "--run-dir", str(run_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "robust (all attacks)" in out and str(run_dir / "record.json") in out
    assert (run_dir / "record.json").exists() and len(list((run_dir / "shards").glob("*.jsonl"))) == 2
    assert main([*args[:4], "0.2", *args[5:]]) == 2  # same run dir, other eps: refused, one line
    assert "different configuration" in capsys.readouterr().err


def test_bench_check_budget_flags_reach_the_record(capsys):
    args = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd", "--n-examples", "8",
            "--json", "--attack-option", "pgd.steps=3", "--probe-size", "4", "--check-steps", "2",
            "--check-square-queries", "10", "--check-loss", "margin"]
    assert main(args) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    protocol = {k: v for k, v in checks["more_steps"]["details"]["protocol"].items() if k != "sizing"}
    assert protocol == {"probe_size": 4, "steps": 2, "eot": 1, "square_queries": 10, "loss": "margin",
                        "seed": protocol["seed"]}
    assert main([*args, "--check-eot", "0"]) == 2
    assert "positive int" in capsys.readouterr().err


def test_bench_attack_options_reach_the_record(capsys, tmp_path):
    args = ["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--attacks", "pgd", "--n-examples", "8",
            "--no-checks", "--json", "--attack-option", "pgd.steps=3", "--attack-option", "pgd.step_size=1/40"]
    assert main(args) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["attacks"][0]["steps"] == 3 and rec["attacks"][0]["step_size"] == pytest.approx(0.025)
    for bad, message in ((["--attack-option", "pgd.steps"], "ATTACK.KEY=VALUE"),
                         (["--attack-option", "apgd-ce.steps=3"], "not run"),
                         (["--attack-option", "pgd.stepz=3"], "stepz"),
                         (["--attack-option", "pgd.steps=3", "--attack-option", "pgd.steps=4"], "twice")):
        assert main([*args[:11], *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_console_entry_point_module():
    out = subprocess.run([sys.executable, "-m", "robustkit", "list", "--pattern", "resnet2*"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "resnet20.cifar10"


def test_bench_builds_a_registered_defense_with_its_base_classifier(capsys):
    from robustkit.cli import bench, build_parser
    from robustkit.defenses import PurifiedClassifier

    args = build_parser().parse_args(["bench", "--defense", "tiny_diffpure.digits", "--eps", "0.1",
                                      "--gradient", "bpda"])
    model, base, dataset = bench._build(args)
    assert isinstance(model, PurifiedClassifier) and model.traits.gradient == "bpda"
    assert base is model.classifier and dataset == "digits"
    tent, base, _ = bench._build(build_parser().parse_args(["bench", "--defense", "tent.tiny_cnn.digits", "--eps", "0.1"]))
    assert tent.traits.adapts_at_test_time and base is tent.base_classifier
    assert main(["bench", "--eps", "0.1"]) == 2  # neither --classifier nor --defense
    assert "--defense" in capsys.readouterr().err
    assert main(["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--gradient", "bpda"]) == 2
    assert "applies to a defense" in capsys.readouterr().err


def test_bench_checkpoint_with_a_defense_loads_the_defense_s_own_classifier(tmp_path, capsys):
    from robustkit.cli import bench, build_parser

    # Weights that differ from the bundled ones: --checkpoint must reach the classifier inside the defense.
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in clf.net.state_dict().items()}
    torch.save(state, tmp_path / "cnn.pt")
    args = ["bench", "--defense", "tiny_diffpure.digits", "--eps", "0.1", "--checkpoint", str(tmp_path / "cnn.pt")]
    model, base, _ = bench._build(build_parser().parse_args(args))
    assert base is model.classifier
    assert all(torch.equal(a, state[k]) for k, a in base.net.state_dict().items())
    assert main(["bench", "--defense", "tiny_rdc.digits", "--eps", "0.1", "--checkpoint", str(tmp_path / "cnn.pt")]) == 2
    assert "no separate classifier" in capsys.readouterr().err


def test_bench_score_model_replaces_the_defense_s_diffusion_model_and_the_record_names_it(tmp_path, capsys):
    from safetensors.torch import save_file

    from robustkit.diffusion import DiT, create_score_model

    torch.manual_seed(0)
    dit = create_score_model("dit_tiny.digits")
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))  # off the zero init, so the weights are recognisable
    path = tmp_path / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    args = ["bench", "--defense", "tiny_diffpure.digits", "--eps", "0.1", "--score-model", "dit_tiny.digits",
            "--score-checkpoint", str(path), "--attacks", "pgd-eot", "--attack-option", "pgd-eot.steps=1",
            "--attack-option", "pgd-eot.eot=1", "--n-examples", "2", "--n-reeval", "1", "--no-checks", "--json"]
    assert main(args) == 0
    config = json.loads(capsys.readouterr().out)["defense_config"]["config"]
    assert config["score_model"] == "dit_tiny.digits" and config["classifier"] == "tiny_cnn.digits"
    from robustkit.cli import bench, build_parser

    model, _, _ = bench._build(build_parser().parse_args(args))
    assert isinstance(model.purifier.score_model, DiT)
    assert all(torch.equal(v, dit.state_dict()[k]) for k, v in model.purifier.score_model.state_dict().items())
    for bad, message in ((["--classifier", "tiny_cnn.digits", "--score-model", "dit_tiny.digits"],
                          "applies to a defense"),
                         (["--defense", "tiny_diffpure.digits", "--score-checkpoint", str(path)], "give both"),
                         (["--defense", "tent.tiny_cnn.digits", "--score-model", "dit_tiny.digits"], "score_model")):
        assert main(["bench", "--eps", "0.1", *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
