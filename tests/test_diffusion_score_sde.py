"""score_sde NCSN++ (DDPM++ deep, continuous VP): published layout, reference vectors, strict loading, gradients.

Spec data (keys of the published ``checkpoint_8.pth``, the small random-weight checkpoint and its reference
outputs) come from ``$ROBUSTKIT_SHARED/specs/score_sde_ddpmpp_deep_vp_cifar10`` through the ``shared_dir``
fixture; tests that need them skip when it is unset. The full 106M-parameter model is only built on the
``meta`` device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from robustkit.errors import CheckpointError, InputError, RegistryError
from robustkit.diffusion.ncsnpp import AttentionBlock, BigGANResBlock, NCSNpp, geometric_sigmas, timestep_embedding
from robustkit.diffusion.score_model import ScoreModel
from robustkit.diffusion.score_sde import (ScoreSDEConfig, ScoreSDEDataConfig, ScoreSDEModelConfig,
                                          ScoreSDEScoreModel, get_score_sde_config, load_score_sde)

FULL = "cifar10_ddpmpp_deep_continuous"
SMALL = "cifar10_ddpmpp_deep_continuous_small"
ATOL_OUT = 1e-5    # vectors.md: network output reproducible to <= 5.7e-7 across thread counts
ATOL_SCORE = 1e-3  # vectors.md: the score divides by std(0.001) ~ 0.0105 and moves by <= 4e-5


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(scope="module")
def spec(shared_dir) -> Path:
    path = shared_dir / "specs" / "score_sde_ddpmpp_deep_vp_cifar10"
    if not path.is_dir():
        pytest.fail(f"spec folder missing: {path}")
    return path


@pytest.fixture(scope="module")
def vectors(spec) -> dict[str, torch.Tensor]:
    return load_file(str(spec / "vectors.safetensors"))


@pytest.fixture(scope="module")
def small_ckpt(spec) -> dict:
    return torch.load(spec / "small_checkpoint.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ema_model(spec) -> ScoreSDEScoreModel:
    return load_score_sde(spec / "small_checkpoint.pth", config=SMALL)


@pytest.fixture(scope="module")
def ema_eps(ema_model, vectors) -> torch.Tensor:
    """The adapter's output on the reference inputs, computed once for the module."""
    with torch.no_grad():  # the test's choice; the library never disables grad itself
        return ema_model(vectors["x"], vectors["t"])


@pytest.fixture(scope="module")
def full_meta() -> NCSNpp:
    return NCSNpp(get_score_sde_config(FULL), device="meta")


def tiny_config(**model_overrides) -> ScoreSDEConfig:
    """A fast config of the same code path: 8x8 images, two levels, attention at 4x4."""
    model = ScoreSDEModelConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    model = dataclasses.replace(model, **model_overrides)
    return ScoreSDEConfig(model=model, data=ScoreSDEDataConfig(image_size=8))


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]


def shape_of(field: str) -> tuple[int, ...]:
    return tuple(int(s) for s in field.split("x")) if field else ()


def save(tmp_path: Path, ckpt: dict, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def copy_ckpt(ckpt: dict) -> dict:
    """Shallow-copies the containers so a test can edit entries without touching the module fixture."""
    return {"model": dict(ckpt["model"]),
            "ema": {**ckpt["ema"], "shadow_params": list(ckpt["ema"]["shadow_params"])},
            "step": ckpt["step"]}


# ------------------------------------------------------------------ configs

def test_configs_equal_the_published_and_spec_configs(spec):
    published = json.loads((spec / "config.json").read_text())["config"]
    small = json.loads((spec / "small_meta.json").read_text())["small_config"]
    assert get_score_sde_config(FULL).to_dict() == published
    assert get_score_sde_config(SMALL).to_dict() == small
    assert ScoreSDEConfig.from_dict(published) == get_score_sde_config(FULL)
    assert get_score_sde_config(FULL) == ScoreSDEConfig()  # the dataclass defaults are the paper's


def test_config_lookup_and_parsing_errors():
    with pytest.raises(RegistryError, match="unknown score_sde config"):
        get_score_sde_config("cifar10_ddpmpp_shallow")
    with pytest.raises(InputError, match="unknown fields"):
        ScoreSDEConfig.from_dict({"model": {"nf": 128, "not_a_field": 1}})
    with pytest.raises(InputError, match="unknown score_sde config sections"):
        ScoreSDEConfig.from_dict({"modle": {}})


# ------------------------------------------------------------------ published layout (meta device)

def test_full_config_state_dict_matches_published_keys_in_order(spec, full_meta):
    rows = read_tsv(spec / "keys.tsv")
    assert len(rows) == 957
    params = dict(full_meta.named_parameters())
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), "param" if k in params else "buffer")
            for k, v in full_meta.state_dict().items()]
    published = [(key.removeprefix("module."), shape_of(shape), dtype, kind) for key, shape, dtype, kind in rows]
    assert ours == published
    assert sum(p.numel() for p in full_meta.parameters()) == 106_632_579
    assert all(p.device.type == "meta" for p in full_meta.parameters())


def test_full_config_parameter_order_is_the_ema_order(spec, full_meta):
    rows = read_tsv(spec / "ema_param_order.txt")
    assert [(int(i), name, shape_of(shape)) for i, name, shape in rows] == \
        [(i, name, tuple(p.shape)) for i, (name, p) in enumerate(full_meta.named_parameters())]
    assert len(rows) == 956


def test_full_config_module_inventory(spec, full_meta):
    derived = json.loads((spec / "config.json").read_text())["derived"]
    names = {nn.Linear: "Linear", nn.Conv2d: "Conv2d", nn.GroupNorm: "GroupNorm",
             BigGANResBlock: "ResnetBlockBigGANpp", AttentionBlock: "AttnBlockpp"}
    assert [names[type(m)] for m in full_meta.all_modules] == derived["all_modules_types"]
    assert [i for i, m in enumerate(full_meta.all_modules) if isinstance(m, AttentionBlock)] == \
        derived["attn_block_indices"]
    blocks = [m for m in full_meta.all_modules if isinstance(m, BigGANResBlock)]
    assert sum(hasattr(b, "Conv_2") for b in blocks) == 43 and len(blocks) == 76
    # GroupNorm groups are min(C // 4, 32) with eps 1e-6 everywhere (32 groups in the full model).
    norms = [m for m in full_meta.modules() if isinstance(m, nn.GroupNorm)]
    assert {(g.num_groups, g.eps) for g in norms} == {(32, 1e-6)}


def test_small_config_group_norm_groups_and_counts(small_ckpt):
    net = NCSNpp(get_score_sde_config(SMALL), device="meta")
    groups = {(g.num_channels, g.num_groups) for g in net.modules() if isinstance(g, nn.GroupNorm)}
    assert (16, 4) in groups and (32, 8) in groups  # hard-coding 32 groups would fail here
    assert len(net.state_dict()) == 369 and sum(p.numel() for p in net.parameters()) == 622_995
    assert [k.removeprefix("module.") for k in small_ckpt["model"]] == list(net.state_dict())


def test_sigmas_buffer_is_built_exactly(small_ckpt):
    cfg = get_score_sde_config(SMALL).model
    built = geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_scales)
    assert built.dtype == torch.float64
    # Equal to the published buffer up to numpy's exp (bit-exact on the machine that made the spec).
    torch.testing.assert_close(built, small_ckpt["model"]["module.sigmas"], rtol=1e-15, atol=0)
    assert math.isclose(built[0], 50.0, rel_tol=1e-15) and math.isclose(built[-1], 0.01, rel_tol=1e-15)


def test_timestep_embedding_math():
    t = torch.tensor([0.0, 0.999, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([1e4 ** (-i / 3) for i in range(4)], dtype=torch.float64)  # divisor half - 1 = 3
    args = t.double()[:, None] * freqs
    expected = torch.cat([torch.sin(args), torch.cos(args)], dim=1).float()  # sin first, then cos
    # float32 arguments near 999 carry ~6e-5 rounding; a wrong order/divisor is off by O(1).
    torch.testing.assert_close(emb, expected, rtol=0, atol=2e-4)
    assert timestep_embedding(t, 9).shape == (3, 9) and (timestep_embedding(t, 9)[:, -1] == 0).all()


# ------------------------------------------------------------------ reference vectors

def test_ema_weights_reproduce_reference_output(ema_model, ema_eps, vectors):
    x, t, labels = vectors["x"], vectors["t"], vectors["labels"]
    assert torch.equal(t * ScoreSDEScoreModel.TIME_LABEL_SCALE, labels)  # 999 t in float32, not rounded
    assert not ema_model.training and ema_model.num_classes is None
    eps = ema_eps
    assert (eps - vectors["out"]).abs().max() <= ATOL_OUT
    # Derived score of score_sde's get_score_fn: -eps / std(t) with the VP marginal std.
    b0, b1 = ema_model.beta_min, ema_model.beta_max
    std = torch.sqrt(1 - torch.exp(-0.5 * t**2 * (b1 - b0) - t * b0))
    torch.testing.assert_close(std, vectors["std"], rtol=1e-6, atol=1e-7)
    score = -eps / std[:, None, None, None]
    assert (score - vectors["score"]).abs().max() <= ATOL_SCORE
    # The raw network with the labels gives the same; feeding t instead of 999 t is off by ~0.22.
    with torch.no_grad():
        assert (ema_model.network(x[:1], labels[:1]) - vectors["out"][:1]).abs().max() <= ATOL_OUT
        assert (ema_model.network(x[:1], t[:1]) - vectors["out"][:1]).abs().max() > 0.05


def test_use_ema_false_loads_raw_model_weights(spec, vectors, ema_model, ema_eps):
    raw = load_score_sde(spec / "small_checkpoint.pth", config=SMALL, use_ema=False)
    with torch.no_grad():
        out = raw(vectors["x"], vectors["t"])
    assert (out - vectors["out_raw"]).abs().max() <= ATOL_OUT
    assert (out - ema_eps).abs().max() > 0.1  # it really is the other weight set
    ema_w = ema_model.network.all_modules[0].weight
    assert not torch.equal(raw.network.all_modules[0].weight, ema_w)


def test_scalar_time_broadcasts():
    model = ScoreSDEScoreModel(NCSNpp(tiny_config(), generator=torch.Generator().manual_seed(0))).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.5), model(x, torch.full((2,), 0.5)), rtol=0, atol=0)


# ------------------------------------------------------------------ checkpoint errors

def test_renamed_key_is_named_in_the_error(tmp_path, small_ckpt):
    ckpt = copy_ckpt(small_ckpt)
    ckpt["model"]["module.all_modules.5.Conv_9.weight"] = ckpt["model"].pop("module.all_modules.5.Conv_0.weight")
    with pytest.raises(CheckpointError) as err:
        load_score_sde(save(tmp_path, ckpt), config=SMALL)
    assert "missing keys: all_modules.5.Conv_0.weight" in str(err.value)
    assert "unexpected keys: all_modules.5.Conv_9.weight" in str(err.value)


def test_misshaped_key_is_named_in_the_error(tmp_path, small_ckpt):
    ckpt = copy_ckpt(small_ckpt)
    ckpt["model"]["module.all_modules.7.NIN_0.W"] = torch.zeros(32, 31)  # first attention block (16x16)
    with pytest.raises(CheckpointError, match=r"all_modules\.7\.NIN_0\.W: checkpoint \(32, 31\) vs model \(32, 32\)"):
        load_score_sde(save(tmp_path, ckpt), config=SMALL)


def test_checkpoint_of_another_config_is_rejected(spec):
    other = dataclasses.replace(get_score_sde_config(SMALL),
                                model=dataclasses.replace(get_score_sde_config(SMALL).model, nf=32))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_score_sde(spec / "small_checkpoint.pth", config=other)


@pytest.mark.parametrize("edit, message", [
    ("drop_last", r"holds 367 tensors but the network NCSNpp has 368 parameters"),
    ("prepend_sigmas", r"holds 369 tensors"),
    ("reshape", r"\[2\] all_modules\.1\.weight: checkpoint \(64, 63\) vs model \(64, 64\)"),
    ("not_tensor", r"\[0\] all_modules\.0\.weight: not a floating tensor"),
])
def test_bad_shadow_params_raise(tmp_path, small_ckpt, edit, message):
    ckpt = copy_ckpt(small_ckpt)
    shadow = ckpt["ema"]["shadow_params"]
    if edit == "drop_last":
        shadow.pop()
    elif edit == "prepend_sigmas":  # the classic bug: pairing the EMA list with state-dict keys
        shadow.insert(0, ckpt["model"]["module.sigmas"])
    elif edit == "reshape":
        shadow[2] = torch.zeros(64, 63)
    else:
        shadow[0] = 3
    with pytest.raises(CheckpointError, match=message):
        load_score_sde(save(tmp_path, ckpt), config=SMALL)


def test_missing_entries_raise(tmp_path, small_ckpt):
    no_ema = {"model": small_ckpt["model"], "step": 1}
    with pytest.raises(CheckpointError, match=r"no ema\['shadow_params'\].*use_ema=False"):
        load_score_sde(save(tmp_path, no_ema, "no_ema.pth"), config=SMALL)
    load_score_sde(tmp_path / "no_ema.pth", config=SMALL, use_ema=False)  # raw weights still load
    bare = {k.removeprefix("module."): v for k, v in small_ckpt["model"].items()}
    with pytest.raises(CheckpointError, match="has no 'model' state dict"):
        load_score_sde(save(tmp_path, bare, "bare.pth"), config=SMALL)


def test_unreadable_or_missing_file_raises(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_score_sde(bad, config=SMALL)
    with pytest.raises(CheckpointError, match="not found"):
        load_score_sde(tmp_path / "absent.pth", config=SMALL)


def test_sha256_is_checked(spec):
    path = spec / "small_checkpoint.pth"
    with pytest.raises(CheckpointError, match="sha256"):
        load_score_sde(path, config=SMALL, sha256="0" * 64)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(load_score_sde(path, config=SMALL, sha256=digest), ScoreSDEScoreModel)


def test_full_published_format_with_optimizer_loads_weights_only(tmp_path, small_ckpt, ema_model):
    """The published file also holds an Adam state dict; it must pass ``weights_only=True``."""
    net = NCSNpp(get_score_sde_config(SMALL), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # fills exp_avg / exp_avg_sq / step for every parameter
    state = opt.state_dict()
    assert len(state["state"]) == 368
    ckpt = {**copy_ckpt(small_ckpt), "optimizer": state}
    model = load_score_sde(save(tmp_path, ckpt), config=SMALL)
    for (name, a), b in zip(model.state_dict().items(), ema_model.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------ gradients and the ScoreModel contract

def test_gradients_flow_to_x_t(ema_model, vectors):
    x = vectors["x"][:2].clone().requires_grad_(True)
    eps = ema_model(x, vectors["t"][:2])
    assert eps.grad_fn is not None
    # Image 0's output depends on image 0 only (no cross-batch mixing, e.g. in GroupNorm).
    (grad,) = torch.autograd.grad(eps[0].square().sum(), x)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0 and grad[1].abs().max() == 0


def test_input_gradient_matches_finite_differences():
    """Directional derivative of a float64 tiny model: autograd vs central differences."""
    net = NCSNpp(tiny_config(), generator=torch.Generator().manual_seed(0)).double().eval()
    # Un-zero the output layers so the gradient is O(1) and every path contributes.
    nn.init.normal_(net.all_modules[-1].weight, 0.0, 0.1, generator=torch.Generator().manual_seed(3))
    model = ScoreSDEScoreModel(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    v = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    w = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    (grad,) = torch.autograd.grad((model(x, t) * w).sum(), x)
    h = 1e-5
    with torch.no_grad():
        fd = ((model(x + h * v, t) - model(x - h * v, t)) * w).sum() / (2 * h)
    analytic = (grad * v).sum()
    assert abs(analytic) > 1e-3
    assert torch.isclose(analytic, fd, rtol=1e-6, atol=1e-9)


def test_score_model_contract_errors(ema_model, vectors):
    assert isinstance(ema_model, ScoreModel) and not ema_model.conditional
    with pytest.raises(InputError, match="unconditional"):
        ema_model(vectors["x"], vectors["t"], torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="x_t must have shape"):
        ema_model(vectors["x"][:, :, :16, :16], vectors["t"])
    with pytest.raises(InputError, match="t must be"):
        ema_model(vectors["x"], vectors["t"][:3])
    with pytest.raises(InputError, match="NCSN\\+\\+ expects x"):
        ema_model.network(vectors["x"][:, :, :16, :16], vectors["labels"])


# ------------------------------------------------------------------ construction options

def test_centered_false_maps_inputs_to_minus_one_one_and_adapter_refuses():
    centered = NCSNpp(tiny_config(), generator=torch.Generator().manual_seed(0)).eval()
    cfg = dataclasses.replace(tiny_config(), data=ScoreSDEDataConfig(image_size=8, centered=False))
    uncentered = NCSNpp(cfg, device="meta").to_empty(device="cpu")
    uncentered.load_state_dict(centered.state_dict())
    uncentered.eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([10.0, 500.0])
    with torch.no_grad():
        torch.testing.assert_close(uncentered(x, labels), centered(2 * x - 1, labels), rtol=0, atol=0)
    with pytest.raises(InputError, match="centered=False"):
        ScoreSDEScoreModel(uncentered)


@pytest.mark.parametrize("override", [
    {"fir": True}, {"progressive": "residual"}, {"progressive_input": "residual"}, {"resblock_type": "ddpm"},
    {"embedding_type": "fourier"}, {"nonlinearity": "tanh"},
])
def test_unimplemented_options_raise(override):
    with pytest.raises(InputError):
        NCSNpp(tiny_config(**override), device="meta")


def test_adapter_refuses_non_vp_continuous_models():
    for training in (dict(sde="vesde"), dict(continuous=False)):
        cfg = dataclasses.replace(tiny_config(), training=dataclasses.replace(tiny_config().training, **training))
        with pytest.raises(InputError, match="continuously trained VP"):
            ScoreSDEScoreModel(NCSNpp(cfg, device="meta"))


def test_initialisation_uses_only_the_generator():
    rng_state = torch.get_rng_state()
    a = NCSNpp(tiny_config(), generator=torch.Generator().manual_seed(5))
    b = NCSNpp(tiny_config(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), rng_state)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    # Output layers start near zero (init_scale 0 -> 1e-10); q/k/v and inner convs do not.
    assert a.all_modules[-1].weight.abs().max() < 1e-5
    attn = next(m for m in a.all_modules if isinstance(m, AttentionBlock))
    assert attn.NIN_3.W.abs().max() < 1e-5 and attn.NIN_0.W.abs().max() > 1e-3
    bound = math.sqrt(3.0 / ((8 * 9 + 8 * 9) / 2))  # DDPM fan_avg uniform bound of a 3x3 conv 8 -> 8
    conv = a.all_modules[3].Conv_0.weight
    assert conv.abs().max() <= bound and conv.abs().max() > 0.5 * bound
    assert torch.equal(a.sigmas, geometric_sigmas(50.0, 0.01, 1000))
