"""EDM DDPM++ CIFAR-10 (EDMPrecond + SongUNet): published key layout, reference outputs, VP adapter.

The spec folders ``specs/edm_ddpmpp_cifar10_{cond,uncond}/`` of the shared directory hold the published
state-dict layout (``keys.tsv``, ``config.json``), small random-weight checkpoints in RDC's format and the
upstream network's outputs on them (``vectors.safetensors``).
"""

from __future__ import annotations

import json

import pytest
import torch

from robustkit.diffusion.edm import EDMConfig, EDMPrecond, EDMScoreModel, SongUNet, UNetBlock, load_edm
from robustkit.diffusion.score_model import ScoreModel
from robustkit.errors import CheckpointError, InputError
from robustkit.hub import file_digest

SPEC_DIRS = {True: "edm_ddpmpp_cifar10_cond", False: "edm_ddpmpp_cifar10_uncond"}
ATOL = 1e-5  # vectors.md: atol 1e-5, rtol 1e-5 on D and F_x
BETA_MIN, BETA_MAX = 0.1, 20.0


def _spec(shared_dir, conditional):
    return shared_dir / "specs" / SPEC_DIRS[conditional]


def _read_keys_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0]
    rows = []
    for line in lines[2:]:
        key, shape, dtype, kind = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.split("x")) if shape else (), dtype, kind))
    return header, rows


def _vectors(spec_dir):
    from safetensors.torch import load_file

    return load_file(str(spec_dir / "vectors.safetensors"))


def _assert_close(got, want, atol=ATOL, rtol=ATOL):
    err = (got - want).abs().max().item()
    assert torch.allclose(got, want, atol=atol, rtol=rtol), f"max abs error {err:.3g}"


@pytest.fixture(scope="module", params=[True, False], ids=["cond", "uncond"])
def conditional(request):
    return request.param


@pytest.fixture(scope="module")
def small(shared_dir, conditional):
    """The spec's small model loaded through the public loader, and its vectors."""
    spec = _spec(shared_dir, conditional)
    model = load_edm(spec / "small_model.pt", conditional, config=EDMConfig.ddpmpp_cifar10_small(conditional))
    return model, _vectors(spec), spec


@pytest.fixture(scope="module")
def small_d(small, conditional):
    """``denoise`` on the reference inputs, computed once per module (CPU time is the test budget)."""
    model, vec, _ = small
    return model.denoise(vec["x"], vec["sigma"], _labels_or_none(vec, conditional))


def _labels_or_none(vec, conditional):
    return vec["labels"] if conditional else None


# ---------------------------------------------------------------------------------- full published layout

def test_full_config_matches_published_keys_shapes_and_counts(shared_dir, conditional):
    spec = _spec(shared_dir, conditional)
    header, rows = _read_keys_tsv(spec / "keys.tsv")
    derived = json.loads((spec / "config.json").read_text())["derived"]
    net = EDMPrecond(EDMConfig.ddpmpp_cifar10(conditional), device="meta")
    state = net.state_dict()

    assert list(state) == [r[0] for r in rows]  # key for key, in stored order
    for key, shape, dtype, _kind in rows:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key
    buffers = {f"{name}" for name, _ in net.named_buffers()}
    assert buffers == {r[0] for r in rows if r[3] == "buffer"}
    assert len(buffers) == derived["num_buffer_keys"] == 8
    assert len(state) == derived["num_state_dict_keys"]
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == derived["total_params"]
    assert f"total_params={n_params}" in header
    assert (rows[0][0], rows[-1][0]) == (derived["first_key"], derived["last_key"])


def test_full_config_block_inventory(shared_dir, conditional):
    spec = _spec(shared_dir, conditional)
    cfg_json = json.loads((spec / "config.json").read_text())
    song, derived = cfg_json["SongUNet"], cfg_json["derived"]
    cfg = EDMConfig.ddpmpp_cifar10(conditional)
    assert (cfg.model_channels, list(cfg.channel_mult), cfg.num_blocks, list(cfg.attn_resolutions),
            cfg.augment_dim, cfg.channel_mult_emb, cfg.channel_mult_noise, list(cfg.resample_filter)) == (
        song["model_channels"], song["channel_mult"], song["num_blocks"], song["attn_resolutions"],
        song["augment_dim"], song["channel_mult_emb"], song["channel_mult_noise"], song["resample_filter"])
    assert cfg.label_dim == cfg_json["EDMPrecond"]["label_dim"]
    assert cfg.sigma_data == cfg_json["EDMPrecond"]["sigma_data"]

    unet = SongUNet(cfg, device="meta")
    modules = dict(unet.named_modules())
    names = [n for n in modules if n.count(".") == 1 and n.split(".")[0] in ("enc", "dec")]
    assert names == list(derived["blocks"])
    for name, info in derived["blocks"].items():
        block = modules[name]
        if info["type"] != "UNetBlock":
            assert not isinstance(block, UNetBlock), name
            continue
        assert isinstance(block, UNetBlock), name
        got = (block.in_channels, block.out_channels, block.num_heads, block.up, block.down, block.skip is not None)
        want = (info["in_channels"], info["out_channels"], info["num_heads"], info["up"], info["down"],
                info["has_skip"])
        assert got == want, name


def test_small_config_matches_spec_counts(shared_dir, conditional):
    meta = json.loads((_spec(shared_dir, conditional) / "small_meta.json").read_text())
    cfg = EDMConfig.ddpmpp_cifar10_small(conditional)
    kw = meta["small_kwargs"]
    assert (cfg.model_channels, cfg.num_blocks, cfg.label_dim, cfg.augment_dim) == (
        kw["model_channels"], kw["num_blocks"], kw["label_dim"], kw["augment_dim"])
    net = EDMPrecond(cfg, device="meta")
    assert len(net.state_dict()) == meta["small_num_state_dict_keys"]
    assert sum(p.numel() for p in net.parameters()) == meta["small_total_params"]
    assert sorted(n for n, _ in net.named_buffers()) == sorted(meta["unperturbed_buffers"])


# -------------------------------------------------------------------------------------- reference outputs

def test_small_model_reproduces_reference_D(small, small_d, conditional):
    model, vec, _ = small
    assert isinstance(model, ScoreModel) and model.conditional == conditional and not model.training
    assert small_d.dtype == torch.float32
    _assert_close(small_d, vec["D"])


def test_small_model_reproduces_reference_network_output(small, conditional):
    model, vec, _ = small
    sigma = vec["sigma"].view(-1, 1, 1, 1)
    c_in = 1 / (0.25 + sigma ** 2).sqrt()
    c_noise = sigma.log().flatten() / 4
    labels = vec["labels_onehot"] if conditional else None
    _assert_close(model.precond.model(c_in * vec["x"], c_noise, labels), vec["F_x"])


def test_label_forms_and_zero_label(small, small_d, conditional):
    model, vec, _ = small
    if not conditional:  # label_dim 0: no map_label, so labels are a caller's mistake
        with pytest.raises(InputError, match="unconditional"):
            model.precond(vec["x"], vec["sigma"], torch.tensor([3, 0, 9, 5]))
        assert model.precond.model.map_label is None
        return
    by_onehot = model.precond(vec["x"], vec["sigma"], vec["labels_onehot"])
    assert torch.equal(small_d, by_onehot)  # RDC's integer labels = NVlabs' one-hot floats
    # class_labels=None on EDMPrecond = NVlabs' all-zero label vector (not a trained null label).
    _assert_close(model.precond(vec["x"], vec["sigma"], None), vec["D_zero_label"])


def test_augment_labels_are_unused_by_default(small):
    model, vec, _ = small
    unet = model.precond.model
    assert unet.map_augment is not None and unet.map_augment.bias is None
    x, noise = vec["x"][:1], torch.tensor([0.1])
    labels = vec["labels_onehot"][:1] if model.conditional else None
    base = unet(x, noise, labels)
    assert torch.equal(unet(x, noise, labels, torch.zeros(1, 9)), base)
    assert (unet(x, noise, labels, torch.ones(1, 9)) - base).abs().max() > 1e-4


def test_resample_filter_buffers_hold_box_filter(small):
    model, _, _ = small
    buffers = dict(model.precond.named_buffers())
    assert len(buffers) == 8
    for name, f in buffers.items():
        assert name.endswith("resample_filter")
        assert torch.equal(f, torch.full((1, 1, 2, 2), 0.25))


# -------------------------------------------------------------------------------------------- strict load

def test_loader_rejects_mismatching_checkpoints(shared_dir, tmp_path):
    spec = _spec(shared_dir, True)
    small_cfg = EDMConfig.ddpmpp_cifar10_small(True)
    state = torch.load(spec / "small_model.pt", map_location="cpu", weights_only=True)

    missing = dict(state)
    del missing["model.enc.16x16_down.conv0.resample_filter"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: model\.enc\.16x16_down\.conv0\.resample_filter"):
        load_edm(tmp_path / "missing.pt", config=small_cfg)

    extra = dict(state, **{"model.extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.extra\.weight"):
        load_edm(tmp_path / "extra.pt", config=small_cfg)

    bad = dict(state, **{"model.map_layer0.bias": torch.zeros(3)})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches: model\.map_layer0\.bias"):
        load_edm(tmp_path / "bad.pt", config=small_cfg)

    # the conditional file is not the unconditional network, nor the full-size one
    with pytest.raises(CheckpointError, match=r"unexpected keys: model\.map_label\.weight"):
        load_edm(spec / "small_model.pt", False, config=EDMConfig.ddpmpp_cifar10_small(False))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_edm(spec / "small_model.pt")


def test_loader_checks_digest_path_and_config(shared_dir, tmp_path):
    path = _spec(shared_dir, False) / "small_model.pt"
    cfg = EDMConfig.ddpmpp_cifar10_small(False)
    model = load_edm(path, False, config=cfg, sha256=file_digest(path))
    assert isinstance(model, EDMScoreModel) and not model.conditional
    with pytest.raises(CheckpointError, match="sha256"):
        load_edm(path, False, config=cfg, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="not found"):
        load_edm(tmp_path / "absent.pt", False, config=cfg)
    (tmp_path / "net.pkl").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pkl"):
        load_edm(tmp_path / "net.pkl", False, config=cfg)
    with pytest.raises(InputError, match="contradicts"):
        load_edm(path, True, config=cfg)


# --------------------------------------------------------------------------------------------- VP adapter

def test_vp_sigma_matches_schedule():
    """σ(t) = s/a of the continuous VP SDE with β in [0.1, 20], checked against the formula in fp64."""
    model = EDMScoreModel(EDMPrecond(EDMConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1),
                                               num_blocks=1, label_dim=0), device="meta"))
    t = torch.tensor([1e-4, 1e-3, 0.05, 0.3, 0.7, 1.0], dtype=torch.float64)
    mean = torch.exp(-t ** 2 * (BETA_MAX - BETA_MIN) / 4 - t * BETA_MIN / 2)
    std = torch.sqrt(1 - mean ** 2)
    torch.testing.assert_close(model.mean_coef(t), mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(model.sigma(t), std / mean, rtol=1e-9, atol=0)
    # fp32 stays accurate at small t (no 1 - a² cancellation)
    torch.testing.assert_close(model.sigma(t.float()).double(), std / mean, rtol=1e-6, atol=0)


def _t_of_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """Invert σ(t): ln(1 + σ²) = t²(β_max−β_min)/2 + t β_min, a quadratic in t."""
    qa, qb, qc = (BETA_MAX - BETA_MIN) / 2, BETA_MIN, -torch.log1p(sigma.double() ** 2)
    return (-qb + torch.sqrt(qb ** 2 - 4 * qa * qc)) / (2 * qa)


def test_adapter_noise_matches_reference_denoiser(small, conditional):
    """ε from VP time reproduces the reference D: x_t = a·x, σ(t) = σ_ref, D = x − σ ε."""
    model, vec, _ = small
    t = _t_of_sigma(vec["sigma"])
    torch.testing.assert_close(model.sigma(t), vec["sigma"].double(), rtol=1e-9, atol=0)
    a = model.mean_coef(t).float().view(-1, 1, 1, 1)
    eps = model(a * vec["x"], t.float(), _labels_or_none(vec, conditional))
    sigma = vec["sigma"].view(-1, 1, 1, 1)
    _assert_close(vec["x"] - sigma * eps, vec["D"])
    # in ε space, where σ = 0.002 amplifies rounding (observed 3e-5), compare relative to ε's size
    eps_ref = (vec["x"] - vec["D"]) / sigma
    assert ((eps - eps_ref).abs().amax(dim=(1, 2, 3)) / eps_ref.abs().amax(dim=(1, 2, 3))).max() < 3e-4


def test_adapter_eps_and_denoise_are_consistent(small, conditional):
    model, vec, _ = small
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    noise = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([0.01, 0.7])
    a, s = model.mean_coef(t).view(-1, 1, 1, 1), torch.sqrt(1 - model.mean_coef(t) ** 2).view(-1, 1, 1, 1)
    x_t = a * x0 + s * noise
    y = vec["labels"][:2] if conditional else None
    eps = model(x_t, t, y)
    d = model.denoise(x_t / a, model.sigma(t), y)
    sigma = model.sigma(t).view(-1, 1, 1, 1)
    _assert_close(d + sigma * eps, x_t / a)
    # a scalar t broadcasts over the batch
    _assert_close(model(x_t[1:], 0.7, None if y is None else y[1:]), eps[1:])


def test_adapter_input_errors(small, conditional):
    model, vec, _ = small
    x = vec["x"][:2]
    if conditional:
        with pytest.raises(InputError, match="no null label"):
            model(x, torch.tensor([0.5, 0.5]))
        with pytest.raises(InputError, match="no null label"):
            model.denoise(x, 0.5)
        with pytest.raises(InputError, match=r"\[0, 10\)"):
            model.denoise(x, 0.5, torch.tensor([0, 10]))
        with pytest.raises(InputError, match="integer"):
            model.denoise(x, 0.5, torch.zeros(2))
        y = torch.tensor([1, 2])
    else:
        with pytest.raises(InputError, match="unconditional"):
            model(x, torch.tensor([0.5, 0.5]), torch.tensor([1, 2]))
        with pytest.raises(InputError, match="unconditional"):
            model.denoise(x, 0.5, torch.tensor([1, 2]))
        y = None
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        model(x, torch.tensor([0.0, 0.5]), y)
    with pytest.raises(InputError, match="> 0"):
        model.denoise(x, torch.tensor([0.5, -1.0]), y)
    with pytest.raises(InputError, match="sigma"):
        model.denoise(x, torch.ones(3), y)
    with pytest.raises(InputError, match="x_noisy"):
        model.denoise(x[:, :1], 0.5, y)


def test_gradients_flow_to_the_input(small, conditional):
    model, vec, _ = small
    y = vec["labels"][:2] if conditional else None
    x = vec["x"][:2].clone().requires_grad_(True)
    model(x, torch.tensor([0.05, 0.9]), y).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    xs = vec["x"][:1].clone().requires_grad_(True)
    model.denoise(xs, 0.6, None if y is None else y[:1]).sum().backward()
    assert torch.isfinite(xs.grad).all() and xs.grad.abs().sum() > 0


def test_input_gradient_matches_finite_differences_in_float64(small, conditional):
    """fp64 inputs run the whole network in fp64 (weights cast per layer), so a directional check is tight."""
    model, vec, _ = small
    gen = torch.Generator().manual_seed(5)
    x = vec["x"][:1].double().requires_grad_(True)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y = vec["labels"][:1] if conditional else None
    t = torch.tensor([0.3], dtype=torch.float64)
    eps = model(x, t, y)
    assert eps.dtype == torch.float64
    (grad,) = torch.autograd.grad((eps * w).sum(), x)
    h = 1e-5
    fd = ((model(x + h * v, t, y) - model(x - h * v, t, y)) * w).sum() / (2 * h)
    torch.testing.assert_close((grad * v).sum(), fd.detach(), rtol=1e-6, atol=1e-8)


def test_config_validation():
    with pytest.raises(InputError, match="divisible"):
        EDMConfig(img_resolution=30, channel_mult=(1, 2, 2))
    with pytest.raises(InputError, match="4 channels"):
        EDMConfig(model_channels=2)
    with pytest.raises(InputError, match="channel_mult"):
        EDMConfig(channel_mult=())
    cfg = EDMConfig(channel_mult=[1, 2], attn_resolutions=[8])  # lists become tuples: hashable, frozen
    assert cfg.channel_mult == (1, 2) and hash(cfg) == hash(EDMConfig(channel_mult=(1, 2), attn_resolutions=(8,)))


def test_initialisation_draws_only_from_the_generator():
    cfg = EDMConfig(img_resolution=8, model_channels=8, channel_mult=(1, 1), num_blocks=1, attn_resolutions=(4,))
    torch.manual_seed(0)
    a = EDMPrecond(cfg, generator=torch.Generator().manual_seed(1)).state_dict()
    torch.manual_seed(123)
    b = EDMPrecond(cfg, generator=torch.Generator().manual_seed(1)).state_dict()
    c = EDMPrecond(cfg, generator=torch.Generator().manual_seed(2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.map_layer0.weight"], c["model.map_layer0.weight"])


# ------------------------------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_and_fp16_modes(shared_dir, conditional):
    """On CUDA the fp32 path reproduces the reference; RDC's fp16 mode stays close and returns fp32."""
    import dataclasses

    spec = _spec(shared_dir, conditional)
    vec = {k: v.cuda() for k, v in _vectors(spec).items()}
    y = _labels_or_none(vec, conditional)
    cfg = EDMConfig.ddpmpp_cifar10_small(conditional)
    old_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fp32 = load_edm(spec / "small_model.pt", conditional, config=cfg).cuda()
        _assert_close(fp32.denoise(vec["x"], vec["sigma"], y), vec["D"], atol=1e-4, rtol=1e-4)
        fp16 = load_edm(spec / "small_model.pt", conditional,
                        config=dataclasses.replace(cfg, use_fp16=True)).cuda()
        x = vec["x"].clone().requires_grad_(True)
        d16 = fp16.denoise(x, vec["sigma"], y)
        assert d16.dtype == torch.float32
        _assert_close(d16, vec["D"], atol=5e-3, rtol=0)  # observed 7e-4 on an H100
        d16.sum().backward()
        assert torch.isfinite(x.grad).all()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
