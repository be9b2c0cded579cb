"""Input checks shared by every tower, so bad input fails with one clear message."""
from __future__ import annotations

import torch


def check_images(images: torch.Tensor, in_chans: int, stride: int, stride_origin: str = "") -> None:
    """Raise ValueError unless images is a non-empty float (B, in_chans, H, W) batch whose H and W
    are multiples of the tower's total stride (`stride_origin` says where the stride comes from)."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (batch, channels, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images: empty batch")
    if images.shape[1] != in_chans:
        raise ValueError(f"images have {images.shape[1]} channels, the tower expects {in_chans}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got dtype {images.dtype}")
    height, width = images.shape[-2:]
    if height % stride or width % stride:
        origin = f" ({stride_origin})" if stride_origin else ""
        raise ValueError(
            f"image size {height}x{width} is not divisible by the tower's total stride {stride}{origin}; "
            f"resize or crop to a multiple of {stride}"
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
