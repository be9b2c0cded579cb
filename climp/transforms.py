"""Image transforms (torchvision v2) at any resolution, with CLIP's normalisation."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torchvision.transforms import v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Size = Union[int, Tuple[int, int]]


def _to_tensor_normalised(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def image_transform(size: Size, is_train: bool, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> v2.Compose:
    """PIL image or uint8 tensor -> normalised float (3, H, W).

    Training uses a mild random resized crop (scale 0.9-1, as open_clip) and no flips: captions
    name left and right. Evaluation resizes the short side and centre-crops.
    """
    size_hw = (size, size) if isinstance(size, int) else tuple(size)
    if is_train:
        ops = [v2.RGB(), v2.RandomResizedCrop(size_hw, scale=(0.9, 1.0), antialias=True)]
    elif size_hw[0] == size_hw[1]:
        ops = [v2.RGB(), v2.Resize(size_hw[0], antialias=True), v2.CenterCrop(size_hw)]
    else:
        ops = [v2.RGB(), v2.Resize(size_hw, antialias=True)]
    return v2.Compose(ops + _to_tensor_normalised(mean, std))
