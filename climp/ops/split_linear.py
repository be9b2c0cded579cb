"""A linear layer whose output is used as two halves, with a backward that never concatenates
their gradients.

`linear_halves(x, weight, bias)` equals `F.linear(x, weight, bias).chunk(2, dim=-1)`: one matmul
forward, two views returned (as Mamba-1's in_proj gives the conv branch and the gate). Autograd
would join the halves' gradients into one (..., out_features) tensor (a full copy) before the
weight and input gradients; here each half's gradient goes into its own products instead: the
weight gradient's two row blocks, and the input gradient as one matmul plus one accumulating
matmul. The backward is made of differentiable ops, so second derivatives work.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class _LinearHalves(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        first, second = F.linear(x, weight, bias).chunk(2, dim=-1)
        return first, second

    @staticmethod
    def backward(ctx, grad_first: Tensor, grad_second: Tensor):
        x, weight = ctx.saved_tensors
        half, dtype = weight.shape[0] // 2, grad_first.dtype  # the output's dtype (autocast's, if on)
        g1, g2 = grad_first.reshape(-1, half), grad_second.to(dtype).reshape(-1, half)
        w1, w2 = weight.to(dtype).split(half)
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            dx = torch.addmm(g1.mm(w1), g2, w2).view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            rows = x.reshape(-1, x.shape[-1]).to(dtype)
            dweight = torch.cat((g1.t().mm(rows), g2.t().mm(rows))).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dbias = torch.cat((g1.sum(0), g2.sum(0))).to(weight.dtype)
        return dx, dweight, dbias


def linear_halves(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """`F.linear(x, weight, bias).chunk(2, dim=-1)` (views of one output) with the backward
    described in the module docstring. weight (2 * half, in_features), bias (2 * half,) or None."""
    if weight.dim() != 2 or weight.shape[0] % 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be (2 * half, in_features={x.shape[-1]}), got {tuple(weight.shape)}")
    return _LinearHalves.apply(x, weight, bias)
