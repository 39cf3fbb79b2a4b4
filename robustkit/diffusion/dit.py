"""DiT: a Diffusion Transformer noise predictor with adaLN-Zero conditioning, trainable from scratch.

:class:`DiT` is a :class:`~robustkit.diffusion.ScoreModel`: ``eps = model(x_t, t, y=None)`` with
``x_t`` in the VP scaling (data in [-1, 1]) and continuous time ``t ∈ [0, 1]``. The image is cut into
``p × p`` patches by a strided convolution, fixed 2-D sine-cosine positions are added, ``depth``
transformer blocks run over the ``(H/p)·(W/p)`` tokens, and a final modulated layer decodes every
token back to its patch.

Conditioning (adaLN-Zero, Peebles & Xie §3.2). ``t`` is embedded as the sinusoidal embedding of
``time_scale · t`` followed by an MLP; a conditional model (``num_classes = K``) adds a learned label
embedding whose table has ``K + 1`` rows, the last being the null label ``K`` used for
classifier-free guidance (``y=None`` means ∅). From that vector ``c`` every block regresses six
vectors — shift, scale and gate for the attention and for the MLP — with a linear layer initialised to
zero: at initialisation every gate is zero, so every block is exactly the identity, and the decoder
(also zero-initialised) makes ``ε̂ ≡ 0``.

Nothing here touches grad mode: the model is an ordinary autograd graph, differentiable with respect
to ``x_t``.

Reference:
    Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023 (§3.2: patchify, adaLN-Zero
    blocks, the S/B/L/XL sizes of Table 1). Official code: https://github.com/facebookresearch/DiT.
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (sinusoidal positions, §3.5).
    Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021 (the null label).

Example::

    >>> import torch
    >>> from robustkit.diffusion.dit import DiT, DiTConfig
    >>> cfg = DiTConfig(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2,
    ...                 num_classes=10)
    >>> model = DiT(cfg)
    >>> model(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([3, 7])).shape
    torch.Size([2, 1, 8, 8])
    >>> float(model(torch.randn(2, 1, 8, 8), 0.5).detach().abs().max())   # y=None: null label; 0 at init
    0.0
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
from .unet import check_time_and_labels, sinusoidal_embedding

__all__ = ["ConditionEmbedding", "DiT", "DiTBlock", "DiTConfig", "check_time_and_labels", "modulate",
           "sincos_positions_2d"]


def _positive_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a :class:`DiT`. The defaults are DiT-S/2 (Peebles & Xie, Table 1: width 384,
    12 blocks, 6 heads, patch 2) on a 32×32 RGB input, class-conditional with 10 classes.

    Attributes:
        in_channels: image channels (also the output's: ε has ``x_t``'s shape).
        image_size: side of the square input; divisible by ``patch_size``.
        patch_size: side ``p`` of the patches (tokens = ``(image_size / p)²``).
        hidden_size: token width; divisible by ``num_heads`` and by 4 (2-D sine-cosine positions).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of each block's MLP over ``hidden_size``.
        num_classes: ``None`` for an unconditional model; else ``K`` (label table of ``K + 1`` rows,
            the last the null label).
        frequency_size: width of the sinusoidal time embedding fed to the time MLP (DiT: 256).
        time_scale: ``t`` is embedded as ``time_scale · t`` (1000: a 1000-step DDPM's step index).
    """

    in_channels: int = 3
    image_size: int = 32
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int | None = 10
    frequency_size: int = 256
    time_scale: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "patch_size", "hidden_size", "depth", "num_heads",
                     "frequency_size"):
            check_positive_int(name, getattr(self, name))
        _positive_real("mlp_ratio", self.mlp_ratio)
        _positive_real("time_scale", self.time_scale)
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        if self.image_size % self.patch_size:
            raise InputError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise InputError(f"hidden_size {self.hidden_size} must be divisible by 4 (half of it encodes rows, "
                             "half columns, each as sine and cosine)")

    @property
    def grid_size(self) -> int:
        """Tokens per side, ``image_size / patch_size``."""
        return self.image_size // self.patch_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``DiTConfig(**d)`` rebuilds it."""
        return asdict(self)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x (1 + scale) + shift`` per token (adaLN, Peebles & Xie §3.2). ``x [N, L, D]``, ``shift, scale [N, D]``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def sincos_positions_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``[grid², dim]``, tokens in row-major order.

    The first ``dim / 2`` features encode the row, the last ``dim / 2`` the column, each as the 1-D
    transformer encoding (Vaswani et al. 2017, §3.5).

    Example::

        >>> sincos_positions_2d(2, 8).shape
        torch.Size([4, 8])
    """
    if dim % 4:
        raise InputError(f"dim must be divisible by 4, got {dim}")
    idx = torch.arange(grid, dtype=torch.float32)
    rows, cols = idx.repeat_interleave(grid), idx.repeat(grid)
    return torch.cat([sinusoidal_embedding(rows, dim // 2), sinusoidal_embedding(cols, dim // 2)], dim=1)


class ConditionEmbedding(nn.Module):
    """``c = MLP(sin-emb(time_scale · t)) + E[y]``: the conditioning vector ``[N, dim]``.

    The label table has ``K + 1`` rows (the last the null label); ``y=None`` uses the null label.
    Unconditional models (``num_classes=None``) have no table.
    """

    def __init__(self, dim: int, num_classes: int | None, frequency_size: int, time_scale: float):
        super().__init__()
        self.num_classes = num_classes
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.time_mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None
        if self.label_emb is not None:
            nn.init.normal_(self.label_emb.weight, std=0.02)

    def forward(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        dtype = self.time_mlp[0].weight.dtype
        c = self.time_mlp(sinusoidal_embedding(t * self.time_scale, self.frequency_size).to(dtype))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            c = c + self.label_emb(y)
        return c


class _SelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``[N, L, D]``.

    torch's fused ``scaled_dot_product_attention`` is used, except when the weights are frozen and the
    input requires a gradient (an attack or a purifier differentiating with respect to the image): then
    the same formula runs as plain tensor ops, which autograd can differentiate twice. The fused CPU and
    CUDA kernels have no double backward, and RDC's exact gradient differentiates likelihood
    maximisation's own gradient steps. The two paths agree to rounding.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        # softmax(q kᵀ / sqrt(d_head)) v per head (Vaswani et al. 2017, Eq. 1)
        if torch.is_grad_enabled() and x.requires_grad and not self.qkv.weight.requires_grad:
            out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie §3.2, Fig. 3).

    ``x ← x + α₁ · Attn(LN(x)(1 + γ₁) + β₁)``, then ``x ← x + α₂ · MLP(LN(x)(1 + γ₂) + β₂)``, with
    ``(β₁, γ₁, α₁, β₂, γ₂, α₂) = Linear(SiLU(c))``; that linear starts at zero, so ``block(x, c) == x``.

    Shape:
        ``x [N, L, D]``, ``c [N, D]`` → ``[N, L, D]``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)  # adaLN-Zero: every gate starts at 0, the block at the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map to ``out_dim``; both linears start at zero (ε̂ = 0)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)
        for layer in (self.ada, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(ScoreModel):
    """Diffusion Transformer noise predictor (see the module docstring).

    Args:
        config: a :class:`DiTConfig`.

    Shape:
        ``x_t [N, C, H, W]``, ``t [N]`` (or scalar), ``y [N]`` int64 or None → ``[N, C, H, W]``.

    Reference:
        Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023;
        https://github.com/facebookresearch/DiT.
    """

    def __init__(self, config: DiTConfig):
        if not isinstance(config, DiTConfig):
            raise InputError(f"config must be a DiTConfig, got {type(config).__name__}")
        super().__init__(config.input_shape, config.num_classes)
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.patch = nn.Conv2d(config.in_channels, d, p, stride=p)
        # fixed, recomputed on construction: not part of the weights
        self.register_buffer("pos", sincos_positions_2d(config.grid_size, d)[None], persistent=False)
        self.cond = ConditionEmbedding(d, config.num_classes, config.frequency_size, config.time_scale)
        self.blocks = nn.ModuleList(DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.final = FinalLayer(d, p * p * config.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier-uniform linears (as transformers commonly are), then re-zero the adaLN-Zero layers.
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.final.linear:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch.bias)
        for mlp in (self.cond.time_mlp[0], self.cond.time_mlp[2]):
            nn.init.normal_(mlp.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        for layer in (self.final.ada, self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (``num_classes``), or ``None`` for unconditional models."""
        return self.num_classes

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, (H/p)(W/p), p·p·C]`` → ``[N, C, H, W]`` (each token's vector is a ``p × p × C`` patch)."""
        n, g, p, ch = tokens.shape[0], self.config.grid_size, self.config.patch_size, self.config.in_channels
        x = tokens.reshape(n, g, g, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, ch, g * p, g * p)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        check_time_and_labels(t, y, self.num_classes)
        c = self.cond(t, y)
        h = self.patch(x_t.to(self.patch.weight.dtype)).flatten(2).transpose(1, 2)  # [N, L, D], row-major
        h = h + self.pos.to(h.dtype)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c)).to(x_t.dtype)
