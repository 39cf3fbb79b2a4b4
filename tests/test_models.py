"""Registered classifiers: the contract, published-spec matching, accuracy, checkpoint handling.

Real files (pretrained ResNets, spec vectors, CIFAR-10) come from the ``shared_dir`` fixture
(``$ROBUSTKIT_SHARED``); tests that need them skip when it is unset. Every test runs with
``ROBUSTKIT_HOME`` in a temporary folder and ``ROBUSTKIT_OFFLINE=1`` unless it says otherwise, so
nothing touches the network, ``~`` or the repository.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

import robustkit
from robustkit import CheckpointError, Classifier, DefenseTraits, InputError, RegistryError, hub
from robustkit.models import zoo
from robustkit.models.tiny_cnn import TinyCNN, train_tiny_cnn
from robustkit.models.wide_resnet import WideResNet
from robustkit.registry import (CLASSIFIERS, Registry, classifier_config, register_classifier,
                                resolve_weights)

# WRN-70-16 (267 M parameters, 1 GB in float32) is left out of the per-entry contract to keep the suite fast;
# its layout and its forward (on the same code path at WRN-16-2) are tested in test_models_diffpure.py
ALL_NAMES = [n for n in robustkit.list_classifiers() if n != "wrn70_16_dropout.cifar10"]

AKAMASTER = {  # depth: (file, exact correct count on the 10,000 CIFAR-10 test images, parameters)
    20: ("resnet20-12fca82f.th", 9173, 269_722),
    32: ("resnet32-d509ac18.th", 9263, 464_154),
    44: ("resnet44-014dd654.th", 9310, 658_586),
    56: ("resnet56-4bfd9763.th", 9339, 853_018),
}
RESNET18_CORRECT = 9422  # resnet18.cifar10 (pyautoattack's model_test.pt), measured on CPU, torch 2.13
WRN_PARAMS = 36_479_194
R20 = "resnet20.cifar10"
R20_FILE = AKAMASTER[20][0]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """A fresh, empty $ROBUSTKIT_HOME and no network for every test."""
    home = tmp_path / "rk_home"
    monkeypatch.setenv("ROBUSTKIT_HOME", str(home))
    monkeypatch.setenv("ROBUSTKIT_OFFLINE", "1")
    monkeypatch.delenv("ROBUSTKIT_DATA", raising=False)
    return home


def read_keys_tsv(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, _kind = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")) if shape else (), dtype))
    return rows


def state_rows(state) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_correct(clf: Classifier, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> int:
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((clf(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct


@pytest.fixture(scope="module")
def r20_vectors(shared_dir):
    return load_file(str(shared_dir / "specs" / "akamaster_resnet20" / "vectors.safetensors"))


@pytest.fixture(scope="module")
def r20_file(shared_dir) -> Path:
    return shared_dir / "models" / R20_FILE


def assert_r20_logits(clf: Classifier, vectors) -> None:
    with torch.no_grad():
        out = clf(vectors["x"])
    torch.testing.assert_close(out, vectors["logits"], atol=1e-4, rtol=1e-5)
    assert out.argmax(1).tolist() == vectors["y"].tolist()  # all 8 reference predictions are correct


# ============================================================================ 1. contract, every entry

@pytest.fixture(scope="module", params=ALL_NAMES)
def random_clf(request):
    torch.manual_seed(0)
    return robustkit.create_classifier(request.param)


def _batch(clf: Classifier) -> torch.Tensor:
    n = 2 if clf.name == "wrn28_10.cifar10" else 3  # 36M parameters: keep the CPU forward short
    return torch.rand(n, *clf.input_shape, generator=torch.Generator().manual_seed(1))


class TestContract:
    def test_registry_lists_the_known_entries(self):
        assert {"resnet18.cifar10", "resnet20.cifar10", "resnet32.cifar10", "resnet44.cifar10",
                "resnet56.cifar10", "wrn28_10.cifar10", "tiny_cnn.digits"} <= set(ALL_NAMES)
        assert ALL_NAMES == sorted(ALL_NAMES)
        assert robustkit.list_classifiers("resnet*.cifar10") == [
            "resnet18.cifar10", "resnet20.cifar10", "resnet32.cifar10", "resnet44.cifar10", "resnet50.cifar10",
            "resnet56.cifar10"]
        assert robustkit.list_classifiers("*.digits") == ["tiny_cnn.digits"]
        assert robustkit.list_classifiers("nothing*") == []

    def test_is_classifier_in_eval_mode(self, random_clf):
        cfg = classifier_config(random_clf.name)
        assert isinstance(random_clf, Classifier)
        assert not random_clf.training
        assert not any(m.training for m in random_clf.modules())
        assert random_clf.config is cfg
        assert random_clf.weights_path is None
        assert random_clf.num_classes == cfg.num_classes
        assert random_clf.input_shape == tuple(cfg.input_shape)
        assert random_clf.name.split(".")[-1] == cfg.dataset

    def test_output_shape_and_determinism(self, random_clf):
        x = _batch(random_clf)
        with torch.no_grad():
            a, b = random_clf(x), random_clf(x)
        assert a.shape == (len(x), random_clf.num_classes)
        assert a.dtype == torch.float32
        assert bool(torch.isfinite(a).all())
        assert torch.equal(a, b)
        assert not random_clf.training  # the forward did not switch modes

    def test_traits(self, random_clf):
        t = random_clf.traits
        assert isinstance(t, DefenseTraits)
        assert (t.stochastic, t.adapts_at_test_time, t.gradient, t.forward_passes) == (False, False, "exact", 1)

    def test_input_gradient_is_finite_and_nonzero(self, random_clf):
        x = _batch(random_clf).requires_grad_(True)
        y = torch.arange(len(x)) % random_clf.num_classes
        loss = nn.functional.cross_entropy(random_clf(x), y)
        (g,) = torch.autograd.grad(loss, x)
        assert g.shape == x.shape
        assert bool(torch.isfinite(g).all())
        assert float(g.abs().sum()) > 0
        assert all(p.grad is None for p in random_clf.parameters())  # autograd.grad left params alone

    @pytest.mark.parametrize("shift, match", [(1.5, r"\[0, 1\]"), (-0.75, r"\[0, 1\]")])
    def test_rejects_out_of_range(self, random_clf, shift, match):
        x = _batch(random_clf) + shift
        with pytest.raises(InputError, match=match):
            random_clf(x)

    def test_rejects_wrong_channel_count(self, random_clf):
        c, h, w = random_clf.input_shape
        wrong = 1 if c != 1 else 3
        x = torch.rand(2, wrong, h, w)
        with pytest.raises(InputError, match=rf"got \[2, {wrong}, {h}, {w}\]"):
            random_clf(x)

    def test_reset_is_a_no_op_for_stateless_models(self, random_clf):
        x = _batch(random_clf)
        with torch.no_grad():
            before = random_clf(x)
        assert random_clf.reset() is None
        with torch.no_grad():
            assert torch.equal(random_clf(x), before)

    def test_unknown_name_is_a_registry_error(self):
        with pytest.raises(RegistryError, match="robustkit list") as exc:
            robustkit.create_classifier("no_such_net.cifar10")
        assert isinstance(exc.value, KeyError)
        assert "did you mean" not in str(exc.value)
        with pytest.raises(KeyError, match=r"did you mean .*resnet20\.cifar10.*robustkit list"):
            robustkit.create_classifier("resnet.cifar10")

    def test_registry_object(self):
        reg: Registry[int] = Registry("thing")
        reg.add("a.x", 1)
        reg.add("b.y", 2)
        assert reg.get("a.x") == 1 and "b.y" in reg and list(reg) == ["a.x", "b.y"]
        assert reg.names("*.y") == ["b.y"]
        with pytest.raises(RegistryError, match="already registered"):
            reg.add("a.x", 3)
        with pytest.raises(RegistryError, match="unknown thing 'c.x'"):
            reg.get("c.x")

    def test_register_refuses_lambdas(self):
        before = set(CLASSIFIERS)
        cfg = classifier_config("tiny_cnn.digits")
        with pytest.raises(RegistryError, match="lambda"):
            register_classifier("lambda_net.digits", cfg)(lambda: TinyCNN())
        assert set(CLASSIFIERS) == before


# ================================================================================ 2. spec matching

class TestSpecs:
    def test_resnet20_checkpoint_reproduces_reference_logits(self, r20_file, r20_vectors):
        clf = robustkit.create_classifier(R20, checkpoint=r20_file)
        assert clf.weights_path == str(r20_file)
        assert_r20_logits(clf, r20_vectors)

    def test_resnet20_reference_needs_the_normalisation(self, r20_file, r20_vectors):
        # Guards the test above: without the ImageNet mean/std inside, the logits are far off.
        clf = robustkit.create_classifier(R20, checkpoint=r20_file)
        with torch.no_grad():
            raw = clf.net(r20_vectors["x"])
        assert float((raw - r20_vectors["logits"]).abs().max()) > 1.0

    @pytest.mark.parametrize("how", ["symlink", "copy"])
    def test_resnet20_pretrained_from_home(self, r20_file, r20_vectors, _isolated_home, how):
        dest = _isolated_home / "checkpoints" / R20_FILE
        dest.parent.mkdir(parents=True)
        if how == "symlink":
            dest.symlink_to(r20_file)
        else:
            shutil.copyfile(r20_file, dest)
        assert resolve_weights(R20) == dest
        clf = robustkit.create_classifier(R20, pretrained=True)
        assert clf.weights_path == str(dest)
        assert_r20_logits(clf, r20_vectors)

    def test_registered_akamaster_digests_match_the_shared_files(self, shared_dir):
        for depth, (filename, _, params) in AKAMASTER.items():
            src = classifier_config(f"resnet{depth}.cifar10").weights
            assert src.filename == filename
            assert src.url.endswith("/" + filename)
            assert src.sha256.startswith(filename.split("-")[1].split(".")[0])
            assert hub.file_digest(shared_dir / "models" / filename) == src.sha256
            assert n_params(robustkit.create_classifier(f"resnet{depth}.cifar10").net) == params

    def test_akamaster_keys(self, shared_dir, r20_file):
        spec = read_keys_tsv(shared_dir / "specs" / "akamaster_resnet20" / "keys.tsv")
        assert len(spec) == 97 and all(k.startswith("module.") for k, _, _ in spec)
        stored = torch.load(r20_file, map_location="cpu", weights_only=True)
        assert set(stored) == {"best_prec1", "state_dict"}
        assert state_rows(stored["state_dict"]) == spec  # the spec describes this very file
        model = robustkit.create_classifier(R20).net
        ours = [r for r in state_rows(model.state_dict()) if not r[0].endswith("num_batches_tracked")]
        assert ours == [(k.removeprefix("module."), s, d) for k, s, d in spec]
        assert n_params(model) == 269_722
        adapted = zoo.adapt_akamaster(stored)
        assert set(adapted) == set(model.state_dict())
        assert all(adapted[k].dtype == torch.long and int(adapted[k]) == 0
                   for k in adapted if k.endswith("num_batches_tracked"))

    def test_small_wrn_reproduces_reference_logits(self, shared_dir):
        spec = shared_dir / "specs" / "robustbench_wideresnet28_10_standard"
        net = WideResNet(depth=16, widen_factor=2)
        state = torch.load(spec / "small_model.pt", map_location="cpu", weights_only=True)
        assert len(state) == 83 and n_params(net) == 691_674
        hub.load_strict(net, zoo.adapt_robustbench(state), source="small_model.pt")
        net.eval()
        vec = load_file(str(spec / "vectors.safetensors"))
        with torch.no_grad():
            out = net(vec["x"])
        torch.testing.assert_close(out, vec["logits"], atol=1e-5, rtol=1e-5)
        # the same weights in the Classifier wrapper (no normalisation for RobustBench models)
        clf = robustkit.wrap_classifier(net, input_shape=(3, 32, 32))
        with torch.no_grad():
            torch.testing.assert_close(clf(vec["x"]), vec["logits"], atol=1e-5, rtol=1e-5)

    def test_full_wrn_state_dict_layout(self, shared_dir):
        spec = read_keys_tsv(shared_dir / "specs" / "robustbench_wideresnet28_10_standard" / "keys.tsv")
        net = robustkit.create_classifier("wrn28_10.cifar10").net
        assert state_rows(net.state_dict()) == spec  # key order, shapes and dtypes, exactly
        assert len(spec) == 155
        assert n_params(net) == WRN_PARAMS
        assert classifier_config("wrn28_10.cifar10").mean is None  # takes [0, 1] pixels

    @pytest.mark.parametrize("wrap", [
        lambda sd: sd,
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"model." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
        lambda sd: {"state_dict": {"module.model." + k: v for k, v in sd.items()}, "epoch": 7},
        lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},  # old torch
    ])
    def test_adapt_robustbench_key_mapping(self, wrap):
        sd = WideResNet(depth=10, widen_factor=1).state_dict()
        out = zoo.adapt_robustbench(wrap(dict(sd)))
        assert set(out) == set(sd)
        assert all(torch.equal(out[k], sd[k]) or k.endswith("num_batches_tracked") for k in sd)

    def test_adapters_reject_non_dict_state_dict(self):
        for adapt in (zoo.adapt_robustbench, zoo.adapt_akamaster):
            with pytest.raises(CheckpointError, match="'state_dict' entry is a int"):
                adapt({"state_dict": 5})

    def test_full_wrn_round_trip_through_wrapped_file(self, tmp_path):
        torch.manual_seed(3)
        src = robustkit.create_classifier("wrn28_10.cifar10")
        sd = src.net.state_dict()
        # perturb BN statistics so that eval-mode BN is not the identity and a mix-up would show
        with torch.no_grad():
            for k, v in sd.items():
                if k.endswith(("running_mean", "running_var")):
                    v.add_(torch.rand_like(v) * 0.1)
        path = tmp_path / "Standard.pt"
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
        clf = robustkit.create_classifier("wrn28_10.cifar10", checkpoint=path)
        loaded = clf.net.state_dict()
        assert list(loaded) == list(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
        x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(clf(x), src(x))


# ========================================================================== 3. CIFAR-10 accuracy

@pytest.fixture(scope="module")
def cifar10_test(shared_dir):
    x, y = robustkit.load_dataset("cifar10", split="test", data_dir=shared_dir / "data")
    assert x.shape == (10000, 3, 32, 32) and y.shape == (10000,)
    return x, y


class TestAccuracy:
    def test_resnet20_exact_accuracy(self, cifar10_test, shared_dir):
        clf = robustkit.create_classifier(R20, checkpoint=shared_dir / "models" / R20_FILE)
        assert count_correct(clf, *cifar10_test) == 9173

    @pytest.mark.slow
    @pytest.mark.parametrize("depth", [32, 44, 56])
    def test_deeper_resnets_exact_accuracy(self, cifar10_test, shared_dir, depth):
        filename, correct, _ = AKAMASTER[depth]
        clf = robustkit.create_classifier(f"resnet{depth}.cifar10", checkpoint=shared_dir / "models" / filename)
        assert count_correct(clf, *cifar10_test) == correct

    @pytest.mark.slow
    def test_resnet18_autoattack_example_exact_accuracy(self, cifar10_test):
        clf = robustkit.create_classifier("resnet18.cifar10", pretrained=True)
        assert clf.config.mean is None  # takes [0, 1] pixels
        assert count_correct(clf, *cifar10_test) == RESNET18_CORRECT


# ==================================================================== 4. checkpoint failure modes

def _r20_state(r20_file: Path) -> dict:
    return zoo.adapt_akamaster(torch.load(r20_file, map_location="cpu", weights_only=True))


class _Custom:
    def __init__(self):
        self.value = 1


class _Evil:
    """Unpickling this would create a marker file: proof that no code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, length: int | None = None, on_read=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}
        self._on_read = on_read

    def read(self, n=-1):
        if self._on_read is not None:
            self._on_read()
        return super().read(n)


def _serve(monkeypatch, data: bytes, *, length: int | None = None, on_read=None) -> list:
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        return _FakeResponse(data, length, on_read)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def _no_network(monkeypatch) -> list:
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        raise AssertionError("the network must not be used")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


class TestCheckpointErrors:
    def test_missing_file(self, tmp_path):
        path = tmp_path / "nope.th"
        with pytest.raises(CheckpointError, match="checkpoint not found") as exc:
            robustkit.create_classifier(R20, checkpoint=path)
        assert str(path) in str(exc.value)

    @pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note about the junk header
    @pytest.mark.parametrize("suffix", [".th", ".safetensors"])
    def test_random_bytes(self, tmp_path, suffix):
        path = tmp_path / ("junk" + suffix)
        path.write_bytes(os.urandom(4096))
        with pytest.raises(CheckpointError, match="cannot read checkpoint") as exc:
            robustkit.create_classifier(R20, checkpoint=path)
        assert str(path) in str(exc.value)

    def test_truncated_file(self, tmp_path, r20_file):
        path = tmp_path / R20_FILE
        path.write_bytes(r20_file.read_bytes()[: r20_file.stat().st_size // 2])
        with pytest.raises(CheckpointError, match="cannot read checkpoint") as exc:
            robustkit.create_classifier(R20, checkpoint=path)
        assert str(path) in str(exc.value)

    def test_unsafe_pickle_is_refused(self, tmp_path):
        path = tmp_path / "custom.pt"
        torch.save({"conv1.weight": torch.zeros(1), "extra": _Custom()}, path)
        with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*custom\.pt.*Unpickling"):
            robustkit.create_classifier(R20, checkpoint=path)

    def test_pickled_code_never_runs(self, tmp_path):
        marker = tmp_path / "pwned"
        path = tmp_path / "evil.pt"
        with open(path, "wb") as f:
            pickle.dump({"x": _Evil(marker)}, f, protocol=2)
        assert not marker.exists()
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            robustkit.create_classifier("tiny_cnn.digits", checkpoint=path)
        assert not marker.exists()

    def test_file_that_is_not_a_dict(self, tmp_path):
        path = tmp_path / "list.pt"
        torch.save([torch.zeros(2)], path)
        with pytest.raises(CheckpointError, match="holds a list, expected a dict of tensors"):
            robustkit.create_classifier("tiny_cnn.digits", checkpoint=path)

    def test_sha256_mismatch_in_home(self, monkeypatch, _isolated_home, r20_file):
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")  # even online, a bad cached file is not re-downloaded
        calls = _no_network(monkeypatch)
        dest = _isolated_home / "checkpoints" / R20_FILE
        dest.parent.mkdir(parents=True)
        data = bytearray(r20_file.read_bytes())
        data[-100] ^= 0xFF  # one flipped byte
        dest.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=r"corrupt.*sha256.*expected 12fca82f.*delete it") as exc:
            robustkit.create_classifier(R20, pretrained=True)
        assert str(dest) in str(exc.value)
        assert calls == []
        assert dest.exists()  # left for the user to inspect/delete

    def test_missing_and_unexpected_keys_are_listed(self, tmp_path, r20_file):
        state = _r20_state(r20_file)
        del state["linear.weight"], state["layer2.1.bn1.running_var"]
        state["head.weight"] = torch.zeros(10, 64)
        path = tmp_path / "keys.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError) as exc:
            robustkit.create_classifier(R20, checkpoint=path)
        msg = str(exc.value)
        assert str(path) in msg and "ResNetCIFAR" in msg
        assert "missing keys: layer2.1.bn1.running_var, linear.weight" in msg
        assert "unexpected keys: head.weight" in msg
        assert "shape mismatches" not in msg

    def test_shape_mismatch_is_listed(self, tmp_path, r20_file):
        state = _r20_state(r20_file)
        state["linear.weight"] = torch.zeros(5, 64)
        state["linear.bias"] = torch.zeros(5)
        path = tmp_path / "shapes.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError) as exc:
            robustkit.create_classifier(R20, checkpoint=path)
        msg = str(exc.value)
        assert "shape mismatches: linear.weight: checkpoint (5, 64) vs model (10, 64)" in msg
        assert "linear.bias: checkpoint (5,) vs model (10,)" in msg
        assert "missing keys" not in msg and "unexpected keys" not in msg

    def test_wrong_architecture_lists_a_count(self, shared_dir):
        with pytest.raises(CheckpointError, match=r"missing keys: .*\(\d+ in all\)") as exc:
            robustkit.create_classifier("resnet32.cifar10", checkpoint=shared_dir / "models" / R20_FILE)
        assert "unexpected keys" not in str(exc.value)

    def test_non_tensor_value_is_a_checkpoint_error(self, tmp_path):
        state = dict(TinyCNN().state_dict())
        state["fc.bias"] = [0.0] * 10
        path = tmp_path / "nontensor.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=r"values that are not tensors: fc\.bias \(list\)"):
            robustkit.create_classifier("tiny_cnn.digits", checkpoint=path)

    def test_safetensors_checkpoint(self, tmp_path, r20_file, r20_vectors):
        path = tmp_path / "resnet20.safetensors"
        save_file({k: v.contiguous() for k, v in _r20_state(r20_file).items()}, str(path))
        clf = robustkit.create_classifier(R20, checkpoint=path)
        assert_r20_logits(clf, r20_vectors)

    def test_pretrained_and_checkpoint_together(self, r20_file):
        with pytest.raises(InputError, match="either pretrained=True or checkpoint=PATH"):
            robustkit.create_classifier(R20, pretrained=True, checkpoint=r20_file)

    @pytest.mark.parametrize("name", [R20, "wrn28_10.cifar10"])
    def test_offline_fails_at_once_naming_the_path(self, monkeypatch, _isolated_home, name):
        calls = _no_network(monkeypatch)
        dest = _isolated_home / "checkpoints" / classifier_config(name).weights.filename
        with pytest.raises(CheckpointError, match="ROBUSTKIT_OFFLINE") as exc:
            robustkit.create_classifier(name, pretrained=True)
        assert str(dest) in str(exc.value)
        assert calls == []
        assert not dest.parent.exists() or list(dest.parent.iterdir()) == []

    @pytest.mark.parametrize("value", ["true", "YES", " on "])
    def test_offline_spellings(self, monkeypatch, value):
        monkeypatch.setenv("ROBUSTKIT_OFFLINE", value)
        assert hub.offline()
        monkeypatch.setenv("ROBUSTKIT_OFFLINE", "0")
        assert not hub.offline()

    def test_no_download_names_path_and_digest(self, _isolated_home):
        with pytest.raises(CheckpointError, match=r"not found: put resnet20-12fca82f\.th at .*sha256 12fca82f"):
            resolve_weights(R20, download=False)

    def test_network_error_names_the_path(self, monkeypatch, _isolated_home):
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")
        calls = []

        def fail(url, timeout=None):
            calls.append(url)
            raise urllib.error.URLError("Temporary failure in name resolution")

        monkeypatch.setattr(urllib.request, "urlopen", fail)
        dest = _isolated_home / "checkpoints" / R20_FILE
        with pytest.raises(CheckpointError, match="could not download.*name resolution") as exc:
            robustkit.create_classifier(R20, pretrained=True)
        assert str(dest) in str(exc.value)
        assert calls == [classifier_config(R20).weights.url]
        assert list(dest.parent.iterdir()) == []  # no .part file left behind

    def test_download_lands_atomically(self, monkeypatch, _isolated_home, r20_file, r20_vectors):
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")
        folder = _isolated_home / "checkpoints"
        dest = folder / R20_FILE
        seen = []

        def during_read():  # while bytes are still arriving, only a .part file exists
            seen.append(sorted(p.name for p in folder.iterdir()))

        calls = _serve(monkeypatch, r20_file.read_bytes(), on_read=during_read)
        clf = robustkit.create_classifier(R20, pretrained=True)
        assert calls == [(classifier_config(R20).weights.url, hub.DOWNLOAD_TIMEOUT_S)]
        assert seen and all(len(names) == 1 and names[0].startswith(R20_FILE + ".") and names[0].endswith(".part")
                            for names in seen)
        assert sorted(p.name for p in folder.iterdir()) == [R20_FILE]
        assert hub.file_digest(dest) == classifier_config(R20).weights.sha256
        assert clf.weights_path == str(dest)
        assert_r20_logits(clf, r20_vectors)
        # second time: served from the cache, no network
        _no_network(monkeypatch)
        assert robustkit.create_classifier(R20, pretrained=True).weights_path == str(dest)

    def test_download_with_wrong_bytes_is_discarded(self, monkeypatch, _isolated_home, r20_file):
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")
        data = bytearray(r20_file.read_bytes())
        data[1000] ^= 0x01
        _serve(monkeypatch, bytes(data))
        with pytest.raises(CheckpointError, match=r"sha256 is [0-9a-f]{64}, expected 12fca82f.*discarded"):
            robustkit.create_classifier(R20, pretrained=True)
        assert list((_isolated_home / "checkpoints").iterdir()) == []

    def test_truncated_download_without_digest_is_discarded(self, monkeypatch, _isolated_home):
        # wrn28_10 has no published sha256: only the Content-Length can reveal a cut connection
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")
        _serve(monkeypatch, b"x" * 1000, length=5000)
        with pytest.raises(CheckpointError, match=r"incomplete.*1000 of 5000 bytes") as exc:
            robustkit.create_classifier("wrn28_10.cifar10", pretrained=True)
        assert "robustbench_cifar10_Standard.pt" in str(exc.value)
        assert list((_isolated_home / "checkpoints").iterdir()) == []

    def test_download_without_content_length(self, monkeypatch, tmp_path):
        monkeypatch.delenv("ROBUSTKIT_OFFLINE")
        payload = os.urandom(3000)

        class NoLength(_FakeResponse):
            def __init__(self, data):
                super().__init__(data)
                self.headers = {}

        monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: NoLength(payload))
        dest = tmp_path / "sub" / "blob.bin"
        assert hub.download("https://example.invalid/blob.bin", dest, digest=None) == dest
        assert dest.read_bytes() == payload
        assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]
        # with a digest given, a matching one is accepted (md5 here, as the CIFAR-10 tarball uses)
        dest2 = tmp_path / "blob2.bin"
        hub.download("https://example.invalid/blob.bin", dest2, digest=hashlib.md5(payload).hexdigest(),
                     algorithm="md5")
        assert dest2.read_bytes() == payload

    def test_package_file_is_verified(self, monkeypatch, tmp_path):
        import robustkit.registry as registry

        fake = tmp_path / "pkg" / "weights.safetensors"
        monkeypatch.setattr(registry, "_package_file", lambda package, rel: fake)
        with pytest.raises(CheckpointError, match="should ship in the robustkit package.*reinstall"):
            robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
        fake.parent.mkdir()
        fake.write_bytes(b"not the weights")
        with pytest.raises(CheckpointError, match="corrupt or not the expected file"):
            robustkit.create_classifier("tiny_cnn.digits", pretrained=True)

    def test_resnet18_package_weights_verify(self):
        path = resolve_weights("resnet18.cifar10")
        assert path.parts[-3:] == ("pyautoattack", "examples", "model_test.pt")
        assert hub.file_digest(path) == classifier_config("resnet18.cifar10").weights.sha256


# ========================================================================= 5. the bundled tiny CNN

@pytest.fixture(scope="module")
def digits_test():
    return robustkit.load_dataset("digits", split="test")


class TestTinyCNN:
    def test_bundled_weights_verify_and_are_accurate(self, digits_test):
        path = resolve_weights("tiny_cnn.digits")
        assert path.name == "tiny_cnn_digits.safetensors" and path.is_file()
        assert hub.file_digest(path) == zoo.TINY_CNN_DIGITS_SHA256
        clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
        assert clf.weights_path == str(path)
        x, y = digits_test
        correct = count_correct(clf, x, y)
        assert len(y) == 360
        assert correct / len(y) >= 0.97
        assert correct == 351

    def test_retraining_reproduces_the_bundled_model(self, digits_test):
        x, y = robustkit.load_dataset("digits", split="train")
        threads = torch.get_num_threads()
        rng = torch.random.get_rng_state()
        torch.set_num_threads(1)
        try:
            model = train_tiny_cnn(x, y, seed=0, epochs=40)
        finally:
            torch.set_num_threads(threads)
        assert torch.get_num_threads() == threads
        assert torch.equal(torch.random.get_rng_state(), rng)  # the global RNG was not consumed
        assert not model.training
        bundled = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
        xt, _ = digits_test
        with torch.no_grad():
            ours = model((xt - 0.5) / 0.5).argmax(1)
            theirs = bundled(xt).argmax(1)
        assert torch.equal(ours, theirs)


# ======================================================================== 6. RobustBench adapter

class TestRobustBench:
    def test_missing_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "robustbench", None)
        monkeypatch.setitem(sys.modules, "robustbench.utils", None)
        with pytest.raises(ImportError, match=r"robustkit\[robustbench\]"):
            robustkit.models.from_robustbench("Standard", "cifar10", "Linf")

    @pytest.mark.parametrize("dataset, threat, match", [
        ("mnist", "Linf", "dataset must be one of"),
        ("cifar10", "L1", "threat_model must be one of"),
    ])
    def test_bad_arguments(self, dataset, threat, match):
        with pytest.raises(InputError, match=match):
            robustkit.models.from_robustbench("Standard", dataset, threat)


# ====================================================================== 7. wrap_classifier

class _Logits(nn.Module):
    """[N, C, 1, 1] → [N, C]: the normalised input itself, as logits."""

    def forward(self, x):
        return x.flatten(1)


class TestWrapClassifier:
    def test_infers_num_classes(self):
        net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7)).train()
        clf = robustkit.wrap_classifier(net, input_shape=(3, 2, 2))
        assert clf.num_classes == 7 and clf.input_shape == (3, 2, 2)
        assert not clf.training and not net.training
        assert robustkit.wrap_classifier(_Logits(), input_shape=(4, 1, 1)).num_classes == 4

    def test_rejects_a_classifier(self):
        clf = robustkit.create_classifier("tiny_cnn.digits")
        with pytest.raises(InputError, match="already a robustkit Classifier"):
            robustkit.wrap_classifier(clf)

    @pytest.mark.parametrize("kw, match", [
        (dict(mean=(0.5, 0.5)), "mean must have 1 or 3 values"),
        (dict(std=(0.5, 0.5, 0.5, 0.5)), "std must have 1 or 3 values"),
        (dict(std=(0.5, 0.0, 0.5)), "std must be positive"),
        (dict(std=(0.5, -1.0, 0.5)), "std must be positive"),
        (dict(std=-2.0), "std must be positive"),
    ])
    @pytest.mark.parametrize("num_classes", [None, 3])
    def test_rejects_bad_normalisation(self, kw, match, num_classes):
        with pytest.raises(InputError, match=match):
            robustkit.wrap_classifier(_Logits(), input_shape=(3, 1, 1), num_classes=num_classes, **kw)

    def test_normalisation_math(self):
        mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
        clf = robustkit.wrap_classifier(_Logits(), input_shape=(3, 1, 1), mean=mean, std=std)
        assert clf.num_classes == 3
        x = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.2, 0.3]]).view(2, 3, 1, 1).requires_grad_(True)
        out = clf(x)
        expected = torch.tensor([[(0.0 - 0.1) / 0.5, (0.5 - 0.2) / 0.25, (1.0 - 0.3) / 2.0],
                                 [(1.0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (0.3 - 0.3) / 2.0]])
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        (g,) = torch.autograd.grad(out.sum(), x)  # d logit_c / d x_c = 1 / std_c
        torch.testing.assert_close(g.view(2, 3), torch.tensor([[2.0, 4.0, 0.5]] * 2))
        # a scalar mean/std is broadcast to every channel; no mean/std means identity
        clf1 = robustkit.wrap_classifier(_Logits(), input_shape=(3, 1, 1), mean=0.5, std=0.5)
        torch.testing.assert_close(clf1(x.detach()), (x.detach().flatten(1) - 0.5) / 0.5)
        clf2 = robustkit.wrap_classifier(_Logits(), input_shape=(3, 1, 1))
        assert torch.equal(clf2(x.detach()), x.detach().flatten(1))

    def test_registered_normalisation_is_inside(self):
        clf = robustkit.create_classifier(R20)
        cfg = classifier_config(R20)
        assert cfg.mean == zoo.IMAGENET_MEAN and cfg.std == zoo.IMAGENET_STD
        x = torch.rand(2, 3, 32, 32)
        mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std).view(1, 3, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(clf(x), clf.net((x - mean) / std), atol=1e-6, rtol=1e-6)
