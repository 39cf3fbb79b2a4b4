"""A compact class-conditional U-Net noise predictor, trainable with robustkit's own trainer.

:class:`UNet` is a :class:`~robustkit.diffusion.ScoreModel`: ``eps = model(x_t, t, y=None)`` with
``x_t`` in the VP scaling (data in [-1, 1]) and continuous time ``t ∈ [0, 1]``. It is the DDPM
encoder/decoder layout — residual blocks at every resolution, self-attention at chosen resolutions
and in the middle, skip connections from every encoder stage to the decoder — sized by a
:class:`UNetConfig`, so an 8×8 digits model of a few tens of thousands of parameters and a CIFAR-10
model of millions come from the same code.

Conditioning. ``t`` enters through a sinusoidal embedding of ``time_scale · t`` (so the frequencies
match a 1000-step DDPM) and an MLP. A conditional model (``num_classes = K``) adds a learned embedding
of the label to it; its table has ``K + 1`` rows, the last being the "null" label ``K``. Training
with the label replaced by ``K`` a fraction of the time (classifier-free guidance training, see
:mod:`robustkit.diffusion.train`) makes one network give both ``ε(x, t, y)`` and ``ε(x, t, ∅)``;
``y=None`` means ``∅``. The embedding reaches every residual block as a per-channel scale and shift
of its normalised activations (FiLM).

Nothing here touches grad mode: the model is an ordinary autograd graph, differentiable with respect
to ``x_t`` (attacks differentiate through purification and diffusion classifiers).

Reference:
    Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (the U-Net of
    Appendix B: wide ResNet blocks, group norm, 16×16 self-attention, sinusoidal time embedding).
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (scale-shift
    conditioning of the normalisation, class embedding added to the time embedding).
    Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop (null label, Eq. 6).
    Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018.

Example::

    >>> import torch
    >>> from robustkit.diffusion.unet import UNet, UNetConfig
    >>> cfg = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
    ...                  num_res_blocks=1, attention_resolutions=(4,), num_groups=4, num_classes=10)
    >>> model = UNet(cfg)
    >>> x = torch.randn(2, 1, 8, 8, requires_grad=True)
    >>> model(x, torch.tensor([0.1, 0.9]), torch.tensor([3, 7])).shape
    torch.Size([2, 1, 8, 8])
    >>> model(x, 0.5).shape                       # y=None: the null label
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..utils import check_positive_int
from .score_model import ScoreModel

__all__ = ["ClassifierFreeGuidance", "UNet", "UNetConfig", "check_time_and_labels", "sinusoidal_embedding"]

#: Largest accepted time: 1 plus slack for the discrete schedule's last step (time_of(999) = 1.0034).
T_MAX = 1.05


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`. The defaults are DDPM's CIFAR-10 network (Ho et al. 2020,
    Appendix B: 128 channels, multipliers 1-2-2-2, two blocks per level, attention at 16×16,
    dropout 0.1), made class-conditional with 10 classes.

    Attributes:
        in_channels: image channels (also the number of output channels: ε has ``x_t``'s shape).
        image_size: side of the square input; divisible by ``2 ** (len(channel_mult) - 1)``.
        base_channels: width of the first level.
        channel_mult: width multiplier per level; one downsampling between consecutive levels.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attention_resolutions: feature-map sides whose blocks get self-attention (e.g. ``(16,)``).
        mid_attention: self-attention between the two residual blocks of the middle.
        num_heads: attention heads (must divide the width where attention is used).
        num_classes: ``None`` for an unconditional model; else the number of classes ``K`` (the
            label embedding has ``K + 1`` rows, the last one the null label).
        dropout: dropout inside residual blocks (training only).
        num_groups: GroupNorm groups; must divide every level width.
        emb_channels: width of the time/class embedding (``None``: ``4 * base_channels``).
        time_scale: ``t`` is embedded as ``time_scale · t`` (1000: a 1000-step DDPM's step index).
    """

    in_channels: int = 3
    image_size: int = 32
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    mid_attention: bool = True
    num_heads: int = 1
    num_classes: int | None = 10
    dropout: float = 0.1
    num_groups: int = 32
    emb_channels: int | None = None
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise list arguments (e.g. from JSON) to tuples once
        set_(self, "channel_mult", tuple(self.channel_mult))
        set_(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "num_heads", "num_groups"):
            check_positive_int(name, getattr(self, name))
        if not self.channel_mult:
            raise InputError("channel_mult must name at least one level")
        for m in self.channel_mult:
            check_positive_int("every entry of channel_mult", m)
        for r in self.attention_resolutions:
            check_positive_int("every entry of attention_resolutions", r)
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        if self.emb_channels is not None:
            check_positive_int("emb_channels", self.emb_channels)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise InputError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.time_scale, (int, float)) and math.isfinite(self.time_scale)
                and self.time_scale > 0):
            raise InputError(f"time_scale must be a positive finite number, got {self.time_scale!r}")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise InputError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} "
                             f"(one halving between the {levels} levels of channel_mult={self.channel_mult})")
        sides = self.level_sizes
        for r in self.attention_resolutions:
            if r not in sides:
                raise InputError(f"attention resolution {r} is not a feature-map side of this network "
                                 f"(sides {sides})")
        for ch in self.level_channels:
            if ch % self.num_groups:
                raise InputError(f"level width {ch} is not divisible by num_groups={self.num_groups}")
        attn_widths = [ch for ch, s in zip(self.level_channels, sides) if s in self.attention_resolutions]
        if self.mid_attention:
            attn_widths.append(self.level_channels[-1])
        for ch in attn_widths:
            if ch % self.num_heads:
                raise InputError(f"attention width {ch} is not divisible by num_heads={self.num_heads}")

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Width of each level, ``base_channels * mult``."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Feature-map side of each level."""
        return tuple(self.image_size // 2 ** i for i in range(len(self.channel_mult)))

    @property
    def embedding_channels(self) -> int:
        return self.emb_channels if self.emb_channels is not None else 4 * self.base_channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists); ``UNetConfig(**d)`` rebuilds it."""
        return asdict(self)


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[sin(x·f_0..f_{h-1}) | cos(x·f_0..f_{h-1})]`` with ``f_i = max_period^(-i/h)``, ``h = dim // 2``.

    The transformer position encoding (Vaswani et al. 2017, §3.5) used by DDPM for the step index;
    computed in float32, zero-padded when ``dim`` is odd.

    Shape:
        ``x [N]`` → ``[N, dim]``.

    Example::

        >>> import torch
        >>> sinusoidal_embedding(torch.tensor([0.0]), 4).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=x.device) * (-math.log(max_period) / half))
    args = x.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class _ResBlock(nn.Module):
    """GN → SiLU → conv → FiLM(emb) → SiLU → dropout → conv, plus a (1×1 when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int, emb_ch: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, ch: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, hh * ww).unbind(1)
        # [N, heads, pixels, head_dim]; softmax(q kᵀ / sqrt(d)) v (Vaswani et al. 2017, Eq. 1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, hh, ww))


class _Stage(nn.Module):
    """One residual block, optionally followed by self-attention."""

    def __init__(self, c_in: int, c_out: int, cfg: UNetConfig, attention: bool):
        super().__init__()
        self.res = _ResBlock(c_in, c_out, cfg.embedding_channels, cfg.num_groups, cfg.dropout)
        self.attn = _Attention(c_out, cfg.num_groups, cfg.num_heads) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class _Down(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_time_and_labels(t: torch.Tensor, y: torch.Tensor | None, num_classes: int | None) -> None:
    """Raise :class:`InputError` for ``t`` outside ``[0, T_MAX]`` or labels outside ``[0, K]`` (``K`` = the null label).

    One host sync for both range checks: out-of-range labels would index garbage, and ``t`` of the order of a
    step index (e.g. 999) is a common mistake. :data:`T_MAX` leaves room above 1 because
    ``DiscreteVPSchedule.time_of(999)`` = 1.0034 (DDIM/DDPM from the last discrete step).
    """
    bad_t = ((t < 0) | (t > T_MAX) | torch.isnan(t)).any()
    bad = bad_t if y is None else bad_t | ((y < 0) | (y > num_classes)).any()
    if bool(bad):
        if bool(bad_t):
            raise InputError(f"t must lie in [0, 1] (continuous VP time), got values in "
                             f"[{t.min().item()}, {t.max().item()}]")
        raise InputError(f"class labels must lie in [0, {num_classes}] ({num_classes} is the null label), "
                         f"got {y.tolist()}")


class UNet(ScoreModel):
    """Class-conditional (or unconditional) U-Net predicting the noise ε of a VP diffusion.

    ``eps = model(x_t, t, y=None)``; ``y`` holds labels in ``[0, K]`` where ``K = num_classes`` is the
    null label, and ``y=None`` means the null label for every example (the unconditional prediction
    of a model trained with label dropout). An unconditional model (``num_classes=None``) has no label
    embedding and accepts only ``y=None``. Raises :class:`~robustkit.InputError` for ``t`` outside
    ``[0, 1]`` (up to :data:`T_MAX` = 1.05 is accepted: the last step of a 1000-step
    :class:`~robustkit.diffusion.DiscreteVPSchedule` maps to t = 1.0034) or labels outside ``[0, K]``.
    It computes in its parameters' dtype (or under the caller's autocast) and returns ``x_t``'s dtype.

    Shape:
        ``x_t [N, C, S, S]``, ``t`` scalar or ``[N]``, ``y [N]`` int64 or ``None`` → ``[N, C, S, S]``.

    Reference:
        Ho et al., NeurIPS 2020 (Appendix B); Dhariwal & Nichol, NeurIPS 2021; Ho & Salimans 2021.

    Example::

        >>> import torch
        >>> cfg = UNetConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2),
        ...                  num_res_blocks=1, attention_resolutions=(), num_groups=4, num_classes=3)
        >>> model = UNet(cfg)
        >>> model.null_label, model.num_classes
        (3, 3)
        >>> x = torch.randn(1, 1, 8, 8, requires_grad=True)
        >>> model(x, 0.3, torch.tensor([3])).equal(model(x, 0.3))   # label K is y=None
        True
    """

    def __init__(self, config: UNetConfig):
        if not isinstance(config, UNetConfig):
            raise InputError(f"config must be a UNetConfig, got {type(config).__name__}")
        super().__init__(config.input_shape, config.num_classes)
        self.config = config
        cfg = config
        base, emb_ch = cfg.base_channels, cfg.embedding_channels
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_ch) if cfg.num_classes is not None else None

        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base]
        ch = base
        last = len(cfg.channel_mult) - 1
        for level, (width, side) in enumerate(zip(cfg.level_channels, cfg.level_sizes)):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Stage(ch, width, cfg, side in cfg.attention_resolutions))
                ch = width
                skip_channels.append(ch)
            if level != last:
                self.down.append(_Down(ch))
                skip_channels.append(ch)

        self.mid1 = _Stage(ch, ch, cfg, cfg.mid_attention)
        self.mid2 = _Stage(ch, ch, cfg, False)

        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            width, side = cfg.level_channels[level], cfg.level_sizes[level]
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(_Stage(ch + skip_channels.pop(), width, cfg, side in cfg.attention_resolutions))
                ch = width
            if level != 0:
                self.up.append(_Up(ch))

        self.norm_out = nn.GroupNorm(cfg.num_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # ε̂ = 0 at initialisation
        nn.init.zeros_(self.conv_out.bias)

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (``num_classes``), or ``None`` for unconditional models."""
        return self.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The conditioning vector ``[N, emb_channels]`` fed to every residual block."""
        dtype = self.time_mlp[0].weight.dtype
        emb = self.time_mlp(sinusoidal_embedding(t * self.config.time_scale, self.config.base_channels).to(dtype))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.label_emb(y)
        return emb

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        check_time_and_labels(t, y, self.num_classes)
        emb = self.embed(t, y)
        h = self.conv_in(x_t.to(self.conv_in.weight.dtype))
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid2(self.mid1(h, emb), emb)
        for block in self.up:
            h = block(h) if isinstance(block, _Up) else block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(x_t.dtype)


class ClassifierFreeGuidance(ScoreModel):
    """Classifier-free guidance of a conditional model with a null label, as a ScoreModel.

    ``eps = (1 + w) ε(x, t, y) − w ε(x, t, ∅)`` (Ho & Salimans 2021, Eq. 6); ``w = 0`` is the plain
    conditional prediction, ``y=None`` the unconditional one. Both predictions come from one batched
    call of the wrapped model. Differentiable like the wrapped model.

    Args:
        model: a conditional :class:`UNet` (or any ScoreModel whose ``y=None`` means ∅).
        guidance_scale: ``w >= 0``.

    Shape:
        as the wrapped model.

    Reference:
        Ho & Salimans, "Classifier-Free Diffusion Guidance", NeurIPS 2021 workshop, Eq. 6.

    Example::

        >>> import torch
        >>> cfg = UNetConfig(in_channels=1, image_size=4, base_channels=4, channel_mult=(1,),
        ...                  num_res_blocks=1, attention_resolutions=(), mid_attention=False,
        ...                  num_groups=2, num_classes=2)
        >>> guided = ClassifierFreeGuidance(UNet(cfg), guidance_scale=2.0)
        >>> guided(torch.zeros(3, 1, 4, 4), 0.5, torch.tensor([0, 1, 1])).shape
        torch.Size([3, 1, 4, 4])
    """

    def __init__(self, model: ScoreModel, guidance_scale: float):
        if not isinstance(model, ScoreModel) or not model.conditional:
            raise InputError("classifier-free guidance needs a conditional ScoreModel")
        w = float(guidance_scale)
        if not (w >= 0 and math.isfinite(w)):
            raise InputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        super().__init__(model.input_shape, model.num_classes)
        self.model = model
        self.guidance_scale = w

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None or self.guidance_scale == 0:
            return self.model(x_t, t, y)
        null = torch.full_like(y, self.num_classes)
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return (1 + self.guidance_scale) * cond - self.guidance_scale * uncond
