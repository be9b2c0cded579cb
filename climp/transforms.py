"""Image transforms (torchvision v2) at any resolution, with each model's normalisation.

A model config may carry a `preprocess_cfg` (open_clip's idea): mean, std, resize_mode
("shortest": resize the short side then centre-crop, as CLIP and CLIP-Mamba evaluate; "squash":
resize both sides to the target, as CLIMP's released models do) and interpolation.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import torch
from torchvision.transforms import InterpolationMode, v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}
PREPROCESS_KEYS = {"mean", "std", "resize_mode", "interpolation"}

Size = Union[int, Tuple[int, int]]


def _to_tensor_normalised(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def check_preprocess_cfg(cfg: Mapping[str, Any]) -> None:
    """Raise ValueError for unknown keys or values of a preprocess_cfg."""
    unknown = sorted(set(cfg) - PREPROCESS_KEYS)
    if unknown:
        raise ValueError(f"unknown preprocess_cfg keys {unknown}; known: {sorted(PREPROCESS_KEYS)}")
    if cfg.get("resize_mode", "shortest") not in RESIZE_MODES:
        raise ValueError(f"preprocess_cfg resize_mode must be one of {RESIZE_MODES}, got {cfg['resize_mode']!r}")
    if cfg.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise ValueError(f"preprocess_cfg interpolation must be one of {sorted(INTERPOLATIONS)}, "
                         f"got {cfg['interpolation']!r}")
    for key in ("mean", "std"):
        if key in cfg and len(cfg[key]) != 3:
            raise ValueError(f"preprocess_cfg {key} needs 3 values (RGB), got {cfg[key]!r}")


def image_transform(size: Size, is_train: bool, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, resize_mode: str = "shortest",
                    interpolation: str = "bilinear") -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float (3, H, W).

    Training uses a mild random resized crop (scale 0.9-1, as open_clip) and no flips: captions
    name left and right. Evaluation resizes the short side and centre-crops ("shortest"), or
    resizes to the target size ignoring the aspect ratio ("squash", and any non-square size).
    """
    check_preprocess_cfg({"resize_mode": resize_mode, "interpolation": interpolation})
    mode = INTERPOLATIONS[interpolation]
    size_hw = (size, size) if isinstance(size, int) else tuple(size)
    if is_train:
        ops = [v2.RGB(), v2.RandomResizedCrop(size_hw, scale=(0.9, 1.0), interpolation=mode, antialias=True)]
    elif size_hw[0] == size_hw[1] and resize_mode == "shortest":
        ops = [v2.RGB(), v2.Resize(size_hw[0], interpolation=mode, antialias=True), v2.CenterCrop(size_hw)]
    else:
        ops = [v2.RGB(), v2.Resize(size_hw, interpolation=mode, antialias=True)]
    return v2.Compose(ops + _to_tensor_normalised(mean, std))


def transform_from_config(size: Size, is_train: bool, preprocess_cfg: Optional[Mapping[str, Any]] = None) -> v2.Compose:
    """image_transform with a model config's preprocess_cfg (CLIP's normalisation by default)."""
    cfg = dict(preprocess_cfg or {})
    check_preprocess_cfg(cfg)
    return image_transform(size, is_train, mean=cfg.get("mean", CLIP_MEAN), std=cfg.get("std", CLIP_STD),
                           resize_mode=cfg.get("resize_mode", "shortest"),
                           interpolation=cfg.get("interpolation", "bilinear"))
