"""SS2D's four traversals of a 2D feature map (cross-scan) and their sum back onto the grid
(cross-merge). Order: row-major, column-major, and both reversed.

cross_scan stacks the four sequences in one copy (no intermediate stack-then-concatenate);
its backward is cheap slicing and flips, which in-place writes into a preallocated output
would not be (their backward clones the whole gradient per write).
"""
from __future__ import annotations

import torch


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, H, W) -> (batch, 4, channels, H*W) sequences for the four directions."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(batch, 4, channels, H*W) scan outputs -> (batch, channels, H*W) in row-major order."""
    batch, _, channels, length = ys.shape
    if length != height * width:
        raise ValueError(f"cross_merge: length {length} != height*width {height}*{width}")
    pair = ys[:, :2] + ys[:, 2:].flip(-1)
    cols = pair[:, 1].reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
    return pair[:, 0] + cols
