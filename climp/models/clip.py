"""The dual encoder: any image tower and any text tower joined by a learned temperature.

Towers are built from config dicts whose "type" names the tower; the remaining keys are that
tower's config dataclass. Modules are imported on demand so one tower's heavy imports never
burden a model that does not use it.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# tower type -> (module, config class, tower class)
VISION_TOWERS: Dict[str, Tuple[str, str, str]] = {
    "vmamba": ("climp.models.vmamba", "VMambaConfig", "VMambaVisionTower"),
    "mamba1d": ("climp.models.vision1d", "Mamba1DVisionConfig", "Mamba1DVisionTower"),
    "simba": ("climp.models.simba", "SiMBAConfig", "SiMBAVisionTower"),
    "vit": ("climp.models.vit", "ViTVisionConfig", "ViTVisionTower"),
}
TEXT_TOWERS: Dict[str, Tuple[str, str, str]] = {
    "mamba": ("climp.models.text", "MambaTextConfig", "MambaTextTower"),
    "mamba2": ("climp.models.text", "Mamba2TextConfig", "Mamba2TextTower"),
    "transformer": ("climp.models.text", "TransformerTextConfig", "TransformerTextTower"),
}


def _build_tower(registry: Dict[str, Tuple[str, str, str]], kind: str, cfg: Dict[str, Any], embed_dim: int) -> nn.Module:
    cfg = dict(cfg)
    tower_type = cfg.pop("type", None)
    if tower_type not in registry:
        raise ValueError(f"{kind}_cfg 'type' must be one of {sorted(registry)}, got {tower_type!r}")
    module_name, cfg_name, tower_name = registry[tower_type]
    module = importlib.import_module(module_name)
    tower_cfg = getattr(module, cfg_name).from_dict(cfg)
    return getattr(module, tower_name)(tower_cfg, embed_dim)


def vision_stride(vision_cfg: Dict[str, Any]) -> int:
    """Input pixels per feature of an image tower's last stage (VMamba: patch size x 2 per
    downsampling; ViT and 1-D Mamba: the patch size); image sides must be multiples of it."""
    cfg = dict(vision_cfg)
    tower_type = cfg.pop("type", None)
    if tower_type not in VISION_TOWERS:
        raise ValueError(f"vision_cfg 'type' must be one of {sorted(VISION_TOWERS)}, got {tower_type!r}")
    module_name, cfg_name, _ = VISION_TOWERS[tower_type]
    tower_cfg = getattr(importlib.import_module(module_name), cfg_name).from_dict(cfg)
    return getattr(tower_cfg, "total_stride", None) or tower_cfg.patch_size


def check_image_size(vision_cfg: Dict[str, Any], size: int, model: str = "the model") -> None:
    """Raise ValueError unless `size` is a positive multiple of the image tower's stride
    (checked from the config alone, before anything is built)."""
    stride = vision_stride(vision_cfg)
    if size < 1 or size % stride:
        raise ValueError(f"image size {size} is not a multiple of {model}'s image-tower stride {stride}; "
                         f"use e.g. {max(stride, size - size % stride)}")


def build_vision_tower(cfg: Dict[str, Any], embed_dim: int) -> nn.Module:
    """Image tower from a config dict with a "type" key (vmamba, mamba1d, simba, vit)."""
    return _build_tower(VISION_TOWERS, "vision", cfg, embed_dim)


def build_text_tower(cfg: Dict[str, Any], embed_dim: int) -> nn.Module:
    """Text tower from a config dict with a "type" key (mamba, transformer)."""
    return _build_tower(TEXT_TOWERS, "text", cfg, embed_dim)


class CLIP(nn.Module):
    """Two towers mapping images and token ids into one embed_dim space (open_clip's
    CustomTextCLIP shape: `visual`, `text`, `logit_scale`, optional `logit_bias`)."""

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: Dict[str, Any],
        text_cfg: Dict[str, Any],
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: Optional[float] = None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.visual = build_vision_tower(vision_cfg, embed_dim)
        self.text = build_text_tower(text_cfg, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias))) if init_logit_bias is not None else None

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(token_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def lock_image_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the image tower but its last `unlocked_groups` layer groups (head included)."""
        self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the text tower but its last `unlocked_groups` layer groups (head included)."""
        self.text.lock(unlocked_groups)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def forward(self, images: Optional[torch.Tensor] = None, token_ids: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Normalised features plus exp'd logit scale and bias: the dict open_clip's losses take."""
        return {
            "image_features": self.encode_image(images, normalize=True) if images is not None else None,
            "text_features": self.encode_text(token_ids, normalize=True) if token_ids is not None else None,
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }
