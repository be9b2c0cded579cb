"""Causal depthwise conv1d followed by SiLU, channel-first (batch, dim, length), as Mamba-1 runs it.

`causal_conv1d_silu(x, weight, bias)` equals `silu(F.conv1d(x, weight, bias, padding=K-1,
groups=dim)[..., :length])`, the mixer's conv branch. With kernels of a few taps on short
sequences, the generic (mkldnn) depthwise convolution and its backward cost far more than the
K shifted multiply-adds they compute; here forward and backward are those multiply-adds in
PyTorch ops (an autograd.Function, so torch.compile traces it), the SiLU derivative is applied
in the same backward, and the output is contiguous, as the scan reads it. The output before
the SiLU is recomputed in the backward rather than saved.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def check_conv_inputs(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> int:
    """Raise a ValueError naming the argument whose shape disagrees; return the kernel size."""
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, dim, length), got shape {tuple(x.shape)}")
    dim = x.shape[1]
    if weight.dim() != 3 or weight.shape[:2] != (dim, 1):
        raise ValueError(f"weight must be depthwise (dim={dim}, 1, kernel), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"bias must be (dim={dim},), got {tuple(bias.shape)}")
    return weight.shape[2]


def _causal_conv(xp: Tensor, w: Tensor, bias: Optional[Tensor], length: int) -> Tensor:
    """sum_k w[:, k] * xp[..., k:k+length] (+ bias): xp is x left-padded with K-1 zeros."""
    kernel = w.shape[1]
    out = xp[..., kernel - 1:] * w[:, kernel - 1, None]
    for k in range(kernel - 1):
        out.addcmul_(xp[..., k:k + length], w[:, k, None])
    if bias is not None:
        out += bias[:, None]
    return out


class _CausalConv1dSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        kernel, length = weight.shape[2], x.shape[2]
        xp = F.pad(x, (kernel - 1, 0))
        w = weight.squeeze(1)
        ctx.save_for_backward(xp, w, bias)
        ctx.weight_shape = weight.shape
        return F.silu(_causal_conv(xp, w, bias, length))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        xp, w, bias = ctx.saved_tensors
        kernel, length = w.shape[1], grad.shape[2]
        pre = _causal_conv(xp, w, bias, length)
        sig = torch.sigmoid(pre)
        # d silu(c) / dc = sig * (1 + c * (1 - sig))
        dpre = grad * sig * (1 + pre * (1 - sig))
        dx = dw = dbias = None
        if ctx.needs_input_grad[0]:
            dpad = F.pad(dpre, (0, kernel - 1))
            dx = dpad[..., kernel - 1:kernel - 1 + length] * w[:, 0, None]
            for k in range(1, kernel):
                dx.addcmul_(dpad[..., kernel - 1 - k:kernel - 1 - k + length], w[:, k, None])
        if ctx.needs_input_grad[1]:
            dw = torch.stack([(dpre * xp[..., k:k + length]).sum((0, 2)) for k in range(kernel)], dim=1)
            dw = dw.view(ctx.weight_shape)
        if bias is not None and ctx.needs_input_grad[2]:
            dbias = dpre.sum((0, 2))
        return dx, dw, dbias


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """silu(causal depthwise conv1d of x): x (batch, dim, length), any strides; weight
    (dim, 1, K) as nn.Conv1d(groups=dim) stores it; bias (dim,) or None. Returns a contiguous
    (batch, dim, length) tensor in x's dtype."""
    check_conv_inputs(x, weight, bias)
    return _CausalConv1dSiLU.apply(x, weight, bias)


def causal_conv1d_silu_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The same through F.conv1d (padding K-1 both sides, the tail cut): the reference."""
    kernel = check_conv_inputs(x, weight, bias)
    return F.silu(F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])[..., :x.shape[2]])
