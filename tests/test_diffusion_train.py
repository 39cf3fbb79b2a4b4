"""Training score models (U-Net, DiT, DiffuSSM): loss, exact resumption, atomic checkpoints, CLI, registry,
bundled weights."""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import robustkit
from robustkit.cli import main
from robustkit.diffusion import (DiffuSSM, DiffusionTrainConfig, DiT, UNet, UNetConfig, create_score_model,
                                 denoising_loss, list_score_models, load_trained, loss_per_t, score_model_config,
                                 train)
from robustkit.errors import CheckpointError, InputError, RegistryError

# `robustkit.diffusion.train` is the function; the module is reached through importlib.
train_module = importlib.import_module("robustkit.diffusion.train")

TINY = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(4,), num_groups=4, num_classes=10, dropout=0.1)
CFG = DiffusionTrainConfig(model=TINY, dataset="digits", n_examples=96, steps=12, batch_size=16, lr=2e-3,
                           warmup_steps=3, lr_schedule="cosine", ema_decay=0.9, p_uncond=0.2, hflip=True, seed=3)
FAST = dict(samples_per_class=1, sample_steps=2, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add contention


def _tensors(state) -> dict:
    """Flatten a nested state (dicts of tensors, lists, numbers) into {path: value} for exact comparison."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, w in v.items():
                walk(f"{prefix}/{k}", w)
        elif isinstance(v, (list, tuple)):
            for i, w in enumerate(v):
                walk(f"{prefix}/{i}", w)
        else:
            out[prefix] = v

    walk("", state)
    return out


def _assert_same_state(a: Path, b: Path) -> None:
    sa = _tensors(torch.load(a, weights_only=True))
    sb = _tensors(torch.load(b, weights_only=True))
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------- train

def test_training_loss_decreases(tmp_path):
    cfg = replace(CFG, steps=60, n_examples=128, batch_size=32, lr=3e-3, warmup_steps=0, lr_schedule="constant",
                  p_uncond=0.1, hflip=False, model=replace(TINY, dropout=0.0))
    result = train(cfg, tmp_path, samples_per_class=0, progress=False)
    first, last = result.losses[:10], result.losses[-10:]
    assert len(result.losses) == 60 and result.finished
    assert sum(last) / 10 < 0.75 * sum(first) / 10, (first, last)
    # the EMA model denoises better than predicting zero, measured on held-out digits
    x, y = robustkit.load_dataset("digits", split="test", n_examples=128)
    g = torch.Generator().manual_seed(0)
    ours = denoising_loss(result.model, x * 2 - 1, 0.5, y=y, generator=g).mean()
    g = torch.Generator().manual_seed(0)
    zero = denoising_loss(lambda a, t, c: torch.zeros_like(a), x * 2 - 1, 0.5, generator=g).mean()
    assert ours < 0.9 * zero


def test_outputs_and_sample_grid(tmp_path):
    from PIL import Image

    result = train(replace(CFG, steps=2), tmp_path, **FAST)
    assert result.finished and result.step == 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.pt", "ema.safetensors", "samples.png", "train_config.json"]
    img = Image.open(result.samples_path)
    assert img.mode == "L" and img.size == (1 * (32 + 1) + 1, 10 * (32 + 1) + 1)  # 1 per class, ×4
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert DiffusionTrainConfig.from_dict(saved) == replace(CFG, steps=2)
    assert not any(p.requires_grad for p in result.model.parameters()) and not result.model.training


def _train_killed_in_step(step: int, cfg, out, monkeypatch, *, checkpoint_every: int):
    """Train into ``out`` and die (KeyboardInterrupt) in step ``step``, after its optimiser step and before
    its EMA update; returns ``out``."""
    calls = {"n": 0}
    real_update = train_module._ema_update

    def dying_update(ema, model, decay):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        real_update(ema, model, decay)

    monkeypatch.setattr(train_module, "_ema_update", dying_update)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, checkpoint_every=checkpoint_every, **FAST)
    monkeypatch.setattr(train_module, "_ema_update", real_update)
    return out


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    full = train(CFG, tmp_path / "full", checkpoint_every=4, **FAST)

    # A run killed in the middle of step 10 (after the optimiser step, before the EMA update): the
    # checkpoint on disk is the one of step 8, and resuming replays steps 8..11 exactly.
    killed = _train_killed_in_step(10, CFG, tmp_path / "killed", monkeypatch, checkpoint_every=4)
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 8
    assert not (killed / "ema.safetensors").exists() and _no_temp_files(killed)
    resumed = train(CFG, killed, checkpoint_every=4, **FAST)
    assert resumed.step == 12 and resumed.losses == full.losses
    _assert_same_state(tmp_path / "full" / "checkpoint.pt", killed / "checkpoint.pt")
    assert (tmp_path / "full" / "ema.safetensors").read_bytes() == (killed / "ema.safetensors").read_bytes()
    assert (tmp_path / "full" / "samples.png").read_bytes() == (killed / "samples.png").read_bytes()

    # Training in chunks (stop_after not a multiple of checkpoint_every) gives the same result too.
    chunked = tmp_path / "chunked"
    first = train(CFG, chunked, checkpoint_every=4, stop_after=5, **FAST)
    assert not first.finished and first.step == 5 and first.weights_path is None
    assert train(CFG, chunked, checkpoint_every=4, stop_after=5, **FAST).step == 10
    last = train(CFG, chunked, checkpoint_every=4, **FAST)
    assert last.finished and last.losses == full.losses
    _assert_same_state(tmp_path / "full" / "checkpoint.pt", chunked / "checkpoint.pt")


def test_a_finished_run_returns_its_files_without_data_training_or_sampling(tmp_path, monkeypatch):
    done = train(CFG, tmp_path, checkpoint_every=4, **FAST)
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()}

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished run must not load data or sample again")

    monkeypatch.setattr(train_module, "_load_data", forbidden)
    monkeypatch.setattr(train_module, "sample_images", forbidden)
    again = train(CFG, tmp_path, checkpoint_every=4, **FAST)
    assert again.finished and again.step == done.step and again.losses == done.losses
    assert (again.weights_path, again.samples_path) == (done.weights_path, done.samples_path)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir()} == files  # untouched
    assert torch.equal(next(again.model.parameters()), next(done.model.parameters()))

    # Without its weights file (deleted by hand), the run exports it again from the checkpoint's EMA.
    (tmp_path / "ema.safetensors").unlink()
    assert train(CFG, tmp_path, checkpoint_every=4, **FAST).weights_path.read_bytes() == files["ema.safetensors"][1]


# ------------------------------------------------------------------------------------ the three backbones

BACKBONE_ENTRIES = {"unet": ("tiny_unet.digits", UNet), "dit": ("dit_tiny.digits", DiT),
                    "diffussm": ("diffussm_tiny.digits", DiffuSSM)}


def _small_recipe(entry: str) -> DiffusionTrainConfig:
    """The registry's digits recipe (its architecture, so the weights load into the entry), a few small steps."""
    return replace(score_model_config(entry).recipe, n_examples=64, steps=6, batch_size=16, warmup_steps=2, seed=5)


@pytest.mark.parametrize("backbone", list(BACKBONE_ENTRIES))
def test_backbone_trains_resumes_exactly_and_loads_into_registry(backbone, tmp_path, monkeypatch):
    entry, network_cls = BACKBONE_ENTRIES[backbone]
    cfg = _small_recipe(entry)
    assert cfg.backbone == backbone
    full = train(cfg, tmp_path / "full", checkpoint_every=2, **FAST)
    assert full.finished and type(full.model) is network_cls and len(full.losses) == 6
    saved = json.loads((tmp_path / "full" / "train_config.json").read_text())
    assert saved["model"]["backbone"] == backbone and "unet" not in saved
    assert DiffusionTrainConfig.from_dict(saved) == cfg
    init = train_module._build_model(cfg)
    assert any(not torch.equal(a, b) for a, b in zip(init.state_dict().values(), full.model.state_dict().values()))

    # killed in step 5 (after the optimiser step, before the EMA update): resumes from step 4's checkpoint
    killed = _train_killed_in_step(5, cfg, tmp_path / "killed", monkeypatch, checkpoint_every=2)
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = train(cfg, killed, checkpoint_every=2, **FAST)
    assert resumed.finished and resumed.losses == full.losses
    _assert_same_state(tmp_path / "full" / "checkpoint.pt", killed / "checkpoint.pt")
    assert (tmp_path / "full" / "ema.safetensors").read_bytes() == (killed / "ema.safetensors").read_bytes()

    # the saved EMA weights (and the full checkpoint) load into the registered architecture, strictly
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0, 7, 10])
    expected = full.model(x, t, y)
    for path in (full.weights_path, full.checkpoint_path):
        loaded = create_score_model(entry, checkpoint=path)
        assert type(loaded) is network_cls and torch.equal(loaded(x, t, y), expected), path
    # and the run folder alone gives the model, frozen, named after its backbone and folder
    loaded = load_trained(tmp_path / "full")
    assert type(loaded) is network_cls and torch.equal(loaded(x, t, y), expected)
    assert loaded.name == f"{backbone} (run full)" and loaded.weights_path == str(full.weights_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_load_trained_refuses_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusion training run"):
        load_trained(tmp_path)
    unfinished = train(CFG, tmp_path / "half", stop_after=4, **FAST)
    assert not unfinished.finished
    with pytest.raises(CheckpointError, match="has not finished"):
        load_trained(tmp_path / "half")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train_config.json").write_text('{"model": {"backbone": "transformer"}}')
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_trained(tmp_path / "bad")


def _to_old_format(d: dict) -> dict:
    """A config dict as the U-Net-only trainer wrote it: ``"unet": {fields}`` instead of the tagged ``"model"``."""
    d = dict(d)
    model = dict(d.pop("model"))
    assert model.pop("backbone") == "unet"
    return {"unet": model, **d}


def test_old_unet_config_format_parses_and_its_run_folder_resumes(tmp_path):
    old = json.loads(json.dumps({"unet": dataclasses.asdict(TINY),
                                 **{k: v for k, v in dataclasses.asdict(CFG).items() if k != "model"}}))
    assert DiffusionTrainConfig.from_dict(old) == CFG
    with pytest.raises(InputError, match="not both"):
        DiffusionTrainConfig.from_dict({**old, "model": CFG.to_dict()["model"]})

    # a run folder started by the old code: its checkpoint and train_config.json hold the old form
    cfg = replace(CFG, steps=4)
    run = tmp_path / "run"
    first = train(cfg, run, stop_after=2, **FAST)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"] = json.dumps(_to_old_format(json.loads(state["config"])))
    torch.save(state, run / "checkpoint.pt")
    (run / "train_config.json").write_text(json.dumps(_to_old_format(cfg.to_dict()), indent=2))
    assert DiffusionTrainConfig.from_dict(json.loads((run / "train_config.json").read_text())) == cfg
    with pytest.raises(InputError, match=r"another config \(lr"):  # a different config is still refused
        train(replace(cfg, lr=1e-3), run, **FAST)
    resumed = train(cfg, run, **FAST)
    assert resumed.finished and resumed.losses[:2] == first.losses and len(resumed.losses) == 4


def test_checkpoint_with_unreadable_config_is_a_checkpoint_error(tmp_path):
    train(replace(CFG, steps=2), tmp_path, stop_after=1, **FAST)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["config"] = json.dumps({"model": {"backbone": "transformer"}})
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="config stored in"):
        train(replace(CFG, steps=2), tmp_path, **FAST)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fail(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: write part of it, then the disk fills up
            f.write(b"partial checkpoint bytes")
            raise OSError(28, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        train(replace(CFG, steps=6), tmp_path, checkpoint_every=2, **FAST)
    monkeypatch.setattr(torch, "save", real_save)
    assert _no_temp_files(tmp_path)  # no partial file left behind
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2  # the previous one, intact
    assert train(replace(CFG, steps=6), tmp_path, checkpoint_every=2, **FAST).finished

    # a stale temporary file of a run killed mid-write is removed on resume
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half")
    train(replace(CFG, steps=6), tmp_path, checkpoint_every=2, **FAST)
    assert not stale.exists()


def test_atomic_write_keeps_old_content_on_error(tmp_path):
    target = tmp_path / "f.bin"
    train_module.atomic_write(target, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"new but incomplete")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_module.atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_training_runs_and_resumes(tmp_path):
    cfg = replace(CFG, steps=6)
    full = train(cfg, tmp_path / "a", device="cuda", checkpoint_every=3, **FAST)
    assert full.finished and all(torch.isfinite(torch.tensor(full.losses)))
    train(cfg, tmp_path / "b", device="cuda", stop_after=3, checkpoint_every=3, **FAST)
    resumed = train(cfg, tmp_path / "b", device="cuda", checkpoint_every=3, **FAST)
    assert resumed.losses[:3] == full.losses[:3] and len(resumed.losses) == 6


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(p_uncond=1.5), "p_uncond"),
    (dict(p_uncond=-0.1), "p_uncond"),
    (dict(steps=0), "steps"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(t_eps=0.0), "t_eps"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(lr_schedule="linear"), "lr_schedule"),
    (dict(beta_min=5.0, beta_max=1.0), "beta_min"),
    (dict(n_examples=0), "n_examples"),
    (dict(seed=-1), "seed"),
    (dict(model="tiny"), "model must be one of UNetConfig, DiTConfig, DiffuSSMConfig, got str"),
    (dict(model=dict(in_channels=1)), "needs a 'backbone' key"),
    (dict(model=dict(backbone="vit", in_channels=1)), "'unet', 'dit', 'diffussm'.*got 'vit'"),
    (dict(model=dict(backbone="dit", channel_mult=[1, 2])), "bad DiTConfig fields for backbone 'dit'"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        replace(CFG, **kwargs)


def test_train_errors(tmp_path):
    with pytest.raises(InputError, match="expects"):  # 3-channel U-Net on 1-channel digits
        train(replace(CFG, model=replace(TINY, in_channels=3)), tmp_path / "a", **FAST)
    with pytest.raises(InputError, match="num_classes=5"):
        train(replace(CFG, model=replace(TINY, num_classes=5)), tmp_path / "b", **FAST)
    with pytest.raises(InputError, match="stop_after"):
        train(CFG, tmp_path / "c", stop_after=0, **FAST)
    with pytest.raises(InputError, match="DiffusionTrainConfig"):
        train({"steps": 3}, tmp_path / "d")
    with pytest.raises(InputError, match="device"):
        train(CFG, tmp_path / "d", device="gpu", **FAST)
    train(replace(CFG, steps=2), tmp_path / "e", **FAST)
    with pytest.raises(InputError, match=r"another config \(lr"):
        train(replace(CFG, steps=2, lr=1e-3), tmp_path / "e", **FAST)
    with pytest.raises(InputError, match="resume=True"):
        train(replace(CFG, steps=2), tmp_path / "e", resume=False, **FAST)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        train(CFG, tmp_path / "f", **FAST)


# ----------------------------------------------------------------------------------------------------- CLI

def test_cli_trains_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train-diffusion", "tiny_unet.digits", "--out", str(out), "--steps", "3", "--batch-size", "8",
            "--n-examples", "32", "--warmup-steps", "0", "--samples-per-class", "1", "--sample-steps", "2"]
    assert main(argv + ["--stop-after", "2"]) == 0
    assert "step 2/3" in capsys.readouterr().out and not (out / "ema.safetensors").exists()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "step 3/3" in text and "ema.safetensors" in text and (out / "samples.png").is_file()
    # the final weights and the training checkpoint both load into the registered architecture
    a = create_score_model("tiny_unet.digits", checkpoint=out / "ema.safetensors")
    b = create_score_model("tiny_unet.digits", checkpoint=out / "checkpoint.pt")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a(x, 0.5, torch.tensor([1, 2])), b(x, 0.5, torch.tensor([1, 2])))


@pytest.mark.parametrize("entry", ["dit_tiny.digits", "diffussm_tiny.digits"])
def test_cli_trains_other_backbones(entry, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-diffusion", entry, "--out", str(out), "--steps", "2", "--batch-size", "8", "--n-examples",
                 "32", "--samples-per-class", "1", "--sample-steps", "2"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    saved = DiffusionTrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
    assert saved.model == score_model_config(entry).recipe.model
    model = create_score_model(entry, checkpoint=out / "ema.safetensors")
    assert model.weights_path == str(out / "ema.safetensors")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train-diffusion", "--out", str(tmp_path / "a"), "--p-uncond", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustkit train-diffusion: error: argument --p-uncond") and len(err.strip().splitlines()) == 1
    assert main(["train-diffusion", "no_such.model", "--out", str(tmp_path / "b")]) == 2
    assert "unknown score model" in capsys.readouterr().err
    assert main(["train-diffusion", "--out", str(tmp_path / "c"), "--dataset", "mnist"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ registry

def test_registry_entries():
    assert {"tiny_unet.digits", "unet.cifar10"} <= set(list_score_models())
    for name in list_score_models():
        cfg = score_model_config(name)
        assert cfg.recipe is not None and cfg.train_command, name  # every entry is trainable
        assert cfg.recipe.model.input_shape == cfg.input_shape
        assert cfg.recipe.dataset == cfg.dataset and cfg.recipe.model.num_classes == cfg.num_classes
        with torch.device("meta"):  # the architecture only, without allocating or initialising weights
            assert create_score_model(name).config == cfg.recipe.model, name
        if cfg.recipe.backbone != "unet":
            assert f"robustkit train-diffusion {name} " in cfg.train_command
            assert cfg.weights.filename in cfg.train_command and "trainer" not in cfg.notes
    with pytest.raises(RegistryError, match="unknown score model"):
        create_score_model("nope.digits")
    with pytest.raises(InputError, match="not both"):
        create_score_model("tiny_unet.digits", pretrained=True, checkpoint="x.safetensors")


def test_bundled_unet_cifar10_denoises_held_out_cifar10(shared_dir):
    model = create_score_model("unet.cifar10", pretrained=True)  # the registry checks the file's sha256
    assert model.weights_path.endswith("diffusion/weights/unet_cifar10.safetensors")
    assert sum(p.numel() for p in model.parameters()) == 2_782_563 and model.num_classes == 10
    x, y = robustkit.load_dataset("cifar10", split="test", n_examples=64, data_dir=shared_dir / "data")
    with torch.no_grad():
        rows = {r["t"]: r for r in loss_per_t(model, x * 2 - 1, y, draws=2, times=(0.1, 0.5))}
    # Measured on these 64 images × 2 draws: t = 0.1 cond 0.099; t = 0.5 cond 0.0090, uncond 0.0092 (zero ≈ 1).
    assert rows[0.1]["cond"] < 0.15 * rows[0.1]["zero"]
    assert rows[0.5]["cond"] < rows[0.5]["uncond"] < 0.02 * rows[0.5]["zero"]  # the label helps at mid t


def test_bundled_tiny_unet_digits_denoises():
    model = create_score_model("tiny_unet.digits", pretrained=True)
    cfg = score_model_config("tiny_unet.digits")
    path = Path(model.weights_path)
    assert isinstance(model, UNet) and path.stat().st_size < 1_000_000
    x, y = robustkit.load_dataset("digits", split="test")
    x0 = x * 2 - 1
    for t in (0.1, 0.5):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            ours = float(denoising_loss(model, x0, t, y=y, sde=cfg.sde, generator=g).mean())
        g = torch.Generator().manual_seed(1)  # the same noise for the zero predictor
        zero = float(denoising_loss(lambda a, tt, c: torch.zeros_like(a), x0, t, sde=cfg.sde, generator=g).mean())
        assert ours < 0.5 * zero, (t, ours, zero)
