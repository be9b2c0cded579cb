"""Flat 1D Mamba image tower (Vim style): patchify conv, row-major token sequence, Mamba blocks.

With `bidirectional` each block runs a forward mixer over the tokens and a second mixer over the
reversed tokens and sums the two (Vim's bidirectional SSM, with separate parameters per
direction), so every token sees the whole image. Mean-pooled tokens go through a final RMSNorm
and a linear projection to the joint embedding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.utils.checkpoint import checkpoint

from .freeze import Groups, LockableTower, block_groups
from .mamba import MambaBlock, MambaMixer, RMSNorm, resolve_dt_rank
from ..config_mixin import FromDict
from .validation import check_images

@dataclass
class Mamba1DVisionConfig(FromDict):
    """Hyper-parameters of the 1D Mamba tower; `image_size` sets only the position-embedding grid."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    d_model: int = 192
    n_layer: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, str] = "auto"
    bidirectional: bool = True
    pos_embed: bool = False
    norm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    scan_backend: str = "auto"

    def __post_init__(self) -> None:
        self.require_positive_ints("image_size", "patch_size", "in_chans", "d_model", "n_layer", "d_state", "d_conv", "expand")
        resolve_dt_rank(self.dt_rank, self.d_model)
        if self.pos_embed and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")


class BidirectionalMixer(nn.Module):
    """Sum of a Mamba mixer over the sequence and another over the reversed sequence."""

    def __init__(self, forward_mixer: MambaMixer, backward_mixer: MambaMixer) -> None:
        super().__init__()
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_mixer(x) + self.backward_mixer(x.flip(1)).flip(1)


class Mamba1DVisionTower(LockableTower, nn.Module):
    """(B, 3, H, W) float images -> (B, embed_dim); any H, W divisible by `cfg.patch_size`."""

    def __init__(self, cfg: Mamba1DVisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = None
        if cfg.pos_embed:
            grid = cfg.image_size // cfg.patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.d_model, grid, grid))
        rates = [cfg.drop_path_rate * i / max(cfg.n_layer - 1, 1) for i in range(cfg.n_layer)]
        self.layers = nn.ModuleList(
            MambaBlock(cfg.d_model, self.make_mixer(cfg), norm_eps=cfg.norm_eps, drop_path=rate) for rate in rates
        )
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, embed_dim)
        self.init_weights()

    @staticmethod
    def make_mixer(cfg: Mamba1DVisionConfig) -> nn.Module:
        def mixer() -> MambaMixer:
            return MambaMixer(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                              dt_rank=cfg.dt_rank, scan_backend=cfg.scan_backend)

        return BidirectionalMixer(mixer(), mixer()) if cfg.bidirectional else mixer()

    @torch.no_grad()
    def init_weights(self) -> None:
        """mamba_ssm's prenorm init: zero Linear biases (dt_proj's kept), out_proj scaled by
        1/sqrt(n_layer); truncated-normal position embedding and head."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
            if isinstance(module, MambaMixer):
                module.out_proj.weight /= math.sqrt(self.cfg.n_layer)
        trunc_normal_(self.head.weight, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

    @property
    def num_features(self) -> int:
        return self.cfg.d_model

    def layer_group_prefixes(self) -> Groups:
        """The patch embedding, one group per block, the final norm and head."""
        return [["patch_embed.", "pos_embed"]] + block_groups(self.layers, "layers") + [["norm_f.", "head."]]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each Mamba block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features (+ position embedding resized to the grid) as a row-major (B, L, d_model)."""
        x = self.patch_embed(images)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[-2:] != x.shape[-2:]:
                pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
            x = x + pos
        return x.flatten(2).transpose(1, 2)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) -> mean-pooled, normalised token features (batch, d_model)."""
        check_images(images, self.cfg.in_chans, self.cfg.patch_size, f"patch_size {self.cfg.patch_size}")
        x = self.tokens(images)
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return self.norm_f(x).mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))
