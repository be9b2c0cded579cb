"""Input checks shared by every tower, so bad input fails with one clear message."""
from __future__ import annotations

import torch


def check_images(images: torch.Tensor, in_chans: int, stride: int) -> None:
    """Raise ValueError unless images is a non-empty float (B, in_chans, H, W) batch whose H and W
    are multiples of the tower's total stride."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (batch, {in_chans}, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images: empty batch")
    if images.shape[1] != in_chans:
        raise ValueError(f"images must have {in_chans} channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    height, width = images.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the tower's total stride {stride}; "
            f"resize or crop to a multiple of {stride} (e.g. {max(stride, height // stride * stride)}x"
            f"{max(stride, width // stride * stride)})"
        )


def check_token_ids(token_ids: torch.Tensor) -> None:
    """Raise ValueError unless token_ids is a non-empty integer (batch, length) tensor."""
    if not isinstance(token_ids, torch.Tensor):
        raise ValueError(f"token ids must be a torch.Tensor, got {type(token_ids).__name__}")
    if token_ids.dim() != 2:
        raise ValueError(f"token ids must be (batch, length), got shape {tuple(token_ids.shape)}")
    if token_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"token ids must be an integer tensor (torch.long), got dtype {token_ids.dtype}")
    if token_ids.shape[0] == 0:
        raise ValueError("token ids: empty batch")
    if token_ids.shape[1] == 0:
        raise ValueError("token ids: zero-length sequences")
