"""score_sde checkpoints as robustkit ScoreModels: typed configs, a strict loader and the ε adapter.

The published CIFAR-10 model that DiffPure uses is score_sde's ``vp/cifar10_ddpmpp_deep_continuous``
(``checkpoint_8.pth``): an NCSN++ network (:class:`~robustkit.diffusion.ncsnpp.NCSNpp`) trained with the
continuous VP SDE (β_min 0.1, β_max 20). Its file is ``{'model', 'ema', 'optimizer', 'step'}``:

* ``ema['shadow_params']``: the EMA weights (the ones to use, and the default here), an **unnamed** list in
  ``model.parameters()`` order; the ``sigmas`` buffer is not in it, so it must never be zipped with the
  state-dict keys (``sigmas`` is the first key and every pairing would shift by one);
* ``model``: the raw (non-EMA) weights, keys prefixed with ``module.`` (``nn.DataParallel``);
  ``use_ema=False`` loads those.

Time convention of continuous VP models (score_sde ``models/utils.get_score_fn``): the network receives the
float label ``999 t`` and its output is the noise prediction ε, i.e. ``score(x, t) = -ε / std(t)`` with
``std(t) = sqrt(1 - exp(-t² (β_max - β_min) / 2 - t β_min))``. :class:`ScoreSDEScoreModel` hides the
``999 t`` and returns ε, as the :class:`~robustkit.diffusion.score_model.ScoreModel` contract asks.

Data range: the DDPM++ CIFAR-10 config has ``data.centered=True``: images are scaled to [-1, 1] before
diffusion and the network takes ``x_t`` as is, which is exactly robustkit's VP convention (data in [-1, 1]).
A ``centered=False`` model was trained on [0, 1] data (the network maps ``2x - 1`` inside); its VP process is
a different one, so :class:`ScoreSDEScoreModel` refuses it rather than returning a wrong ε.

Reference:
    Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021,
    github.com/yang-song/score_sde_pytorch (``configs/vp/cifar10_ddpmpp_deep_continuous.py``,
    ``models/utils.py``, ``models/ema.py``); Nie et al., "Diffusion Models for Adversarial Purification",
    ICML 2022, github.com/NVlabs/DiffPure (``configs/cifar10.yml``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import CheckpointError, InputError, RegistryError
from ..hub import load_state_dict_file, load_strict, verify_file
from ..utils import did_you_mean
from .ncsnpp import NCSNpp
from .score_model import ScoreModel

log = logging.getLogger(__name__)

__all__ = [
    "ScoreSDEModelConfig", "ScoreSDEDataConfig", "ScoreSDETrainingConfig", "ScoreSDESamplingConfig",
    "ScoreSDEOptimConfig", "ScoreSDEEvalConfig", "ScoreSDEConfig", "SCORE_SDE_CONFIGS",
    "get_score_sde_config", "load_score_sde", "ScoreSDEScoreModel",
]


# --------------------------------------------------------------------------------------------------------
# Configs: defaults are the published vp/cifar10_ddpmpp_deep_continuous values
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreSDEModelConfig:
    """``config.model`` of score_sde; defaults are ``vp/cifar10_ddpmpp_deep_continuous``."""

    name: str = "ncsnpp"
    scale_by_sigma: bool = False
    ema_rate: float = 0.9999
    normalization: str = "GroupNorm"
    nonlinearity: str = "swish"
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 8
    attn_resolutions: tuple[int, ...] = (16,)
    resamp_with_conv: bool = True
    conditional: bool = True  # time-conditional (the noise level), not class-conditional
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    attention_type: str = "ddpm"
    init_scale: float = 0.0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    conv_size: int = 3
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    dropout: float = 0.1


@dataclass(frozen=True)
class ScoreSDEDataConfig:
    """``config.data``. ``centered=True``: data in [-1, 1] (the network takes ``x`` as is)."""

    dataset: str = "CIFAR10"
    image_size: int = 32
    random_flip: bool = True
    centered: bool = True
    uniform_dequantization: bool = False
    num_channels: int = 3


@dataclass(frozen=True)
class ScoreSDETrainingConfig:
    """``config.training`` (recorded for provenance; ``sde`` and ``continuous`` fix the time convention)."""

    sde: str = "vpsde"
    continuous: bool = True
    batch_size: int = 128
    n_iters: int = 950001
    snapshot_freq: int = 50000
    log_freq: int = 50
    eval_freq: int = 100
    snapshot_freq_for_preemption: int = 10000
    snapshot_sampling: bool = True
    likelihood_weighting: bool = False
    reduce_mean: bool = True


@dataclass(frozen=True)
class ScoreSDESamplingConfig:
    """``config.sampling`` (recorded for provenance)."""

    n_steps_each: int = 1
    noise_removal: bool = True
    probability_flow: bool = False
    snr: float = 0.16
    method: str = "pc"
    predictor: str = "euler_maruyama"
    corrector: str = "none"


@dataclass(frozen=True)
class ScoreSDEOptimConfig:
    """``config.optim`` (recorded for provenance)."""

    weight_decay: float = 0.0
    optimizer: str = "Adam"
    lr: float = 2e-4
    beta1: float = 0.9
    eps: float = 1e-8
    warmup: int = 5000
    grad_clip: float = 1.0


@dataclass(frozen=True)
class ScoreSDEEvalConfig:
    """``config.eval`` (recorded for provenance)."""

    begin_ckpt: int = 9
    end_ckpt: int = 26
    batch_size: int = 1024
    enable_sampling: bool = False
    num_samples: int = 50000
    enable_loss: bool = True
    enable_bpd: bool = False
    bpd_dataset: str = "test"


_SECTIONS: dict[str, type] = {
    "model": ScoreSDEModelConfig, "data": ScoreSDEDataConfig, "training": ScoreSDETrainingConfig,
    "sampling": ScoreSDESamplingConfig, "optim": ScoreSDEOptimConfig, "eval": ScoreSDEEvalConfig,
}


@dataclass(frozen=True)
class ScoreSDEConfig:
    """A complete score_sde config (``ml_collections`` layout as typed dataclasses).

    The defaults are the published ``vp/cifar10_ddpmpp_deep_continuous`` (= DiffPure ``configs/cifar10.yml``).

    Example::

        >>> cfg = ScoreSDEConfig()
        >>> cfg.model.nf, cfg.model.num_res_blocks, cfg.data.centered, cfg.training.sde
        (128, 8, True, 'vpsde')
        >>> ScoreSDEConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    model: ScoreSDEModelConfig = field(default_factory=ScoreSDEModelConfig)
    data: ScoreSDEDataConfig = field(default_factory=ScoreSDEDataConfig)
    training: ScoreSDETrainingConfig = field(default_factory=ScoreSDETrainingConfig)
    sampling: ScoreSDESamplingConfig = field(default_factory=ScoreSDESamplingConfig)
    optim: ScoreSDEOptimConfig = field(default_factory=ScoreSDEOptimConfig)
    eval: ScoreSDEEvalConfig = field(default_factory=ScoreSDEEvalConfig)
    seed: int = 42

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists), the layout of score_sde's config / ``config.json``."""
        def plain(v: Any) -> Any:
            if isinstance(v, (tuple, list)):
                return [plain(u) for u in v]
            if isinstance(v, dict):
                return {k: plain(u) for k, u in v.items()}
            return v
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScoreSDEConfig":
        """Inverse of :meth:`to_dict`; unknown sections or fields raise :class:`InputError`."""
        unknown = set(d) - set(_SECTIONS) - {"seed"}
        if unknown:
            raise InputError(f"unknown score_sde config sections: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, section_cls in _SECTIONS.items():
            if name not in d:
                continue
            values = dict(d[name])
            fields = {f.name: f for f in dataclasses.fields(section_cls)}
            bad = set(values) - set(fields)
            if bad:
                raise InputError(f"unknown fields in score_sde config section {name!r}: {sorted(bad)}")
            for key, value in values.items():
                if isinstance(value, list):
                    values[key] = tuple(value)
            kwargs[name] = section_cls(**values)
        if "seed" in d:
            kwargs["seed"] = int(d["seed"])
        return cls(**kwargs)


def _cifar10_ddpmpp_deep_continuous() -> ScoreSDEConfig:
    return ScoreSDEConfig()


def _cifar10_ddpmpp_deep_continuous_small() -> ScoreSDEConfig:
    base = ScoreSDEConfig()
    return dataclasses.replace(base, model=dataclasses.replace(base.model, nf=16, num_res_blocks=2))


#: Named configs. ``cifar10_ddpmpp_deep_continuous`` is the published one (106,632,579 parameters);
#: ``cifar10_ddpmpp_deep_continuous_small`` is the same code path with ``nf=16, num_res_blocks=2``
#: (622,995 parameters), the config of the reference vectors in ``specs/score_sde_ddpmpp_deep_vp_cifar10``;
#: no published checkpoint has it.
SCORE_SDE_CONFIGS: dict[str, Callable[[], ScoreSDEConfig]] = {
    "cifar10_ddpmpp_deep_continuous": _cifar10_ddpmpp_deep_continuous,
    "cifar10_ddpmpp_deep_continuous_small": _cifar10_ddpmpp_deep_continuous_small,
}


def get_score_sde_config(name: str) -> ScoreSDEConfig:
    """The named config (see :data:`SCORE_SDE_CONFIGS`); :class:`RegistryError` for an unknown name.

    Example::

        >>> get_score_sde_config("cifar10_ddpmpp_deep_continuous_small").model.nf
        16
    """
    try:
        factory = SCORE_SDE_CONFIGS[name]
    except KeyError:
        raise RegistryError(f"unknown score_sde config {name!r}{did_you_mean(name, SCORE_SDE_CONFIGS)} (known: "
                            f"{', '.join(SCORE_SDE_CONFIGS)})") from None
    return factory()


def _resolve_config(config: str | ScoreSDEConfig) -> ScoreSDEConfig:
    if isinstance(config, ScoreSDEConfig):
        return config
    if isinstance(config, str):
        return get_score_sde_config(config)
    raise InputError(f"config must be a config name or a ScoreSDEConfig, got {type(config).__name__}")


# --------------------------------------------------------------------------------------------------------
# The ScoreModel adapter
# --------------------------------------------------------------------------------------------------------

class ScoreSDEScoreModel(ScoreModel):
    """ε-prediction adapter of a continuous-VP score_sde network: ``eps = model(x_t, t)``.

    Inside: ``network(x_t, 999 t)`` (score_sde's label for continuous VP training); the output already is
    ε, since score_sde defines ``score = -network(x, 999 t) / std(t)``. Unconditional (``y`` must be None).
    No ``torch.no_grad()``: gradients flow to ``x_t`` (and ``t``) for attacks.

    Args:
        network: an :class:`~robustkit.diffusion.ncsnpp.NCSNpp` whose config is a continuous VP SDE with
            ``data.centered=True`` and ``scale_by_sigma=False`` (anything else has no ε reading under
            robustkit's VP convention and raises :class:`InputError`).

    Attributes:
        beta_min, beta_max: the VP schedule the network was trained with (from ``model`` config), for
            checking against the :class:`NoiseSchedule` a solver uses.

    Shape:
        ``x_t``: ``[N, C, H, W]`` (VP scaling, data in [-1, 1]); ``t``: ``[N]`` or scalar in (0, 1];
        output ``[N, C, H, W]``.

    Reference:
        Song et al., ICLR 2021, score_sde ``models/utils.get_score_fn`` (continuous VP branch).

    Example::

        >>> import torch
        >>> from robustkit.diffusion.ncsnpp import NCSNpp
        >>> from robustkit.diffusion.score_sde import (ScoreSDEConfig, ScoreSDEModelConfig,
        ...     ScoreSDEDataConfig, ScoreSDEScoreModel)
        >>> cfg = ScoreSDEConfig(model=ScoreSDEModelConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1,
        ...                                                attn_resolutions=(4,)),
        ...                      data=ScoreSDEDataConfig(image_size=8))
        >>> model = ScoreSDEScoreModel(NCSNpp(cfg, generator=torch.Generator().manual_seed(0))).eval()
        >>> x = torch.zeros(2, 3, 8, 8, requires_grad=True)
        >>> eps = model(x, torch.tensor([0.1, 0.9]))
        >>> eps.shape, eps.requires_grad
        (torch.Size([2, 3, 8, 8]), True)
    """

    #: score_sde's label scale for continuous VP models (``labels = t * 999``), independent of num_scales.
    TIME_LABEL_SCALE = 999.0

    def __init__(self, network: NCSNpp):
        cfg = network.config
        if cfg.training.sde.lower() != "vpsde" or not cfg.training.continuous:
            raise InputError(f"ScoreSDEScoreModel needs a continuously trained VP model (training.sde='vpsde', "
                             f"continuous=True), got sde={cfg.training.sde!r}, continuous={cfg.training.continuous}")
        if not cfg.data.centered:
            raise InputError("data.centered=False: the model was trained on data in [0, 1], so its VP process is "
                             "not robustkit's (data in [-1, 1]); its output is not the ε of that process")
        if cfg.model.scale_by_sigma:
            raise InputError("model.scale_by_sigma=True is a VE (score-output) setting; the output is not ε")
        super().__init__((cfg.data.num_channels, cfg.data.image_size, cfg.data.image_size), num_classes=None)
        self.network = network
        self.config = cfg
        self.beta_min = float(cfg.model.beta_min)
        self.beta_max = float(cfg.model.beta_max)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.network(x_t, t * self.TIME_LABEL_SCALE)


# --------------------------------------------------------------------------------------------------------
# Loading the published checkpoint format
# --------------------------------------------------------------------------------------------------------

_PREFIX = "module."


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    # a non-string key stays as it is and is reported by load_strict as unexpected
    return {(k[len(_PREFIX):] if isinstance(k, str) and k.startswith(_PREFIX) else k): v for k, v in state.items()}


def _ema_state(network: NCSNpp, shadow: Any, raw: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Pair the unnamed EMA list with ``named_parameters()`` (not with the state-dict keys: ``sigmas``)."""
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointError(f"{source}: ema['shadow_params'] is a {type(shadow).__name__}, expected a list of tensors")
    params = list(network.named_parameters())
    if len(shadow) != len(params):
        raise CheckpointError(f"{source}: ema['shadow_params'] holds {len(shadow)} tensors but the network "
                              f"{type(network).__name__} has {len(params)} parameters (wrong config or file?)")
    problems = []
    for i, ((name, p), s) in enumerate(zip(params, shadow)):
        if not isinstance(s, torch.Tensor) or not s.is_floating_point():
            problems.append(f"[{i}] {name}: not a floating tensor ({type(s).__name__})")
        elif tuple(s.shape) != tuple(p.shape):
            problems.append(f"[{i}] {name}: checkpoint {tuple(s.shape)} vs model {tuple(p.shape)}")
    if problems:
        more = f", ... ({len(problems)} in all)" if len(problems) > 10 else ""
        raise CheckpointError(f"{source}: ema['shadow_params'] does not match the network's parameters in "
                              f"order: " + "; ".join(problems[:10]) + more)
    state = {name: s for (name, _), s in zip(params, shadow)}
    # Buffers are not averaged by score_sde's EMA: take them from the raw state dict.
    for name, _ in network.named_buffers():
        state[name] = raw[name]
    return state


def load_score_sde(path: str | os.PathLike, config: str | ScoreSDEConfig = "cifar10_ddpmpp_deep_continuous", *,
                   use_ema: bool = True, sha256: str | None = None) -> ScoreSDEScoreModel:
    """Load a score_sde checkpoint (``{'model', 'ema', 'optimizer', 'step'}``) strictly, as a ScoreModel.

    The file is read with ``torch.load(weights_only=True)`` (no pickled code runs). ``checkpoint['model']``
    (``module.`` prefix stripped) must match the network key for key and shape for shape; with ``use_ema``
    (default, as DiffPure) the parameters are then replaced by ``checkpoint['ema']['shadow_params']``, paired
    with ``named_parameters()`` by position and checked in number and shape. The ``optimizer`` entry is
    ignored.

    Args:
        path: the checkpoint, e.g. ``checkpoint_8.pth`` of ``vp/cifar10_ddpmpp_deep_continuous``.
        config: a name from :data:`SCORE_SDE_CONFIGS` or a :class:`ScoreSDEConfig`.
        use_ema: load the EMA weights (the published evaluation weights); False loads ``checkpoint['model']``.
        sha256: expected hex digest of the file; a mismatch raises :class:`CheckpointError` before loading.

    Returns:
        a :class:`ScoreSDEScoreModel` on the CPU, in eval mode (dropout off).

    Raises:
        CheckpointError: missing/corrupt file, digest mismatch, missing entries, missing/unexpected/mis-shaped
            keys, or a wrong number/shape of EMA parameters (the message names them).
        RegistryError: unknown config name.

    Example::

        >>> import os, tempfile, torch
        >>> from robustkit.diffusion.ncsnpp import NCSNpp
        >>> from robustkit.diffusion.score_sde import (ScoreSDEConfig, ScoreSDEModelConfig,
        ...     ScoreSDEDataConfig, load_score_sde)
        >>> cfg = ScoreSDEConfig(model=ScoreSDEModelConfig(nf=8, ch_mult=(1, 2), num_res_blocks=1,
        ...                                                attn_resolutions=(4,)),
        ...                      data=ScoreSDEDataConfig(image_size=8))
        >>> net = NCSNpp(cfg, generator=torch.Generator().manual_seed(0))
        >>> ckpt = {"model": {"module." + k: v for k, v in net.state_dict().items()},
        ...         "ema": {"decay": 0.9999, "num_updates": 1,
        ...                 "shadow_params": [p.detach().clone() for p in net.parameters()]},
        ...         "step": 1}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save(ckpt, os.path.join(d, "checkpoint.pth"))
        ...     model = load_score_sde(os.path.join(d, "checkpoint.pth"), config=cfg)
        >>> model(torch.zeros(2, 3, 8, 8), 0.5).shape
        torch.Size([2, 3, 8, 8])
    """
    cfg = _resolve_config(config)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    verify_file(path, sha256)
    ckpt = load_state_dict_file(path)
    source = str(path)

    raw = ckpt.get("model")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} has no 'model' state dict (top-level entries: {sorted(map(str, ckpt))}); "
                              "expected score_sde's {'model', 'ema', 'optimizer', 'step'}")
    raw = _strip_prefix(raw)
    non_tensors = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{source} ['model'] has non-tensor entries: {', '.join(non_tensors[:10])}")

    # Shapes only, then plain CPU storage: no time spent initialising 106M weights that are overwritten.
    network = NCSNpp(cfg, device="meta").to_empty(device="cpu")
    load_strict(network, raw, source=f"{source} ['model']")
    if use_ema:
        ema = ckpt.get("ema")
        if not isinstance(ema, Mapping) or "shadow_params" not in ema:
            raise CheckpointError(f"{source} has no ema['shadow_params'] (top-level entries: "
                                  f"{sorted(map(str, ckpt))}); pass use_ema=False to load checkpoint['model']")
        state = _ema_state(network, ema["shadow_params"], raw, source)
        load_strict(network, state, source=f"{source} ['ema']['shadow_params']")
    log.info("loaded score_sde checkpoint %s (step %s, %s weights)", source, ckpt.get("step"),
             "EMA" if use_ema else "raw")
    return ScoreSDEScoreModel(network).eval()
