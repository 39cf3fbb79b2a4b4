"""DiffPure's other CIFAR-10 classifiers: ResNet-50 and WRN-70-16 (dropout 0.3), in NVlabs/DiffPure's layout.

Their weights cannot be downloaded here, so the tests build state dicts in the official layout themselves:
the key names and shapes are enumerated below from the official architecture (``classifiers/cifar10_resnet.py``
@ 985703f), independently of robustkit's modules; files are saved the way DiffPure's loader reads them (a
bare ``nn.DataParallel`` state dict, keys ``module.<key>``); and logits are checked against a functional
forward written here from the official definition (CIFAR-10 mean/std normalisation inside, ReLU
bottlenecks / pre-activation wide blocks, 4×4 / 8×8 average pooling).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robustkit
from robustkit import CheckpointError
from robustkit.models import zoo
from robustkit.models.wide_resnet import WideResNet
from robustkit.registry import classifier_config

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROBUSTKIT_OFFLINE", "1")


# ------------------------------------------------------------------------------------ official layouts

def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def official_resnet50_layout() -> list[tuple[str, tuple[int, ...]]]:
    """``ResNet(Bottleneck, [3, 4, 6, 3])``: keys and shapes in registration order."""
    rows = [("conv1.weight", (64, 3, 3, 3)), *_bn("bn1", 64)]
    cin = 64
    for s, (planes, n, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            rows += [(f"{p}.conv1.weight", (planes, cin, 1, 1)), *_bn(f"{p}.bn1", planes),
                     (f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes),
                     (f"{p}.conv3.weight", (4 * planes, planes, 1, 1)), *_bn(f"{p}.bn3", 4 * planes)]
            if (stride if i == 0 else 1) != 1 or cin != 4 * planes:
                rows += [(f"{p}.shortcut.0.weight", (4 * planes, cin, 1, 1)), *_bn(f"{p}.shortcut.1", 4 * planes)]
            cin = 4 * planes
    return rows + [("linear.weight", (10, 2048)), ("linear.bias", (10,))]


def official_wrn_layout(depth: int, k: int) -> list[tuple[str, tuple[int, ...]]]:
    """``WideResNet(depth, widen_factor=k)`` of DiffPure (TRADES lineage): keys and shapes in order."""
    n = (depth - 4) // 6
    ch = [16, 16 * k, 32 * k, 64 * k]
    rows = [("conv1.weight", (16, 3, 3, 3))]
    for b in range(3):
        for i in range(n):
            cin, cout = (ch[b] if i == 0 else ch[b + 1]), ch[b + 1]
            p = f"block{b + 1}.layer.{i}"
            rows += [*_bn(f"{p}.bn1", cin), (f"{p}.conv1.weight", (cout, cin, 3, 3)), *_bn(f"{p}.bn2", cout),
                     (f"{p}.conv2.weight", (cout, cout, 3, 3))]
            if cin != cout:
                rows.append((f"{p}.convShortcut.weight", (cout, cin, 1, 1)))
    return rows + [*_bn("bn1", ch[3]), ("fc.weight", (10, ch[3])), ("fc.bias", (10,))]


def layout(state: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items()]


def test_resnet50_has_the_official_layout():
    net = zoo.resnet50_cifar10()
    assert layout(net.state_dict()) == official_resnet50_layout()  # names, order and shapes, exactly
    assert sum(p.numel() for p in net.parameters()) == 23_520_842


def test_wrn70_16_dropout_has_the_official_layout():
    with torch.device("meta"):  # 267 M parameters: compare shapes without allocating them
        net = zoo.wrn70_16_dropout_cifar10()
    assert layout(net.state_dict()) == official_wrn_layout(70, 16)
    assert sum(p.numel() for p in net.parameters()) == 266_796_506
    assert all(b.drop_rate == 0.3 for g in (net.block1, net.block2, net.block3) for b in g.layer)


# ------------------------------------------------------------------------------- official forward passes

def _bn_f(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def official_resnet50_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(_bn_f(F.conv2d((x - MEAN) / STD, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s, (n, stride) in enumerate(((3, 1), (4, 2), (6, 2), (3, 2)), start=1):
        for i in range(n):
            p, st = f"layer{s}.{i}", (stride if i == 0 else 1)
            h = F.relu(_bn_f(F.conv2d(out, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            h = F.relu(_bn_f(F.conv2d(h, sd[f"{p}.conv2.weight"], stride=st, padding=1), sd, f"{p}.bn2"))
            h = _bn_f(F.conv2d(h, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            sc = (_bn_f(F.conv2d(out, sd[f"{p}.shortcut.0.weight"], stride=st), sd, f"{p}.shortcut.1")
                  if f"{p}.shortcut.0.weight" in sd else out)
            out = F.relu(h + sc)
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def official_wrn_forward(sd: dict, x: torch.Tensor, depth: int) -> torch.Tensor:
    out = F.conv2d((x - MEAN) / STD, sd["conv1.weight"], padding=1)
    for b in range(3):
        for i in range((depth - 4) // 6):
            p, st = f"block{b + 1}.layer.{i}", (2 if b > 0 and i == 0 else 1)
            pre = F.relu(_bn_f(out, sd, f"{p}.bn1"))
            h = F.relu(_bn_f(F.conv2d(pre, sd[f"{p}.conv1.weight"], stride=st, padding=1), sd, f"{p}.bn2"))
            h = F.conv2d(h, sd[f"{p}.conv2.weight"], padding=1)
            sc = F.conv2d(pre, sd[f"{p}.convShortcut.weight"], stride=st) if f"{p}.convShortcut.weight" in sd else out
            out = sc + h
    out = F.relu(_bn_f(out, sd, "bn1"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


def randomised(state: dict, seed: int) -> dict:
    """Random weights and BN statistics (so that eval-mode BN is no identity and a mix-up would show)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(("running_mean", "bias")):
            out[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bn1.weight") or ".bn" in k or k.endswith("shortcut.1.weight"):
            out[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:  # conv / linear: He-scaled so activations stay O(1) through 50 layers
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) * (2 / fan_in) ** 0.5
    return out


def test_resnet50_loads_diffpure_file_and_matches_the_official_forward(tmp_path):
    sd = randomised(dict(zoo.resnet50_cifar10().state_dict()), seed=0)
    path = tmp_path / "weights.pt"
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DiffPure: DataParallel keys, bare dict
    clf = robustkit.create_classifier("resnet50.cifar10", checkpoint=path)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = clf(x), official_resnet50_forward(sd, x)
    assert want.abs().max() > 0.1  # not a degenerate network
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_wrn_dropout_family_matches_the_official_forward(tmp_path):
    """WRN-70-16 is 1 GB; the same code path (entry adapter, CIFAR normalisation, dropout) on WRN-16-2."""
    net = WideResNet(depth=16, widen_factor=2, drop_rate=0.3)
    assert layout(net.state_dict()) == official_wrn_layout(16, 2)
    sd = randomised(dict(net.state_dict()), seed=2)
    robustkit.hub.load_strict(net, zoo.adapt_diffpure({"module." + k: v for k, v in sd.items()}), source="test")
    cfg = classifier_config("wrn70_16_dropout.cifar10")
    clf = robustkit.wrap_classifier(net, mean=cfg.mean, std=cfg.std, input_shape=(3, 32, 32))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = clf(x)
        torch.testing.assert_close(got, official_wrn_forward(sd, x, 16), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(clf(x), got, atol=0, rtol=0)  # dropout is off in evaluation
        net.train()
        assert not torch.allclose(net((x - MEAN) / STD), net((x - MEAN) / STD))  # and on in training


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    sd = {"module." + k: v for k, v in zoo.resnet50_cifar10().state_dict().items()}
    sd.pop("module.layer3.5.bn3.weight")
    sd["module.layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "weights.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"layer3\.5\.bn3\.weight[\s\S]*layer5\.0\.conv1\.weight|"
                                              r"layer5\.0\.conv1\.weight[\s\S]*layer3\.5\.bn3\.weight"):
        robustkit.create_classifier("resnet50.cifar10", checkpoint=path)


@pytest.mark.parametrize("name,folder", [("resnet50.cifar10", "1SEGilIEAnx9OC1JVhmOynreCF3oog7Fi"),
                                         ("wrn70_16_dropout.cifar10", "1istqcnPNXJ-TQFdxRqNJuInzOtlYOG1b")])
def test_registry_says_how_to_get_the_weights(name, folder):
    cfg = classifier_config(name)
    assert folder in cfg.notes and cfg.weights.url is None and cfg.mean == (0.4914, 0.4822, 0.4465)
    with pytest.raises(CheckpointError, match=f"put {cfg.weights.filename} at .*checkpoints"):
        robustkit.create_classifier(name, pretrained=True)


def test_diffpure_entries_use_the_official_settings():
    for name, clf, t_star in (("diffpure_wrn70_16.cifar10", "wrn70_16_dropout.cifar10", 0.1),
                              ("diffpure_rn50.cifar10", "resnet50.cifar10", 0.125)):
        cfg = robustkit.defenses.defense_config(name)
        assert cfg.method == "DiffPure" and cfg.classifier == clf and cfg.purifier.t_star == t_star
