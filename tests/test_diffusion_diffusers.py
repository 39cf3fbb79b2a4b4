"""diffusers UNet2DModel checkpoints: loading, VP-time → step mapping, prediction types, errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from robustkit.diffusion.diffusers_loader import DiffusersScoreModel, from_diffusers
from robustkit.diffusion.schedule import DiscreteVPSchedule, VPSDE
from robustkit.diffusion.solvers import ddim, ddim_indices
from robustkit.errors import CheckpointError, InputError

TINY_UNET = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)


@pytest.fixture(scope="module")
def diffusers():
    """diffusers, imported with the Hub offline (nothing here may touch the network).

    diffusers is in the ``test`` extra, so CI must have it: there a missing install fails instead of skipping.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        try:
            import diffusers as module
        except ImportError as e:
            if os.environ.get("CI"):
                pytest.fail(f"diffusers is in the test extra but cannot be imported in CI: {e}")
            pytest.skip(f"diffusers is not installed ({e}); pip install robustkit[diffusers] (the test extra has it)")
        yield module


def _unet(diffusers, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**{**TINY_UNET, **overrides})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # N(0, 0.02) on every weight, so that no layer is a zero-initialised no-op
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return unet.eval()


def _save_pipeline(root: Path, unet, scheduler=None, *, safe: bool = True) -> Path:
    unet.save_pretrained(root / "unet", safe_serialization=safe)
    if scheduler is not None:
        scheduler.save_pretrained(root / "scheduler")
    return root


def _x(n: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ddpm_pipeline(diffusers, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddpm")
    unet = _unet(diffusers)
    return _save_pipeline(root, unet, diffusers.DDPMScheduler()), unet


# ---------------------------------------------------------------------------------------- loading, ε


def test_epsilon_model_matches_the_unet_at_the_mapped_step(ddpm_pipeline):
    root, unet = ddpm_pipeline
    model = from_diffusers(root)
    assert isinstance(model, DiffusersScoreModel) and not model.training
    assert (model.beta_min, model.beta_max, model.num_train_timesteps) == pytest.approx((0.1, 20.0, 1000))
    assert model.prediction_type == "epsilon" and model.input_shape == (3, 8, 8) and not model.conditional
    sched = DiscreteVPSchedule()
    x = _x()
    steps = [0, 1, 99, 500, 999]
    for i in steps:
        got = model(x, sched.time_of(i))
        with torch.no_grad():
            want = unet(x, torch.full((3,), i), return_dict=False)[0]
        assert torch.allclose(got, want, atol=1e-6, rtol=0), f"step {i}"
    # per-example times, and DiffPure's t* = 0.1 is step 99
    t = torch.tensor([sched.time_of(3), 0.1, sched.time_of(700)])
    with torch.no_grad():
        want = unet(x, torch.tensor([3, 99, 700]), return_dict=False)[0]
    assert torch.allclose(model(x, t), want, atol=1e-6, rtol=0)
    # and the step matters: a neighbouring step gives a different output
    with torch.no_grad():
        other = unet(x, torch.full((3,), 100), return_dict=False)[0]
    assert (model(x, 0.1) - other).abs().max() > 1e-4


def test_time_of_every_step_maps_back_to_that_step(ddpm_pipeline):
    model = from_diffusers(ddpm_pipeline[0])
    sched = DiscreteVPSchedule()
    t = torch.tensor([sched.time_of(i) for i in range(1000)], dtype=torch.float32)  # what solvers pass
    assert torch.equal(model.timestep_labels(t), torch.arange(1000))


def test_continuous_times_get_the_step_of_nearest_noise_level(diffusers, ddpm_pipeline):
    model = from_diffusers(ddpm_pipeline[0])
    acp = diffusers.DDPMScheduler().alphas_cumprod.double()  # diffusers' own table, not robustkit's
    log_sigma_steps = 0.5 * (torch.log1p(-acp) - torch.log(acp))
    t = torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.999 + 1e-3
    log_sigma_t = torch.log(VPSDE().sigma(t))
    dist = (log_sigma_steps[None, :] - log_sigma_t[:, None]).abs()
    got = model.timestep_labels(t)
    # optimal up to float32-vs-float64 table differences at the half-way points
    assert torch.all(dist[torch.arange(500), got] <= dist.min(dim=1).values + 1e-5)
    assert model.timestep_labels(torch.tensor([0.0, 1.0])).tolist() == [0, 996]  # chain ends above σ(1)


def test_ddim_solver_calls_the_unet_at_its_integer_steps(ddpm_pipeline):
    model = from_diffusers(ddpm_pipeline[0])
    seen = []
    forward = model.unet.forward

    def recording(sample, timestep, class_labels=None, return_dict=True):
        seen.append(timestep.tolist())
        return forward(sample, timestep, class_labels=class_labels, return_dict=return_dict)

    model.unet.forward = recording
    out = ddim(model, DiscreteVPSchedule(), _x(2), 99, steps=10)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    assert seen == [[i, i] for i in ddim_indices(99, 10)]


def test_gradients_flow_to_the_input_not_the_weights(ddpm_pipeline):
    model = from_diffusers(ddpm_pipeline[0])
    assert not any(p.requires_grad for p in model.parameters())
    x = _x().requires_grad_(True)
    eps = model(x, torch.tensor([0.05, 0.1, 0.5]))
    assert eps.requires_grad
    (grad,) = torch.autograd.grad(eps.square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # float64 inputs run through the float32 network and come back as float64
    assert model(x.detach().double(), 0.1).dtype == torch.float64


def test_unet_directory_finds_the_sibling_scheduler_and_bin_weights_load(diffusers, tmp_path):
    unet = _unet(diffusers, seed=3)
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler(), safe=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    model = from_diffusers(tmp_path / "unet")
    x = _x(2)
    with torch.no_grad():
        want = unet(x, torch.full((2,), 99), return_dict=False)[0]
    assert torch.allclose(model(x, 0.1), want, atol=1e-6, rtol=0)


def test_other_linear_beta_range_is_its_own_vpsde(diffusers, tmp_path):
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler(beta_start=2e-4, beta_end=0.01,
                                                                       num_train_timesteps=500))
    model = from_diffusers(tmp_path)
    assert (model.beta_min, model.beta_max, model.num_train_timesteps) == pytest.approx((0.1, 5.0, 500))
    sched = DiscreteVPSchedule(0.1, 5.0, 500)
    t = torch.tensor([sched.time_of(i) for i in range(500)], dtype=torch.float32)
    assert torch.equal(model.timestep_labels(t), torch.arange(500))


def test_class_conditional_unet_needs_labels(diffusers, tmp_path):
    unet = _unet(diffusers, num_class_embeds=10)
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler())
    model = from_diffusers(tmp_path)
    assert model.num_classes == 10
    x, y = _x(2), torch.tensor([1, 7])
    with torch.no_grad():
        want = unet(x, torch.full((2,), 99), class_labels=y, return_dict=False)[0]
    assert torch.allclose(model(x, 0.1, y), want, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="class-conditional"):
        model(x, 0.1)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        model(x, 0.1, torch.tensor([1, 10]))


def test_learned_variance_channels_are_dropped(diffusers, tmp_path):
    unet = _unet(diffusers, out_channels=6)
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler(variance_type="learned_range"))
    model = from_diffusers(tmp_path)
    x = _x(2)
    with torch.no_grad():
        want = unet(x, torch.full((2,), 99), return_dict=False)[0][:, :3]
    got = model(x, 0.1)
    assert got.shape == (2, 3, 8, 8) and torch.allclose(got, want, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- prediction types


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_v_and_sample_predictions_are_converted_to_eps(diffusers, tmp_path, prediction_type):
    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type)
    _save_pipeline(tmp_path, _unet(diffusers), scheduler)
    model = from_diffusers(tmp_path)
    assert model.prediction_type == prediction_type
    # An oracle network: the exact target diffusers defines for these (x0, ε) at the step it is given.
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    steps = torch.tensor([10, 99, 900])

    def oracle(sample, timestep, class_labels=None, return_dict=True):
        assert torch.equal(timestep, steps)
        target = scheduler.get_velocity(x0, noise, timestep) if prediction_type == "v_prediction" else x0
        return (target,)

    model.unet.forward = oracle
    x_t = scheduler.add_noise(x0, noise, steps)
    t = torch.tensor([DiscreteVPSchedule().time_of(int(i)) for i in steps])
    assert torch.allclose(model(x_t, t), noise, atol=2e-4, rtol=0)


def test_real_unet_v_prediction_uses_the_step_coefficients(diffusers, tmp_path):
    unet = _unet(diffusers)
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler(prediction_type="v_prediction"))
    model = from_diffusers(tmp_path)
    x = _x(2)
    acp = diffusers.DDPMScheduler().alphas_cumprod[99]
    with torch.no_grad():
        v = unet(x, torch.full((2,), 99), return_dict=False)[0]
    assert torch.allclose(model(x, 0.1), (1 - acp).sqrt() * x + acp.sqrt() * v, atol=1e-5, rtol=0)


def test_unknown_prediction_type_is_refused(diffusers, tmp_path):
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler())
    cfg_file = tmp_path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["prediction_type"] = "flow_prediction"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="flow_prediction"):
        from_diffusers(tmp_path)


# --------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_non_linear_schedule_is_refused_unless_unchecked(diffusers, tmp_path, beta_schedule):
    scheduler = diffusers.DDPMScheduler(beta_schedule=beta_schedule)
    unet = _unet(diffusers)
    _save_pipeline(tmp_path, unet, scheduler)
    with pytest.raises(InputError, match=rf"beta_schedule='{beta_schedule}'.*schedule_check=False"):
        from_diffusers(tmp_path)
    with pytest.warns(UserWarning, match="matched by noise level"):
        model = from_diffusers(tmp_path, schedule_check=False)
    # the step is the one of the scheduler's own table whose noise level matches VPSDE(0.1, 20) at t
    acp = scheduler.alphas_cumprod.double()
    log_sigma = 0.5 * (torch.log1p(-acp) - torch.log(acp))
    target = torch.log(VPSDE().sigma(torch.tensor(0.3, dtype=torch.float64)))
    step = int(model.timestep_labels(torch.tensor([0.3])))
    assert step == int((log_sigma - target).abs().argmin())
    assert step != DiscreteVPSchedule().index(0.3)  # a different schedule gives a different step
    x = _x(1)
    with torch.no_grad():
        want = unet(x, torch.tensor([step]), return_dict=False)[0]
    assert torch.allclose(model(x, 0.3), want, atol=1e-6, rtol=0)


def test_trained_betas_and_zero_snr_are_refused(diffusers, tmp_path):
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler())
    cfg_file = tmp_path / "scheduler" / "scheduler_config.json"
    base = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**base, "rescale_betas_zero_snr": True}))
    with pytest.raises(InputError, match="rescale_betas_zero_snr"):
        from_diffusers(tmp_path)
    cfg_file.write_text(json.dumps({**base, "trained_betas": [1e-4] * 1000}))
    with pytest.raises(InputError, match="trained_betas"):
        from_diffusers(tmp_path)


def test_ve_scheduler_is_refused_even_unchecked(diffusers, tmp_path):
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.ScoreSdeVeScheduler())
    for check in (True, False):
        with pytest.raises(InputError, match="VE"):
            from_diffusers(tmp_path, schedule_check=check)


def test_missing_scheduler_config(diffusers, tmp_path):
    unet = _unet(diffusers)
    unet.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="schedule_check=False"):
        from_diffusers(tmp_path)
    with pytest.warns(UserWarning, match="DDPMScheduler's defaults"):
        model = from_diffusers(tmp_path, schedule_check=False)
    assert (model.beta_min, model.beta_max) == pytest.approx((0.1, 20.0))
    x = _x(1)
    with torch.no_grad():
        want = unet(x, torch.tensor([99]), return_dict=False)[0]
    assert torch.allclose(model(x, 0.1), want, atol=1e-6, rtol=0)


def test_fourier_time_embedding_is_refused(diffusers, tmp_path):
    unet = _unet(diffusers, time_embedding_type="fourier", block_out_channels=(16, 32))
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler())
    with pytest.raises(InputError, match="fourier"):
        from_diffusers(tmp_path)


# ------------------------------------------------------------------------------------------ errors


def test_missing_directory_and_missing_files(diffusers, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        from_diffusers(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a diffusers model directory"):
        from_diffusers(tmp_path)
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler())
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        from_diffusers(tmp_path)


def test_missing_and_misshaped_keys_are_listed(diffusers, tmp_path):
    from safetensors.torch import load_file, save_file

    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler())
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["conv_in.bias"]
    state["conv_out.weight"] = state["conv_out.weight"][:2].contiguous()
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"missing keys: conv_in\.bias.*conv_out\.weight"):
        from_diffusers(tmp_path)


def test_deprecated_attention_key_names_load(diffusers, tmp_path):
    unet = _unet(diffusers)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    renamed = {}
    for k, v in state.items():  # the layout of checkpoints saved by diffusers < 0.14
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
        renamed[k] = v
    assert any(".query." in k for k in renamed) and any(".proj_attn." in k for k in renamed)
    _save_pipeline(tmp_path, unet, diffusers.DDPMScheduler())
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(renamed, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    model = from_diffusers(tmp_path)
    x = _x(1)
    with torch.no_grad():
        want = unet(x, torch.tensor([99]), return_dict=False)[0]
    assert torch.allclose(model(x, 0.1), want, atol=1e-6, rtol=0)


class _Payload:
    """Unpickling this would create the file ``path`` (it reduces to ``open(path, "w")``)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bin_weights_never_run_pickled_code(diffusers, tmp_path):
    _save_pipeline(tmp_path, _unet(diffusers), diffusers.DDPMScheduler(), safe=False)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.bin"
    marker = tmp_path / "pwned"
    state = torch.load(weights, weights_only=True)
    state["conv_in.weight"] = _Payload(str(marker))
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        from_diffusers(tmp_path)
    assert not marker.exists()


def test_sharded_weights_load(diffusers, tmp_path):
    unet = _unet(diffusers)
    unet.save_pretrained(tmp_path / "unet", max_shard_size="40KB")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "scheduler")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = from_diffusers(tmp_path)
    x = _x(1)
    with torch.no_grad():
        want = unet(x, torch.tensor([99]), return_dict=False)[0]
    assert torch.allclose(model(x, 0.1), want, atol=1e-6, rtol=0)


def test_input_contract_errors(ddpm_pipeline):
    model = from_diffusers(ddpm_pipeline[0])
    with pytest.raises(InputError, match="t must lie"):
        model(_x(1), 1.5)
    with pytest.raises(InputError, match="t must lie"):
        model(_x(1), -0.1)
    model(_x(1), DiscreteVPSchedule().time_of(999))  # the last step's time, slightly past 1, is accepted
    with pytest.raises(InputError, match="x_t must have shape"):
        model(torch.zeros(1, 3, 16, 16), 0.1)
    with pytest.raises(InputError, match="unconditional"):
        model(_x(1), 0.1, torch.tensor([0]))


def test_missing_diffusers_says_how_to_install(monkeypatch, tmp_path):
    # Runs without diffusers too: a None entry in sys.modules makes `import diffusers` raise ImportError.
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install robustkit\[diffusers\]"):
        from_diffusers(tmp_path)
