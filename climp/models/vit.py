"""CLIP ViT image tower: open_clip's VisionTransformer, made to accept any input size.

The parameters and their names are open_clip's own, so an open_clip state dict loads into
`model.visual` unchanged. For inputs whose patch grid differs from the configured one, the
learned position embedding is resized on the fly (bicubic, antialiased, as open_clip's
`resize_pos_embed` does when loading a checkpoint at another resolution).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, VisionTransformer
from torch import nn

from .freeze import Groups, LockableTower, block_groups
from .validation import check_images
from ..config_mixin import FromDict


@dataclass
class ViTVisionConfig(FromDict):
    """The subset of open_clip's CLIPVisionCfg that CLIMP exposes for ViT towers."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    ls_init_value: Optional[float] = None
    patch_dropout: float = 0.0
    pool_type: str = "tok"
    patch_bias: bool = False  # a bias in the patch embedding (timm's ViT has one)
    no_ln_pre: bool = False  # no LayerNorm before the blocks (timm's ViT has none)
    norm_eps: float = 1e-5  # LayerNorm epsilon (timm's ViT: 1e-6)


def resize_grid_embedding(pos_embed: torch.Tensor, old_grid: tuple, new_grid: tuple) -> torch.Tensor:
    """Resize a (1 + gh*gw, width) class+grid position embedding to a new grid."""
    cls_tok, grid = pos_embed[:1], pos_embed[1:]
    width = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    grid = grid.to(torch.promote_types(grid.dtype, torch.float32))  # float64 stays float64
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width).to(pos_embed.dtype)
    return torch.cat([cls_tok, grid], dim=0)


class ViTVisionTower(LockableTower, VisionTransformer):
    """open_clip's VisionTransformer with input checks and any-resolution inputs."""

    def __init__(self, cfg: ViTVisionConfig, embed_dim: int):
        if cfg.width % cfg.head_width:
            raise ValueError(f"ViT width {cfg.width} is not a multiple of head_width {cfg.head_width}")
        super().__init__(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            width=cfg.width,
            layers=cfg.layers,
            heads=cfg.width // cfg.head_width,
            mlp_ratio=cfg.mlp_ratio,
            ls_init_value=cfg.ls_init_value,
            patch_dropout=cfg.patch_dropout,
            pool_type=cfg.pool_type,
            output_dim=embed_dim,
            no_ln_pre=cfg.no_ln_pre,
            act_layer=nn.GELU,
            norm_layer=partial(LayerNorm, eps=cfg.norm_eps),
        )
        if cfg.patch_bias:
            self.conv1 = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=True)
        self.cfg = cfg

    def layer_group_prefixes(self) -> Groups:
        """The patch embedding with class and position embeddings, one group per block, the head."""
        return ([["conv1.", "class_embedding", "positional_embedding", "ln_pre."]]
                + block_groups(self.transformer.resblocks, "transformer.resblocks") + [["ln_post.", "proj"]])

    @property
    def stride(self) -> int:
        return self.patch_size[0]

    def _embeds(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        if grid == tuple(self.grid_size):
            return super()._embeds(x)
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = resize_grid_embedding(self.positional_embedding, tuple(self.grid_size), grid)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, in_chans=3, stride=self.patch_size[0])
        return super().forward(x)
