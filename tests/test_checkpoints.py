"""Checkpoints (issue 21 item 5): bad values and dtypes, unreadable files, and a seeded fuzz.

NaN / Inf values and integer / bool / complex tensors where the architecture has floats raise
:class:`CheckpointError`; an unreadable file gets robustkit's own one-line message naming the file and the
cause (never torch's ``weights_only`` advice); a truncated file says "truncated". Floating weights of
another precision (float16, bfloat16, float64) are the one documented conversion: cast to the model's dtype.
"""

from __future__ import annotations

import copy
import pickle
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import robustkit
from robustkit import hub
from robustkit.errors import CheckpointError, RobustkitError

TINY = "tiny_cnn.digits"
FORMATS = ("zip", "legacy", "safetensors")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """The published tiny_cnn.digits weights (float32, plus BatchNorm's int64 num_batches_tracked)."""
    return hub.load_state_dict_file(robustkit.create_classifier(TINY, pretrained=True).weights_path)


@pytest.fixture(scope="module")
def probe(state) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return x, robustkit.create_classifier(TINY, pretrained=True)(x).detach()


def save(obj, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        save_file(obj, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    torch.save(obj, path.with_suffix(".pt"), _use_new_zipfile_serialization=fmt == "zip")
    return path.with_suffix(".pt")


def refused(path: Path, *match: str, name: str = TINY) -> str:
    """Load ``path`` into ``name``; assert a one-line CheckpointError naming the file and each ``match``."""
    with pytest.raises(CheckpointError) as exc:
        robustkit.create_classifier(name, checkpoint=path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "weights_only" not in msg, msg
    for m in match:
        assert m in msg, f"{m!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------- values

@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
@pytest.mark.parametrize("bad, word", [(float("nan"), "1 NaN, 0 infinite"), (float("inf"), "0 NaN, 1 infinite"),
                                       (float("-inf"), "0 NaN, 1 infinite")])
def test_nan_and_inf_are_refused(tmp_path, state, fmt, bad, word):
    s = {k: v.clone() for k, v in state.items()}
    s["conv2.weight"][3, 1, 0, 2] = bad
    refused(save(s, tmp_path / "w", fmt), "NaN/Inf values: conv2.weight: " + word)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_tensor_where_the_model_has_floats(tmp_path, state, dtype):
    s = dict(state)
    s["fc.weight"] = state["fc.weight"].to(dtype)
    refused(save(s, tmp_path / "w", "zip"), "wrong dtypes: fc.weight: " + str(dtype))


def test_float_where_the_model_has_integers(tmp_path, state):
    s = {**state, "bn1.num_batches_tracked": torch.tensor(3.0)}
    refused(save(s, tmp_path / "w", "safetensors"), "bn1.num_batches_tracked: torch.float32 where the model has "
                                                     "torch.int64")


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1), (torch.float64, 1e-6)])
def test_other_float_precisions_are_converted(tmp_path, state, probe, dtype, atol):
    """The documented conversion: floating weights of another precision are cast to the model's float32."""
    s = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    clf = robustkit.create_classifier(TINY, checkpoint=save(s, tmp_path / "w", "zip"))
    assert all(p.dtype == torch.float32 for p in clf.parameters())
    x, ref = probe
    torch.testing.assert_close(clf(x), ref, atol=atol, rtol=0)


def test_a_refused_load_leaves_the_module_as_it_was(state):
    module = robustkit.create_classifier(TINY, pretrained=True).net
    before = copy.deepcopy(module.state_dict())
    bad = {k: v.clone() for k, v in state.items()}
    bad["fc.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        hub.load_strict(module, bad, source="test")
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -------------------------------------------------------------------------------------------- files

@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file_names_the_cause(tmp_path, state, fmt):
    good = save(state, tmp_path / "good", fmt)
    for frac in (0.1, 0.5, 0.97):
        cut = tmp_path / f"cut_{frac}{good.suffix}"
        cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * frac)])
        refused(cut, "cannot read checkpoint", "truncated")


def test_unreadable_files(tmp_path):
    cases = {"empty.pt": (b"", "the file is empty"),
             "text.pt": (b'{"not": "a checkpoint"}' * 4, "not a PyTorch (zip or legacy pickle) or safetensors file"),
             "random.safetensors": (random.Random(0).randbytes(4096), "cannot read checkpoint")}
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        refused(tmp_path / name, match)


def test_pickled_objects_get_robustkits_own_message(tmp_path):
    path = tmp_path / "module.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, path)
    msg = refused(path, "Unpickling refused", "torch.nn.modules.linear.Linear", "state dict of tensors")
    assert "Re-running" not in msg and "trust" not in msg


def test_adapter_layout_errors_are_typed(tmp_path):
    # resnet20.cifar10's adapter strips 'module.' from the keys of state['state_dict']
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": {1: torch.zeros(1)}}, path)
    refused(path, "layout this model's adapter expects", name="resnet20.cifar10")


def test_score_model_and_score_sde_loaders_refuse_nan(tmp_path):
    from robustkit.diffusion import create_score_model
    from robustkit.diffusion.ncsnpp import NCSNpp
    from robustkit.diffusion.score_sde import ScoreSDEConfig, ScoreSDEDataConfig, ScoreSDEModelConfig, load_score_sde

    model = create_score_model("tiny_unet.digits", pretrained=True)
    s = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in s.items() if v.is_floating_point() and v.numel() > 1)
    s[key].view(-1)[1] = float("inf")
    path = save(s, tmp_path / "unet", "safetensors")
    with pytest.raises(CheckpointError, match=f"NaN/Inf values: {key}: 0 NaN, 1 infinite"):
        create_score_model("tiny_unet.digits", checkpoint=path)

    cfg = ScoreSDEConfig(model=ScoreSDEModelConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
                         data=ScoreSDEDataConfig(image_size=8))
    net = NCSNpp(cfg, generator=torch.Generator().manual_seed(0))
    shadow = [p.detach().clone() for p in net.parameters()]
    shadow[2].view(-1)[0] = float("nan")
    ckpt = {"model": {"module." + k: v for k, v in net.state_dict().items()},
            "ema": {"decay": 0.9999, "num_updates": 1, "shadow_params": shadow}, "step": 1}
    torch.save(ckpt, tmp_path / "sde.pth")
    with pytest.raises(CheckpointError, match=r"\['ema'\]\['shadow_params'\] .*NaN/Inf values: .*1 NaN"):
        load_score_sde(tmp_path / "sde.pth", config=cfg)


# --------------------------------------------------------------------------------------------- fuzz

CONVERSIONS = (torch.float16, torch.bfloat16, torch.float64)


def _mutate(rng: random.Random, state: dict, tmp: Path, i: int) -> tuple[str, Path, bool]:
    """(category, file, converted?) for one seeded bad checkpoint."""
    s = {k: v.clone() for k, v in state.items()}
    fmt = rng.choice(FORMATS)
    floats = sorted(k for k, v in s.items() if v.is_floating_point())
    cat = rng.choice(["truncation", "garbage bytes", "NaN/Inf", "wrong dtype", "wrong shape", "wrong keys",
                      "non-tensor values", "not a state dict", "pickled objects", "other precision"])
    base = tmp / f"case_{i:04d}"
    if cat == "truncation":
        good = save(s, base, fmt)
        data = good.read_bytes()
        good.write_bytes(data[: rng.randrange(0, len(data))])
        return cat, good, False
    if cat == "garbage bytes":
        path = base.with_suffix(rng.choice([".pt", ".pth", ".safetensors", ".bin"]))
        path.write_bytes(rng.randbytes(rng.randrange(1, 5000)))
        return cat, path, False
    if cat == "NaN/Inf":
        k = rng.choice(floats)
        s[k].view(-1)[rng.randrange(s[k].numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
    elif cat == "wrong dtype":
        k = rng.choice(sorted(s))
        if s[k].is_floating_point():
            s[k] = s[k].to(rng.choice([torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64]))
        else:
            s[k] = s[k].to(rng.choice([torch.float32, torch.float16, torch.bool, torch.complex64]))
        if fmt == "safetensors" and s[k].is_complex():
            fmt = "zip"  # safetensors has no complex dtype
    elif cat == "wrong shape":
        k = rng.choice(floats)
        s[k] = rng.choice([s[k].flatten()[:-1], s[k].unsqueeze(0), torch.zeros(*(d + 1 for d in s[k].shape))])
    elif cat == "wrong keys":
        k = rng.choice(sorted(s))
        kind = rng.choice(["drop", "add", "rename"])
        if kind == "drop":
            del s[k]
        elif kind == "add":
            s["extra." + k] = s[k].clone()
        else:
            s[k.replace(".", "_", 1)] = s.pop(k)
    else:
        if fmt == "safetensors":
            fmt = rng.choice(["zip", "legacy"])  # safetensors cannot hold these
        if cat == "non-tensor values":
            s[rng.choice(sorted(s))] = rng.choice([1.5, "weights", [1, 2], None, {"a": torch.zeros(1)}])
        elif cat == "not a state dict":
            s = rng.choice([list(s.values()), torch.zeros(3), "weights", 7, {1: torch.zeros(1), 2: torch.ones(1)}])
        elif cat == "pickled objects":
            s = {"model": torch.nn.Linear(2, 2)} if rng.random() < 0.5 else {**s, "extra": _Opaque()}
        else:  # other precision: the documented conversion
            dtype = rng.choice(CONVERSIONS)
            s = {k: v.to(dtype) if v.is_floating_point() else v for k, v in s.items()}
            return cat, save(s, base, fmt), True
    return cat, save(s, base, fmt), False


class _Opaque:
    """A pickled object of a class torch's weights-only unpickler does not allow."""


def test_fuzz_checkpoint_files(tmp_path, state, probe):
    """400 seeded bad checkpoint files: a one-line CheckpointError naming the file, or the documented
    precision conversion (which must still give the model's outputs); 0 raw tracebacks, 0 silent acceptances."""
    rng = random.Random(0)
    figures: dict[str, dict[str, int]] = {}
    x, ref = probe
    for i in range(400):
        cat, path, conversion = _mutate(rng, state, tmp_path, i)
        fig = figures.setdefault(cat, {"tried": 0, "typed": 0, "converted": 0})
        fig["tried"] += 1
        try:
            clf = robustkit.create_classifier(TINY, checkpoint=path)
        except CheckpointError as e:
            msg = str(e)
            assert not conversion, f"case {i} ({cat}): the documented conversion was refused: {msg}"
            assert "\n" not in msg and str(path) in msg and "weights_only" not in msg, f"case {i} ({cat}): {msg!r}"
            fig["typed"] += 1
            continue
        except RobustkitError as e:
            raise AssertionError(f"case {i} ({cat}): {type(e).__name__} instead of CheckpointError: {e}") from e
        except Exception as e:  # noqa: BLE001 - a raw traceback is the defect this fuzz looks for
            raise AssertionError(f"case {i} ({cat}): raw {type(e).__name__}: {e}") from e
        assert conversion, f"case {i} ({cat}): {path.name} silently accepted"
        torch.testing.assert_close(clf(x), ref, atol=1e-1, rtol=0)
        fig["converted"] += 1
    print("checkpoint fuzz (tried/typed/converted):", {k: tuple(v.values()) for k, v in sorted(figures.items())})
    assert len(figures) == 10 and sum(f["tried"] for f in figures.values()) == 400
    assert sum(f["converted"] for f in figures.values()) == figures["other precision"]["tried"]


def test_pickle_protocol_2_file_is_refused_without_running_code(tmp_path):
    path = tmp_path / "p2.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Opaque()}, f, protocol=2)
    refused(path, "cannot read checkpoint")


def test_training_checkpoint_and_diffusers_config_name_the_cause(tmp_path, state):
    from robustkit.diffusion.diffusers_loader import _read_json
    from robustkit.diffusion.train import _load_checkpoint

    good = save({"format": "x", **state}, tmp_path / "checkpoint", "zip")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        _load_checkpoint(cut)
    assert "weights_only" not in str(exc.value) and str(cut) in str(exc.value)
    config = tmp_path / "config.json"
    config.write_text('{"_class_name": "UNet2DModel", "sample_size": 3')
    with pytest.raises(CheckpointError, match=r"config\.json: truncated"):
        _read_json(config)


def test_training_resume_refuses_nan_weights(tmp_path):
    """A training checkpoint whose EMA weights hold a NaN is refused on resume, not trained on."""
    import importlib

    from robustkit.diffusion import UNetConfig
    from robustkit.diffusion.train import DiffusionTrainConfig

    train = importlib.import_module("robustkit.diffusion.train").train
    cfg = DiffusionTrainConfig(model=UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
                                                num_res_blocks=1, attention_resolutions=(4,), num_groups=4,
                                                num_classes=10),
                               dataset="digits", n_examples=32, steps=4, batch_size=16, seed=0)
    out = tmp_path / "run"
    train(cfg, out, checkpoint_every=2, stop_after=2, samples_per_class=1, sample_steps=2, progress=False)
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state["ema"].items() if v.is_floating_point())
    state["ema"][key].view(-1)[0] = float("nan")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=rf"\['ema'\] does not match .*NaN/Inf values: {key}: 1 NaN"):
        train(cfg, out, checkpoint_every=2, samples_per_class=1, sample_steps=2, progress=False)
