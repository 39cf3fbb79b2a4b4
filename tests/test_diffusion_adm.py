"""ADM UNet (guided-diffusion): published key layout, reference outputs, time mapping, fp16, loader errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import perturbed
from robustkit.diffusion.adm import (ADM_CONFIGS, ADMConfig, ADMScoreModel, ADMUNet, adm_config,
                                     continuous_time_to_step, load_guided_diffusion)
from robustkit.diffusion.adm_layers import AttentionBlock, GroupNorm32, ResBlock, timestep_embedding
from robustkit.diffusion.schedule import DiscreteVPSchedule
from robustkit.diffusion.solvers import ddim
from robustkit.errors import CheckpointError, InputError
from robustkit.hub import file_digest

TINY = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(4,),
                 num_head_channels=16)


@pytest.fixture(scope="module")
def spec_dir(shared_dir: Path) -> Path:
    path = shared_dir / "specs" / "guided_diffusion_256x256_uncond"
    if not path.is_dir():
        pytest.fail(f"{path} is missing from the shared folder")
    return path


@pytest.fixture(scope="module")
def vectors(spec_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(spec_dir / "vectors.safetensors"))


@pytest.fixture(scope="module")
def small_model(spec_dir: Path) -> ADMScoreModel:
    return load_guided_diffusion(spec_dir / "small_model.pt", "spec_small")


def _keys_tsv(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, _kind = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")) if shape else (), dtype))
    return rows


# --------------------------------------------------------------------------- published layout


def test_full_config_matches_published_keys_on_meta(spec_dir):
    rows = _keys_tsv(spec_dir / "keys.tsv")
    with torch.device("meta"):
        net = ADMUNet(adm_config("imagenet256_uncond"))
    sd = net.state_dict()
    assert len(sd) == len(rows) == 566
    for (key, tensor), (ref_key, ref_shape, ref_dtype) in zip(sd.items(), rows):
        assert key == ref_key
        assert tuple(tensor.shape) == ref_shape, key
        assert str(tensor.dtype).removeprefix("torch.") == ref_dtype, key
    assert sum(p.numel() for p in net.parameters()) == 552_814_086
    assert not list(net.buffers())


def test_full_config_block_inventory_and_heads(spec_dir):
    derived = json.loads((spec_dir / "config.json").read_text())["derived"]
    with torch.device("meta"):
        net = ADMUNet(ADM_CONFIGS["imagenet256_uncond"])
    assert [[type(m).__name__ for m in b] for b in net.input_blocks] == derived["input_blocks"]
    assert [type(m).__name__ for m in net.middle_block] == derived["middle_block"]
    assert [[type(m).__name__ for m in b] for b in net.output_blocks] == derived["output_blocks"]
    attn = {name: m for name, m in net.named_modules() if isinstance(m, AttentionBlock)}
    assert sorted(attn) == sorted(a["module"] for a in derived["attention_blocks"])
    for a in derived["attention_blocks"]:
        block = attn[a["module"]]
        assert block.num_heads == a["num_heads"]
        assert block.qkv.in_channels == a["channels"]
        assert block.legacy_order
    assert all(m.eps == 1e-5 and m.num_groups == 32 for m in net.modules() if isinstance(m, GroupNorm32))


def test_from_flags_reproduces_named_configs(spec_dir):
    full = json.loads((spec_dir / "config.json").read_text())["flags"]
    assert ADMConfig.from_flags(**full) == ADM_CONFIGS["imagenet256_uncond"]
    assert ADMConfig.from_flags(**full).attention_ds == (8, 16, 32)
    small = json.loads((spec_dir / "small_meta.json").read_text())["small_flags"]
    assert ADMConfig.from_flags(**small) == ADM_CONFIGS["spec_small"]
    assert ADMConfig.from_flags(**{**full, "class_cond": True}) == ADM_CONFIGS["imagenet256_cond"]


def test_from_flags_rejects_unknown_and_non_eps_models():
    with pytest.raises(InputError, match="unknown guided-diffusion flag"):
        ADMConfig.from_flags(num_chanels=256)
    with pytest.raises(InputError, match="predict_xstart"):
        ADMConfig.from_flags(predict_xstart=True)
    with pytest.raises(InputError, match="linear"):
        ADMConfig.from_flags(noise_schedule="cosine")
    with pytest.raises(InputError, match="channel_mult"):
        ADMConfig.from_flags(image_size=48)


def test_conditional_config_adds_label_embedding_only():
    with torch.device("meta"):
        uncond = ADMUNet(ADM_CONFIGS["imagenet256_uncond"]).state_dict()
        cond = ADMUNet(ADM_CONFIGS["imagenet256_cond"]).state_dict()
    keys = list(cond)
    assert keys[4] == "label_emb.weight" and tuple(cond["label_emb.weight"].shape) == (1000, 1024)
    assert keys[:4] + keys[5:] == list(uncond)


def test_config_validation():
    with pytest.raises(InputError, match="multiple of 32"):
        ADMConfig(image_size=8, model_channels=48, channel_mult=(1,), attention_resolutions=())
    with pytest.raises(InputError, match="divisible"):
        ADMConfig(image_size=10, model_channels=32, channel_mult=(1, 1, 1), attention_resolutions=())
    with pytest.raises(InputError, match="heads"):
        ADMConfig(image_size=8, model_channels=32, channel_mult=(1,), attention_resolutions=(8,), num_head_channels=24)
    with pytest.raises(InputError, match="unknown ADM config"):
        adm_config("imagenet512")


# --------------------------------------------------------------------------- reference numerics


def test_small_model_reproduces_reference_outputs(small_model, vectors):
    out = small_model.unet(vectors["x"], vectors["timesteps"])
    assert out.shape == (4, 6, 32, 32)
    torch.testing.assert_close(out, vectors["out"], atol=1e-5, rtol=1e-5)
    # Float timesteps are cast inside, so they give the same output (a different batch size may
    # pick another conv algorithm: equal up to float32 rounding, not bit for bit).
    out_f = small_model.unet(vectors["x"][:2], vectors["timesteps"][:2].float())
    torch.testing.assert_close(out_f, out[:2], atol=1e-5, rtol=1e-5)


def test_small_model_matches_spec_counts(small_model, spec_dir):
    meta = json.loads((spec_dir / "small_meta.json").read_text())
    sd = small_model.unet.state_dict()
    assert len(sd) == meta["small_num_state_dict_keys"]
    assert sum(t.numel() for t in sd.values()) == meta["small_total_params"]
    # The adapter's own state dict only adds the "unet." prefix.
    assert list(small_model.state_dict()) == [f"unet.{k}" for k in sd]


def test_score_model_returns_eps_channels_at_diffpure_steps(small_model, vectors):
    steps = vectors["timesteps"]
    t = steps.double() / 1000  # 0, 0.25, 0.5, 0.999 -> the reference steps under float32 truncation
    assert small_model.timestep_labels(t).tolist() == steps.tolist()
    eps = small_model(vectors["x"], t.float())
    assert eps.shape == (4, 3, 32, 32) and eps.dtype == torch.float32
    torch.testing.assert_close(eps, vectors["out"][:, :3], atol=1e-5, rtol=1e-5)
    # float64 inputs: same numbers, float64 result.
    eps64 = small_model(vectors["x"][2:].double(), t[2:])
    assert eps64.dtype == torch.float64
    torch.testing.assert_close(eps64.float(), eps[2:], atol=1e-5, rtol=1e-5)


def test_sensitivity_to_the_time_label(small_model, vectors):
    """Feeding t ∈ [0,1] instead of the integer step (a classic bug) must change the output a lot."""
    wrong = small_model.unet(vectors["x"][1:3], vectors["timesteps"][1:3].float() / 1000)
    assert (wrong - vectors["out"][1:3]).abs().max() > 1e-2


def test_time_mapping_is_float32_truncation():
    t = torch.tensor([0.0, 1e-5, 0.000999, 0.001, 0.15, 0.5, 0.9995, 1.0], dtype=torch.float64)
    assert continuous_time_to_step(t).tolist() == [0, 0, 0, 1, 150, 500, 999, 1000]
    # The product is rounded in float32 before truncation (DiffPure's t.float() * N).
    t32 = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    expected = torch.floor(t32 * torch.tensor(1000.0)).long()
    assert torch.equal(continuous_time_to_step(t32.double()), expected)
    assert continuous_time_to_step(torch.tensor([0.5]), num_timesteps=4000).tolist() == [2000]


def test_timestep_embedding_formula():
    steps = torch.tensor([0, 3, 999])
    emb = timestep_embedding(steps, 8)
    i = torch.arange(4, dtype=torch.float64)
    args = steps[:, None].double() * torch.exp(-torch.log(torch.tensor(1e4, dtype=torch.float64)) * i / 4)
    torch.testing.assert_close(emb.double(), torch.cat([args.cos(), args.sin()], dim=1), atol=1e-4, rtol=0)
    assert timestep_embedding(steps, 7).shape == (3, 7) and torch.all(timestep_embedding(steps, 7)[:, -1] == 0)


# --------------------------------------------------------------------------- gradients


def test_input_gradient_matches_finite_differences():
    # float64 end to end (GroupNorm and softmax keep float64), so central differences are accurate.
    model = ADMScoreModel(perturbed(ADMUNet(TINY), scale=0.02)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.9], dtype=torch.float64)

    def loss(inp):
        return (model(inp, t) * weight).sum()

    (grad,) = torch.autograd.grad(loss(x), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    h = 1e-5
    with torch.no_grad():
        fd = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    analytic = (grad * direction).sum()
    assert abs(analytic - fd) <= 1e-6 * max(1.0, abs(fd))


def test_gradients_flow_in_float32_from_loaded_model(small_model, vectors):
    x = vectors["x"][:1].clone().requires_grad_(True)
    small_model(x, 0.15).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in small_model.parameters())


# --------------------------------------------------------------------------- fp16


def _torso_convs(net: ADMUNet):
    for part in (net.input_blocks, net.middle_block, net.output_blocks):
        yield from (m for m in part.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)))


def test_fp16_conversion_sets_guided_diffusion_dtypes(spec_dir, vectors):
    model = load_guided_diffusion(spec_dir / "small_model.pt", "spec_small", fp16=True)
    net = model.unet
    convs = {id(p) for m in _torso_convs(net) for p in m.parameters()}
    assert convs
    for name, p in net.named_parameters():
        expected = torch.float16 if id(p) in convs else torch.float32
        assert p.dtype == expected, name
    assert net.torso_dtype == torch.float16
    assert all(m.weight.dtype == torch.float32 for m in net.modules() if isinstance(m, GroupNorm32))
    assert all(b.emb_layers[1].weight.dtype == torch.float32 for b in net.modules() if isinstance(b, ResBlock))
    assert net.out[2].weight.dtype == net.time_embed[0].weight.dtype == torch.float32

    # torch >= 2.x runs float16 convolutions on CPU: outputs stay close to the fp32 reference.
    idx = torch.tensor([3])  # t = 999: the largest time label (fp16 CPU convs are slow, one image)
    eps = model(vectors["x"][idx], vectors["timesteps"][idx].float() / 1000)
    assert eps.dtype == torch.float32
    err = (eps - vectors["out"][idx, :3]).abs().max()
    assert 0 < err < 1e-2

    net.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in net.parameters())


# --------------------------------------------------------------------------- architecture variants


def test_new_attention_order_is_a_permutation_of_qkv_channels():
    torch.manual_seed(0)
    legacy = perturbed(ADMUNet(TINY), scale=0.02)
    new = ADMUNet(replace(TINY, use_new_attention_order=True)).eval()
    sd = legacy.state_dict()
    permuted = {}
    for key, value in sd.items():
        if key.endswith("qkv.weight") or key.endswith("qkv.bias"):
            heads = legacy.get_submodule(key.rsplit(".", 2)[0]).num_heads
            ch = value.shape[0] // (3 * heads)
            # legacy rows: [head][q|k|v][ch]; new rows: [q|k|v][head][ch]
            value = value.reshape(heads, 3, ch, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        permuted[key] = value
    new.load_state_dict(permuted)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([10, 700])
    torch.testing.assert_close(new(x, steps), legacy(x, steps), atol=1e-5, rtol=1e-5)
    new.load_state_dict(sd)  # unpermuted weights must give a different network
    assert (new(x, steps) - legacy(x, steps)).abs().max() > 1e-3


def test_conv_resampling_and_plain_conditioning_variant():
    cfg = ADMConfig(image_size=8, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(),
                    resblock_updown=False, use_scale_shift_norm=False, learn_sigma=False, num_heads=2,
                    num_head_channels=-1)
    net = perturbed(ADMUNet(cfg), scale=0.02)
    keys = list(net.state_dict())
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.1.conv.weight" in keys
    assert tuple(net.state_dict()["input_blocks.1.0.emb_layers.1.weight"].shape) == (32, 128)
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    eps = ADMScoreModel(net)(torch.randn(2, 3, 8, 8), 0.5)
    assert eps.shape == (2, 3, 8, 8)


def test_class_conditional_model_uses_labels():
    net = perturbed(ADMUNet(replace(TINY, num_classes=5)), scale=0.02)
    model = ADMScoreModel(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    a = model(x, 0.4, torch.tensor([0, 0]))
    b = model(x, 0.4, torch.tensor([3, 3]))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(InputError, match="pass y"):
        model(x, 0.4)
    with pytest.raises(InputError, match="class labels"):
        model(x, 0.4, torch.tensor([0, 5]))


def test_score_model_input_validation():
    model = ADMScoreModel(ADMUNet(TINY))
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(InputError, match=r"t must lie in \[0, 1.00338\]"):
        model(x, torch.tensor([0.5, 1.5]))
    with pytest.raises(InputError, match="unconditional"):
        model(x, 0.5, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="shape"):
        model(torch.zeros(2, 3, 16, 16), 0.5)
    with pytest.raises(InputError, match="timesteps"):
        model.unet(x, torch.tensor([1]))


# --------------------------------------------------------------------------- loader errors


def test_loader_reports_missing_unexpected_and_misshaped_keys(tmp_path):
    sd = perturbed(ADMUNet(TINY), scale=0.02).state_dict()
    good = tmp_path / "tiny.pt"
    torch.save(sd, good)
    model = load_guided_diffusion(good, TINY, sha256=file_digest(good))
    torch.testing.assert_close(model.unet.state_dict(), sd, atol=0, rtol=0)
    assert not model.training

    broken = dict(sd)
    del broken["out.2.bias"]
    broken["module.extra"] = torch.zeros(1)
    bad = tmp_path / "broken.pt"
    torch.save(broken, bad)
    with pytest.raises(CheckpointError, match="missing keys: out.2.bias.*unexpected keys: module.extra"):
        load_guided_diffusion(bad, TINY)

    wider = replace(TINY, model_channels=64)
    with pytest.raises(CheckpointError, match="shape mismatches: time_embed.0.weight"):
        load_guided_diffusion(good, wider)


def test_loader_checks_digest_and_existence(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(ADMUNet(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_guided_diffusion(path, TINY, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        load_guided_diffusion(tmp_path / "absent.pt", TINY)
    with pytest.raises(InputError, match="unknown ADM config"):
        load_guided_diffusion(path, "tiny")


def test_discrete_solvers_from_pure_noise_run_on_the_adm(small_model):
    """DDIM/DDPM from the last step pass t = time_of(999) ≈ 1.0034 (the discrete ᾱ ends below the
    continuous one): accepted, labelled as the last trained step; anything beyond is refused."""
    sched = DiscreteVPSchedule()
    t_last = sched.time_of(999)
    assert 1.0 < t_last == pytest.approx(small_model.max_time)
    assert small_model.timestep_labels(torch.tensor([1.0, t_last])).tolist() == [999, 999]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ddim(small_model, sched, x, 999, steps=2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(InputError, match="t must lie in"):
        small_model(x, torch.tensor([t_last + 1e-3]))
