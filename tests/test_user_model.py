"""Issue 25 item 5: a user's own model from the command line (`--model FILE.py:FUNCTION`, `--model FILE.pt`)."""

import json
import textwrap

import pytest
import torch

import robustkit
from robustkit.cli import main
from robustkit.errors import CheckpointError, InputError
from robustkit.models.user import load_user_model

NETS = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import robustkit

    class Scaled(nn.Module):  # records what it was given, so the test can see the normalisation
        def __init__(self):
            super().__init__()
            self.seen = None
            self.lin = nn.Linear(64, 10)
        def forward(self, x):
            self.seen = x.detach()
            return self.lin(x.flatten(1))

    def scaled():
        torch.manual_seed(0)
        return Scaled()

    def trained_digits():
        return robustkit.create_classifier("tiny_cnn.digits", pretrained=True).net

    def ready():
        return robustkit.create_classifier("tiny_cnn.digits", pretrained=True)

    def broken():
        raise RuntimeError("weights file corrupt")

    def not_a_model():
        return 42

    NOT_CALLABLE = 3
""")


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(NETS)
    return path


def test_a_factory_s_module_is_wrapped_with_the_given_normalisation_and_named_after_the_file(nets):
    clf = load_user_model(f"{nets}:scaled", input_shape=(1, 8, 8), mean=(0.5,), std=(0.25,))
    assert isinstance(clf, robustkit.Classifier) and clf.name == "my_nets:scaled" and clf.num_classes == 10
    x = torch.rand(3, 1, 8, 8)
    clf(x)
    assert torch.allclose(clf.net.seen, (x - 0.5) / 0.25)  # normalisation inside, budgets stay in pixels
    assert load_user_model(f"{nets}:scaled", input_shape=(1, 8, 8), name="mine").name == "mine"
    ready = load_user_model(f"{nets}:ready")  # a Classifier is used as is, with its own name
    assert ready.name == "tiny_cnn.digits" and ready.input_shape == (1, 8, 8)


def test_torchscript_file_gives_the_same_logits_as_the_scripted_module(tmp_path):
    net = robustkit.create_classifier("tiny_cnn.digits", pretrained=True).net
    torch.jit.save(torch.jit.script(net), str(tmp_path / "cnn.pt"))
    clf = load_user_model(str(tmp_path / "cnn.pt"), input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    assert clf.name == "cnn" and torch.allclose(clf(x), net(x), atol=1e-6)


@pytest.mark.parametrize("spec, error, message", [
    ("{dir}/missing.py:f", InputError, "no such file"),
    ("{nets}:nope", InputError, "has no function 'nope' (it defines broken, not_a_model, ready, scaled, trained_digits)"),
    ("{nets}:NOT_CALLABLE", InputError, "is a int, not a function"),
    ("{nets}:broken", InputError, "broken() raised RuntimeError: weights file corrupt"),
    ("{nets}:not_a_model", InputError, "returned int; it must return a torch.nn.Module or a robustkit Classifier"),
    ("{nets}", InputError, "name the function"),
    ("{nets}:1x", InputError, "not a Python function name"),
    ("{dir}/missing.pt", InputError, "no such file"),
    ("{dir}/state.pt", CheckpointError, "is not a TorchScript file"),
])
def test_every_bad_model_is_a_typed_one_line_error(nets, tmp_path, spec, error, message):
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")  # a state dict, not TorchScript
    with pytest.raises(error) as e:
        load_user_model(spec.format(dir=tmp_path, nets=nets), input_shape=(1, 8, 8))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_fails_to_import_and_mean_with_a_classifier_are_refused(nets, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_xyz\n")
    with pytest.raises(InputError, match="importing .*bad.py failed: ModuleNotFoundError"):
        load_user_model(f"{bad}:f")
    with pytest.raises(InputError, match="drop --mean/--std"):
        load_user_model(f"{nets}:ready", mean=(0.5,), std=(0.5,))


def test_cli_bench_model_runs_and_names_the_record(nets, capsys):
    # the bare network of tiny_cnn.digits expects (x - 0.5) / 0.5: --mean/--std must reach it
    args = ["bench", "--model", f"{nets}:trained_digits", "--input-shape", "1,8,8", "--dataset", "digits",
            "--eps", "0.1", "--attacks", "pgd", "--attack-option", "pgd.steps=2", "--n-examples", "16",
            "--no-checks", "--json"]
    assert main([*args, "--mean", "0.5", "--std", "0.5"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["defense"] == "my_nets:trained_digits" and rec["clean"]["single_draw"]["correct"] >= 14  # ~97 %
    assert main(args) == 0  # without the normalisation the same network is far worse: the flags matter
    assert json.loads(capsys.readouterr().out)["clean"]["single_draw"]["correct"] < 10
    assert main([*args, "--name", "my-cnn"]) == 0
    assert json.loads(capsys.readouterr().out)["defense"] == "my-cnn"


@pytest.mark.parametrize("extra, message", [
    (["--input-shape", "1,8"], "--input-shape must be three positive integers"),
    (["--input-shape", "1,8,8", "--mean", "a,b"], "--mean must be comma-separated numbers"),
    (["--input-shape", "1,8,8", "--classifier", "tiny_cnn.digits"], "not with them"),
    (["--input-shape", "1,8,8", "--mean", "0.5,0.5"], "mean must have 1"),
])
def test_cli_bench_model_bad_options_are_one_line(nets, capsys, extra, message):
    assert main(["bench", "--model", f"{nets}:scaled", "--dataset", "digits", "--eps", "0.1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_model_options_need_model_and_model_needs_dataset(nets, capsys):
    assert main(["bench", "--classifier", "tiny_cnn.digits", "--eps", "0.1", "--input-shape", "1,8,8"]) == 2
    assert "--input-shape applies to --model" in capsys.readouterr().err
    assert main(["bench", "--model", f"{nets}:scaled", "--eps", "0.1"]) == 2
    assert "--model needs --dataset" in capsys.readouterr().err
