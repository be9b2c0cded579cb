"""SiMBA image tower: a four-stage pyramid with Mamba token mixing, as CLIP-Mamba trained it.

Stage 1 starts with a convolutional stem (a stride-2 7x7 conv and two 3x3 convs, each with
BatchNorm and ReLU, then a stride-2 3x3 projection and LayerNorm: stride 4); stages 2-4 start
with a stride-2 3x3 conv and LayerNorm. Each block is
    x = x + drop_path(mamba(layer_norm(x)))          (token mixer over the row-major tokens)
    x = x + drop_path(channel_mixer(norm2(x)))
where the channel mixer is PVT-v2's convolutional MLP (Linear, 3x3 depthwise conv, GELU, Linear;
`channel_mixer="mlp"`, what the released SiMBA and CLIP-Mamba models use) or EinFFT
(`"einfft"`). Stages 1-3 end in a LayerNorm; after stage 4 the mean of the tokens is a class
token that passes one more block (Mamba over that single token, then a plain MLP or EinFFT),
and its final LayerNorm output is the pooled feature (width `embed_dims[-1]`), which `head`
projects to the joint embedding without a bias (CLIP-Mamba's `image_projection`).

No position embedding, so any image whose sides are multiples of 32 runs. Module and parameter
names follow SiMBA's state dict (`patch_embed{i}`, `block{i}.{j}.attn.mamba.*`, `norm{i}`,
`post_network.0.*`), so a CLIP-Mamba image tower loads by name, `head` taking the transposed
projection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.utils.checkpoint import checkpoint

from ..config_mixin import FromDict
from .freeze import Groups, LockableTower, block_groups
from .mamba import MambaMixer
from .validation import check_images
from .vmamba import init_weights as init_linear_and_norm

CHANNEL_MIXERS = ("mlp", "einfft")
NUM_STAGES = 4
STEM_STRIDE = 4

@dataclass
class SiMBAConfig(FromDict):
    """Hyper-parameters of the SiMBA tower; `image_size` is nominal (any multiple of 32 runs).

    norm_eps is the blocks' and stages' LayerNorm epsilon; the stem, the downsamples and the
    LayerNorm in front of each Mamba use PyTorch's default 1e-5, as SiMBA does.
    """

    image_size: int = 224
    in_chans: int = 3
    stem_hidden_dim: int = 32
    embed_dims: Sequence[int] = (64, 128, 320, 448)
    mlp_ratios: Sequence[float] = (8, 8, 4, 4)
    depths: Sequence[int] = (3, 4, 6, 3)
    channel_mixer: str = "mlp"
    einfft_blocks: int = 4
    einfft_sparsity: float = 0.01
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-6
    drop_path_rate: float = 0.1
    scan_backend: str = "auto"
    head_bias: bool = False

    def __post_init__(self) -> None:
        self.embed_dims = tuple(int(d) for d in self.embed_dims)
        self.mlp_ratios = tuple(float(r) for r in self.mlp_ratios)
        self.depths = tuple(int(d) for d in self.depths)
        for name in ("embed_dims", "mlp_ratios", "depths"):
            values = getattr(self, name)
            if len(values) != NUM_STAGES or min(values) <= 0:
                raise ValueError(f"SiMBAConfig.{name} must hold {NUM_STAGES} positive numbers, got {values}")
        self.require_positive_ints("image_size", "in_chans", "stem_hidden_dim", "einfft_blocks", "d_state", "d_conv", "expand")
        if self.channel_mixer not in CHANNEL_MIXERS:
            raise ValueError(f"unknown channel_mixer {self.channel_mixer!r}; choose from {CHANNEL_MIXERS}")
        if self.channel_mixer == "einfft":
            bad = [d for d in self.embed_dims if d % self.einfft_blocks]
            if bad:
                raise ValueError(f"einfft_blocks={self.einfft_blocks} must divide every stage width, not {bad}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def total_stride(self) -> int:
        """Input pixels per feature of the last stage along each axis."""
        return STEM_STRIDE * 2 ** (NUM_STAGES - 1)


def to_tokens(x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
    """(B, C, H, W) -> (row-major tokens (B, H*W, C), H, W)."""
    height, width = x.shape[-2:]
    return x.flatten(2).transpose(1, 2), height, width


def to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Row-major tokens (B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class ConvStem(nn.Module):
    """Stride-4 stem: 7x7/2 conv, two 3x3 convs (BatchNorm + ReLU after each), 3x3/2 projection, LayerNorm."""

    def __init__(self, in_chans: int, hidden: int, out: int) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for c_in, kernel, stride in [(in_chans, 7, 2), (hidden, 3, 1), (hidden, 3, 1)]:
            layers += [nn.Conv2d(c_in, hidden, kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden, out, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x, height, width = to_tokens(self.proj(self.conv(images)))
        return self.norm(x), height, width


class ConvDownsample(nn.Module):
    """Halve H and W with a 3x3 stride-2 conv, then LayerNorm the tokens."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, out, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        x, height, width = to_tokens(self.proj(x))
        return self.norm(x), height, width


class NormedMamba(nn.Module):
    """LayerNorm then a Mamba-1 mixer over the token sequence (SiMBA's token mixer)."""

    def __init__(self, dim: int, cfg: SiMBAConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = MambaMixer(dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                                scan_backend=cfg.scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mamba(self.norm(x))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv applied to row-major tokens of an H x W map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return to_tokens(self.dwconv(to_map(x, height, width)))[0]


class ConvMlp(nn.Module):
    """PVT-v2's feed-forward: Linear, 3x3 depthwise conv over the token map, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), height, width)))


class Mlp(nn.Module):
    """Linear-GELU-Linear (the class-token block's channel mixer)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EinFFT(nn.Module):
    """SiMBA's frequency-domain channel mixer.

    Channels split into `num_blocks` blocks; a 2D FFT (orthonormal) runs over the token axis and
    the block axis; in that domain two block-diagonal complex linear layers (weights W = w[0] +
    i w[1], biases likewise) mix channels within each block, with ReLU applied to the real and
    imaginary parts after the first and soft-shrinkage (sparsity_threshold) after the second;
    the real part of the inverse FFT is the output. Computed in float32.
    """

    def __init__(self, dim: int, num_blocks: int = 4, sparsity_threshold: float = 0.01, scale: float = 0.02) -> None:
        super().__init__()
        if dim % num_blocks:
            raise ValueError(f"EinFFT: num_blocks {num_blocks} must divide dim {dim}")
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        weight_shape = (2, num_blocks, self.block_size, self.block_size)
        self.complex_weight_1 = nn.Parameter(torch.randn(weight_shape) * scale)
        self.complex_weight_2 = nn.Parameter(torch.randn(weight_shape) * scale)
        self.complex_bias_1 = nn.Parameter(torch.randn(2, num_blocks, self.block_size) * scale)
        self.complex_bias_2 = nn.Parameter(torch.randn(2, num_blocks, self.block_size) * scale)

    @staticmethod
    def _complex_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Per-block complex x @ W + b; x (..., blocks, block_size) complex."""
        w = torch.complex(weight[0], weight[1])
        b = torch.complex(bias[0], bias[1])
        return torch.einsum("...bi,bio->...bo", x, w) + b

    @staticmethod
    def _split_apply(x: torch.Tensor, fn) -> torch.Tensor:
        return torch.complex(fn(x.real), fn(x.imag))

    def forward(self, x: torch.Tensor, height: int = 0, width: int = 0) -> torch.Tensor:
        """(B, N, C) -> (B, N, C); height and width are unused (the FFT runs over the token sequence)."""
        batch, length, dim = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            freq = torch.fft.fft2(x.float().view(batch, length, self.num_blocks, self.block_size),
                                  dim=(1, 2), norm="ortho")
            freq = self._split_apply(self._complex_linear(freq, self.complex_weight_1, self.complex_bias_1), F.relu)
            freq = self._complex_linear(freq, self.complex_weight_2, self.complex_bias_2)
            if self.sparsity_threshold:
                freq = self._split_apply(freq, lambda t: F.softshrink(t, self.sparsity_threshold))
            out = torch.fft.ifft2(freq, dim=(1, 2), norm="ortho").real
        return out.reshape(batch, length, dim).to(x.dtype)


def make_channel_mixer(dim: int, mlp_ratio: float, cfg: SiMBAConfig, conv: bool) -> nn.Module:
    if cfg.channel_mixer == "einfft":
        return EinFFT(dim, cfg.einfft_blocks, cfg.einfft_sparsity)
    hidden = int(dim * mlp_ratio)
    return ConvMlp(dim, hidden) if conv else Mlp(dim, hidden)


class SiMBABlock(nn.Module):
    """x + drop_path(mamba(norm(x))), then x + drop_path(channel_mixer(norm2(x)))."""

    def __init__(self, dim: int, mlp_ratio: float, cfg: SiMBAConfig, drop_path: float = 0.0, conv_mlp: bool = True) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = NormedMamba(dim, cfg)
        self.mlp = make_channel_mixer(dim, mlp_ratio, cfg, conv=conv_mlp)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class SiMBAVisionTower(LockableTower, nn.Module):
    """SiMBA backbone + class-token pooling + bias-free projection: (B, 3, H, W) -> (B, embed_dim)."""

    def __init__(self, cfg: SiMBAConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        dims = cfg.embed_dims
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        start = 0
        for i in range(NUM_STAGES):
            embed = ConvStem(cfg.in_chans, cfg.stem_hidden_dim, dims[0]) if i == 0 else ConvDownsample(dims[i - 1], dims[i])
            blocks = nn.ModuleList(SiMBABlock(dims[i], cfg.mlp_ratios[i], cfg, drop_path=rate)
                                   for rate in rates[start:start + cfg.depths[i]])
            start += cfg.depths[i]
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=cfg.norm_eps))
        self.post_network = nn.ModuleList([SiMBABlock(dims[-1], cfg.mlp_ratios[-1], cfg, conv_mlp=False)])
        self.head = nn.Linear(dims[-1], embed_dim, bias=cfg.head_bias)
        self.apply(init_weights)

    @property
    def num_features(self) -> int:
        return self.cfg.embed_dims[-1]

    def stage(self, index: int) -> Tuple[nn.Module, nn.ModuleList, nn.LayerNorm]:
        """(patch embed, blocks, norm) of stage `index` (0-based)."""
        return getattr(self, f"patch_embed{index + 1}"), getattr(self, f"block{index + 1}"), getattr(self, f"norm{index + 1}")

    def layer_group_prefixes(self) -> Groups:
        """The stem, one group per block (a stage's norm and the next downsample join its last
        block), the head."""
        groups: Groups = [["patch_embed1."]]
        stages = len(self.cfg.depths)
        for s in range(1, stages + 1):
            blocks = block_groups(getattr(self, f"block{s}"), f"block{s}")
            if s < stages:
                blocks[-1] += [f"norm{s}.", f"patch_embed{s + 1}."]
            groups += blocks
        return groups + [["post_network.", f"norm{stages}.", "head."]]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def _run_block(self, block: SiMBABlock, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, height, width, use_reentrant=False)
        return block(x, height, width)

    def forward_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """(batch, 3, H, W) -> stage-4 tokens (batch, H/32 * W/32, width), before pooling."""
        check_images(images, self.cfg.in_chans, self.cfg.total_stride, "SiMBA's stride-4 stem and 3 downsamples")
        x = images
        for i in range(NUM_STAGES):
            embed, blocks, norm = self.stage(i)
            x, height, width = embed(x)
            for block in blocks:
                x = self._run_block(block, x, height, width)
            if i < NUM_STAGES - 1:
                x = to_map(norm(x), height, width)
        return x, height, width

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) -> pooled features (batch, embed_dims[-1]), before the projection."""
        x, height, width = self.forward_tokens(images)
        cls = x.mean(dim=1, keepdim=True)
        for block in self.post_network:  # the Mamba sees the class token alone
            cls = block(cls, height, width)
        return self.stage(NUM_STAGES - 1)[2](cls[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))


def init_weights(module: nn.Module) -> None:
    """SiMBA's init, applied to every module as SiMBA does (the Mamba projections included, so
    dt_proj's bias starts at 0): VMamba's (truncated-normal Linear weights, std 0.02, zero
    biases, unit LayerNorms) plus He-normal Conv2d weights by fan-out with zero biases."""
    init_linear_and_norm(module)
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
