"""VMamba image tower (VMamba v2 layout): SS2D mixers in VSS blocks over a 4-stage pyramid.

Feature maps are channel-last (batch, H, W, channels) throughout, as VMamba's
non-channel-first path; SS2D's depthwise conv + SiLU and its four-direction scan take them as
they are (fused CPU ops with scan_backend "auto"; with a named backend the conv runs as
nn.Conv2d on a channel-first view, channels_last memory format). Module and
parameter names follow VMamba's state dict, so its checkpoints load after
`vmamba_checkpoint_to_tower`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.transformer import AttentionalPooler
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

from climp.ops import dwconv2d_silu, fused_ss2d_available, ss2d
from ..config_mixin import FromDict
from .freeze import Groups, LockableTower, block_groups
from .mamba import at_least_float32, mamba_init_
from .validation import check_images

NUM_DIRECTIONS = 4
POOLS = ("avg", "attn", "pyramid", "pyramid_avg", "pyramid_grid")
# Parameter-name prefixes of the tower's output head: final norm(s), pooling and projection.
HEAD_PREFIXES = ("norm.", "stage_norms.", "attn_pool.", "head.")

# forward_type -> whether SS2D gates its output with silu(z) from a second in_proj half.
# "v2" and "v05" differ in VMamba only by kernel choice (fp32 forcing, einsum vs conv1d).
FORWARD_TYPES: Dict[str, bool] = {"v2": True, "v05": True, "v2_noz": False, "v05_noz": False}

# Downsample versions between stages: conv kernel size and padding (stride 2, then LayerNorm).
DOWNSAMPLE_KERNELS: Dict[str, Tuple[int, int]] = {"v2": (2, 0), "v3": (3, 1)}

@dataclass
class VMambaConfig(FromDict):
    """Hyper-parameters of the VMamba tower; `image_size` is nominal (any divisible size runs)."""

    image_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    depths: Sequence[int] = (2, 2, 9, 2)
    dims: Union[int, Sequence[int]] = 96
    d_state: int = 1
    ssm_ratio: float = 2.0
    dt_rank: Union[int, str] = "auto"
    d_conv: int = 3
    conv_bias: bool = True
    forward_type: str = "v2"
    mlp_ratio: float = 4.0
    gmlp: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.2
    downsample: str = "v3"
    patch_norm: bool = True
    norm_eps: float = 1e-5
    scan_backend: str = "auto"
    pool: str = "avg"
    attn_pool_heads: int = 4
    proj_bias: bool = True

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        if not self.depths or min(self.depths) < 1:
            raise ValueError(f"depths must be a non-empty list of positive ints, got {self.depths}")
        if isinstance(self.dims, int):
            self.dims = tuple(self.dims * 2**i for i in range(len(self.depths)))
        else:
            self.dims = tuple(int(d) for d in self.dims)
        if len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must have the same length")
        if self.patch_size < 2 or self.patch_size % 2:
            raise ValueError(f"patch_size must be even (the stem is two stride patch_size/2 convs), got {self.patch_size}")
        if self.forward_type not in FORWARD_TYPES:
            raise ValueError(f"unknown forward_type {self.forward_type!r}; choose from {sorted(FORWARD_TYPES)}")
        if self.downsample not in DOWNSAMPLE_KERNELS:
            raise ValueError(f"unknown downsample {self.downsample!r}; choose from {sorted(DOWNSAMPLE_KERNELS)}")
        if self.d_conv < 1 or self.d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd (1 disables the conv), got {self.d_conv}")
        if self.ssm_ratio <= 0 or self.d_state < 1 or self.mlp_ratio < 0:
            raise ValueError("ssm_ratio and d_state must be positive and mlp_ratio non-negative")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose from {POOLS}")
        if self.pool == "attn" and self.dims[-1] % self.attn_pool_heads:
            raise ValueError(f"attn_pool_heads={self.attn_pool_heads} must divide the last stage's "
                             f"width {self.dims[-1]}")
        if self.dt_rank != "auto" and not (isinstance(self.dt_rank, int) and self.dt_rank > 0):
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")

    @property
    def image_hw(self) -> Tuple[int, int]:
        """The nominal (training) image size as (height, width)."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def total_stride(self) -> int:
        """Input pixels per feature of the last stage along each axis."""
        return self.patch_size * 2 ** (len(self.depths) - 1)


class Permute(nn.Module):
    """Reorder dimensions (switches between channel-first and channel-last layouts)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class Mlp(nn.Module):
    """Linear-GELU-Linear feed-forward on the last dimension."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class GatedMlp(nn.Module):
    """Gated feed-forward: fc1 gives a value half and a gate half, fc2(value * gelu(gate))."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(value * self.act(gate)))


class SS2D(nn.Module):
    """2D selective scan: one SSM per traversal (rows, columns, and both reversed) of the map.

    Each direction k has its own x_proj (dt, B, C from the features), dt_proj, A and D
    (direction-major); `climp.ops.ss2d` runs the four scans and sums them onto the grid.
    Input and output are channel-last (batch, H, W, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: Union[int, str] = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        forward_type: str = "v2",
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        scan_backend: str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if forward_type not in FORWARD_TYPES:
            raise ValueError(f"unknown forward_type {forward_type!r}; choose from {sorted(FORWARD_TYPES)}")
        self.gated = FORWARD_TYPES[forward_type]
        self.d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        k, d_inner = NUM_DIRECTIONS, self.d_inner

        self.in_proj = nn.Linear(d_model, d_inner * (2 if self.gated else 1), bias=False)
        self.conv2d = (
            nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
            if d_conv > 1 else None
        )
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            self.x_proj_weight.uniform_(-self.d_inner**-0.5, self.d_inner**-0.5)
        mamba_init_(self.A_logs, self.Ds, self.dt_projs_bias, self.dt_projs_weight, dt_min=dt_min, dt_max=dt_max,
                    dt_init_floor=dt_init_floor)

    def scan_2d(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, d_inner) -> (batch, H, W, d_inner): the four directional scans, merged.

        x_proj runs once over the map in its own order (a per-pixel projection commutes with
        every traversal); `ss2d` traverses, scans and merges (fused on the CPU)."""
        batch, height, width, d_inner = x.shape
        x_dbl = F.linear(x, self.x_proj_weight.flatten(0, 1))  # (batch, H, W, 4 * (rank + 2 * state))
        return ss2d(
            x,
            x_dbl.view(batch, height, width, NUM_DIRECTIONS, self.dt_rank + 2 * self.d_state),
            self.dt_projs_weight,
            at_least_float32(self.dt_projs_bias),
            -torch.exp(at_least_float32(self.A_logs)),
            at_least_float32(self.Ds),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        if self.gated:
            xz, z = xz.chunk(2, dim=-1)
        if self.conv2d is not None and fused_ss2d_available(xz, self.scan_backend):
            # the fused channel-last conv + SiLU (reads the x half of xz as the strided view it is)
            xz = dwconv2d_silu(xz, self.conv2d.weight, self.conv2d.bias)
        else:
            if self.conv2d is not None:
                # A channel-last map viewed as (batch, d_inner, H, W): the conv runs in channels_last
                # memory format and its output permuted back is channel-last without a copy.
                xz = self.conv2d(xz.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            xz = self.act(xz)
        y = self.out_norm(self.scan_2d(xz))
        if self.gated:
            y = y * F.silu(z)
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """Pre-norm residual block: x + SS2D(norm(x)), then x + MLP(norm2(x)) (no MLP if mlp_ratio=0)."""

    def __init__(self, dim: int, cfg: VMambaConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.op = SS2D(
            dim, d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, dt_rank=cfg.dt_rank, d_conv=cfg.d_conv,
            conv_bias=cfg.conv_bias, forward_type=cfg.forward_type, dropout=cfg.drop_rate,
            norm_eps=cfg.norm_eps, scan_backend=cfg.scan_backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2: Optional[nn.LayerNorm] = None
        self.mlp: Optional[nn.Module] = None
        if cfg.mlp_ratio > 0:
            mlp_cls = GatedMlp if cfg.gmlp else Mlp
            self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
            self.mlp = mlp_cls(dim, int(dim * cfg.mlp_ratio), drop=cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


def make_patch_embed(cfg: VMambaConfig) -> nn.Sequential:
    """VMamba "v2" stem: two stride-(patch/2) convs with LayerNorm + GELU between; out channel-last."""
    stride = cfg.patch_size // 2
    kernel, padding = 2 * (stride // 2) + 1, stride // 2
    mid, out = cfg.dims[0] // 2, cfg.dims[0]

    def norm(dim: int) -> nn.Module:
        return nn.LayerNorm(dim, eps=cfg.norm_eps) if cfg.patch_norm else nn.Identity()

    return nn.Sequential(
        nn.Conv2d(cfg.in_chans, mid, kernel, stride=stride, padding=padding),
        Permute(0, 2, 3, 1),
        norm(mid),
        Permute(0, 3, 1, 2),
        nn.GELU(),
        nn.Conv2d(mid, out, kernel, stride=stride, padding=padding),
        Permute(0, 2, 3, 1),
        norm(out),
    )


def make_downsample(dim: int, out_dim: int, cfg: VMambaConfig) -> nn.Sequential:
    """Halve H and W with a stride-2 conv, then LayerNorm; channel-last in and out."""
    kernel, padding = DOWNSAMPLE_KERNELS[cfg.downsample]
    return nn.Sequential(
        Permute(0, 3, 1, 2),
        nn.Conv2d(dim, out_dim, kernel, stride=2, padding=padding),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim, eps=cfg.norm_eps),
    )


class VSSStage(nn.Module):
    """A run of VSS blocks at one resolution, then the downsample to the next stage."""

    def __init__(self, blocks: List[VSSBlock], downsample: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample
        self.grad_checkpointing = False

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks only: its feature map before the downsample."""
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.run_blocks(x))


class VMambaVisionTower(LockableTower, nn.Module):
    """VMamba backbone + pooling + Linear to the joint embedding: (B,3,H,W) -> (B,E).

    Pooling (none uses a positional embedding, so any H, W divisible by `cfg.total_stride`
    works):
      * "avg": VMamba's global average of the final map;
      * "attn": one learned query attending over the final map (open_clip's AttentionalPooler,
        as CoCa pools);
      * "pyramid": every stage's map, layer-normed, max-pooled over locations and concatenated:
        the head sees each stage's strongest local response, so a small object's colour and
        shape are not diluted by its share of the image as in an average. A maximum over
        locations grows with their number, so it is not scale-invariant;
      * "pyramid_avg": the same per-stage normed maps, averaged over locations (scale-invariant);
      * "pyramid_grid": as "pyramid", but a map larger than the stage's map at `image_size` is
        first average-pooled to that size, so the maximum runs over as many locations, each
        covering the same share of the image, at any input side (same parameters as "pyramid";
        identical at `image_size`).
    """

    def __init__(self, cfg: VMambaConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        dims = list(cfg.dims)
        drop_rates = linear_drop_path_rates(cfg.drop_path_rate, sum(cfg.depths))
        self.patch_embed = make_patch_embed(cfg)
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(cfg.depths):
            blocks = [VSSBlock(dims[i], cfg, drop_path=r) for r in drop_rates[start:start + depth]]
            start += depth
            last = i == len(cfg.depths) - 1
            downsample = nn.Identity() if last else make_downsample(dims[i], dims[i + 1], cfg)
            self.layers.append(VSSStage(blocks, downsample))
        self.norm = nn.LayerNorm(dims[-1], eps=cfg.norm_eps)
        self.attn_pool = (AttentionalPooler(dims[-1], dims[-1], cfg.attn_pool_heads, n_queries=1)
                          if cfg.pool == "attn" else None)
        # "pyramid": the earlier stages' norms (the last stage uses `norm`).
        self.stage_norms = (nn.ModuleList(nn.LayerNorm(d, eps=cfg.norm_eps) for d in dims[:-1])
                            if cfg.pool.startswith("pyramid") else None)
        self.head = nn.Linear(self.num_features, embed_dim, bias=self.cfg.proj_bias)
        self.apply(init_weights)

    @property
    def num_features(self) -> int:
        return sum(self.cfg.dims) if self.cfg.pool.startswith("pyramid") else self.cfg.dims[-1]

    def layer_group_prefixes(self) -> Groups:
        """The stem, one group per block (a stage's downsample joins its last block), the head."""
        groups: Groups = [["patch_embed."]]
        for s, stage in enumerate(self.layers):
            blocks = block_groups(stage.blocks, f"layers.{s}.blocks")
            blocks[-1].append(f"layers.{s}.downsample.")
            groups += blocks
        return groups + [list(HEAD_PREFIXES)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each VSS block in backward instead of storing its activations."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) -> pooled features (batch, num_features), before the projection."""
        check_images(images, self.cfg.in_chans, self.cfg.total_stride,
                     f"patch_size {self.cfg.patch_size} * 2**{len(self.cfg.depths) - 1}")
        # channels_last images make the stem's first conv write a channel-last map, so its
        # LayerNorm reads it without a copy (and the conv's backward gets its gradient as is).
        x = self.patch_embed(images.contiguous(memory_format=torch.channels_last))
        if self.stage_norms is not None:
            return self._pyramid_features(x)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(x)
        if self.attn_pool is None:
            return x.mean(dim=(1, 2))
        return self.attn_pool(x.flatten(1, 2)).squeeze(1)

    def _pyramid_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each stage's map (before its downsample), normed, max- or mean-pooled, concatenated."""
        pooled = []
        norms = list(self.stage_norms) + [self.norm]
        for i, (stage, norm) in enumerate(zip(self.layers, norms)):
            x = stage.run_blocks(x)
            pooled.append(self._pool_stage(norm(x), i))
            x = stage.downsample(x)
        return torch.cat(pooled, dim=-1)

    def _pool_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """One stage's normed map (batch, H, W, C) -> (batch, C) by the pyramid pooling's reduction."""
        if self.cfg.pool == "pyramid_avg":
            return x.mean(dim=(1, 2))
        grid = x.permute(0, 3, 1, 2)  # channel-first view of the channel-last map (no copy)
        if self.cfg.pool == "pyramid_grid":
            stride = self.cfg.patch_size * 2 ** stage
            height, width = (max(1, s // stride) for s in self.cfg.image_hw)
            if x.shape[1] > height or x.shape[2] > width:
                grid = F.adaptive_avg_pool2d(grid, (min(height, x.shape[1]), min(width, x.shape[2])))
        return spatial_max(grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))


def spatial_max(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, C): the maximum over locations, as a global max pooling.

    Its backward routes each channel's gradient to one maximal location by index (a subgradient
    of the maximum, equal to amax's wherever the maximum is unique), where amax's backward
    spreads it over ties with several passes over the whole map."""
    return F.adaptive_max_pool2d(x, 1).flatten(1)


def linear_drop_path_rates(max_rate: float, num_blocks: int) -> List[float]:
    """Stochastic depth rising linearly from 0 at the first block to max_rate at the last."""
    if num_blocks == 1:
        return [0.0]
    return [max_rate * i / (num_blocks - 1) for i in range(num_blocks)]


def init_weights(module: nn.Module) -> None:
    """VMamba's init: truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vmamba_checkpoint_to_tower(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map an official VMamba classification state dict onto VMambaVisionTower's names.

    The backbone names already agree; the final norm moves from `classifier.norm` to `norm`
    and the ImageNet `classifier.head` is dropped (the tower's `head` is the CLIP projection).
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("classifier.head."):
            continue
        out[key.replace("classifier.norm.", "norm.", 1) if key.startswith("classifier.norm.") else key] = value
    return out
