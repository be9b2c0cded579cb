"""Causal depthwise conv1d followed by SiLU, channel-first (batch, dim, length), as Mamba-1 runs it.

`causal_conv1d_silu(x, weight, bias)` equals `silu(F.conv1d(x, weight, bias, padding=K-1,
groups=dim)[..., :length])`, the mixer's conv branch. With kernels of a few taps on short
sequences, the generic (mkldnn) depthwise convolution and its backward cost far more than the
K shifted multiply-adds they compute. On the CPU it runs the custom op `climp::causal_conv1d_silu`
(csrc/causal_conv_impl.h: one pass per row forward, one per row backward, reading x in whatever
strides it has, deterministic); elsewhere, when the kernel does not build, or inside
`double_backward_mode()`, the same multiply-adds in PyTorch ops (an autograd.Function; its
backward is differentiable again only through autograd of those ops, so double backward uses
`causal_conv1d_silu_reference`). Both return a contiguous output (the channel-first scan's
layout) or, with channel_last=True, the transpose of a contiguous (batch, length, dim) tensor
(what x_proj and the fused 1D scan read; the custom op writes it directly), and save only the
inputs: the output before the SiLU is recomputed in the backward.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .cpu_build import cpu_kernel_available, kernel_function, refuse_double_backward
from .selective_scan import double_backward_enabled

# Below this many output elements a call runs on one thread.
MIN_ELEMENTS_PER_THREAD = 1 << 15


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


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32



def _threads(x: Tensor) -> int:
    return max(1, min(torch.get_num_threads(), x.numel() // MIN_ELEMENTS_PER_THREAD))


def _operands(x: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """x in the compute dtype (its strides kept), weight as contiguous (dim, K), bias contiguous."""
    dtype = _compute_dtype(x)
    xc = x.to(dtype)
    wc = weight.to(dtype).reshape(weight.shape[0], weight.shape[2]).contiguous()
    bc = None if bias is None else bias.to(dtype).contiguous()
    return dtype, xc, wc, bc


def _empty_in_layout(like: Tensor, channel_last: bool, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A (batch, dim, length) tensor shaped like `like`: contiguous, or the transpose of a
    contiguous (batch, length, dim) one when channel_last."""
    batch, dim, length = like.shape
    dtype = like.dtype if dtype is None else dtype
    if channel_last:
        return like.new_empty((batch, length, dim), dtype=dtype).transpose(1, 2)
    return like.new_empty((batch, dim, length), dtype=dtype)


@torch.library.custom_op("climp::causal_conv1d_silu", mutates_args=(), device_types="cpu")
def conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], channel_last: bool = False) -> Tensor:
    """silu(causal depthwise conv1d), (batch, dim, length) in x's dtype: contiguous, or with
    channel_last the transpose of a contiguous (batch, length, dim) tensor."""
    dtype, xc, wc, bc = _operands(x, weight, bias)
    batch, dim, length = x.shape
    out = _empty_in_layout(xc, channel_last, dtype)
    kernel_function("causal_conv_silu_fwd", dtype)(
        xc.data_ptr(), *xc.stride(), wc.data_ptr(), None if bc is None else bc.data_ptr(), out.data_ptr(),
        *out.stride(), batch, dim, length, wc.shape[1], _threads(x))
    return out.to(x.dtype)


@conv_forward.register_fake
def _conv_forward_fake(x, weight, bias, channel_last=False):
    return _empty_in_layout(x, channel_last)


@torch.library.custom_op("climp::causal_conv1d_silu_backward", mutates_args=(), device_types="cpu")
def conv_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], grad: Tensor,
                  channel_last: bool = False) -> List[Tensor]:
    """Gradients of x (in the output's layout), weight and bias (empty when bias is None), in
    the inputs' dtypes; grad in any strides."""
    dtype, xc, wc, bc = _operands(x, weight, bias)
    batch, dim, length = x.shape
    gc = grad.to(dtype)
    dx, dw = _empty_in_layout(xc, channel_last, dtype), torch.empty_like(wc)
    dbias = None if bc is None else torch.empty_like(bc)
    kernel_function("causal_conv_silu_bwd", dtype)(
        xc.data_ptr(), *xc.stride(), wc.data_ptr(), None if bc is None else bc.data_ptr(), gc.data_ptr(),
        *gc.stride(), dx.data_ptr(), *dx.stride(), dw.data_ptr(), None if dbias is None else dbias.data_ptr(),
        batch, dim, length, wc.shape[1], _threads(x))
    return [dx.to(x.dtype), dw.view(weight.shape).to(weight.dtype),
            torch.empty(0) if bias is None else dbias.to(bias.dtype)]


@conv_backward.register_fake
def _conv_backward_fake(x, weight, bias, grad, channel_last=False):
    return [_empty_in_layout(x, channel_last), torch.empty_like(weight),
            x.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3])
    ctx.channel_last = inputs[3]


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, dbias = conv_backward(x, weight, bias, grad, ctx.channel_last)
    return dx, dw, None if bias is None else dbias, None


conv_forward.register_autograd(_backward, setup_context=_setup_context)


refuse_double_backward(conv_backward, "the CPU causal conv")


@register_flop_formula(torch.ops.climp.causal_conv1d_silu)
def _conv_flop_formula(x_shape, weight_shape, *args, **kwargs) -> int:
    """A multiply and an add per tap and output element (the SiLU not counted, as for F.conv1d)."""
    batch, dim, length = x_shape
    return 2 * batch * dim * length * weight_shape[2]



def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, channel_last: bool = False) -> Tensor:
    """silu(causal depthwise conv1d of x): x (batch, dim, length), any strides; weight
    (dim, 1, K) as nn.Conv1d(groups=dim) stores it; bias (dim,) or None. Returns a
    (batch, dim, length) tensor in x's dtype, contiguous, or with channel_last the transpose of
    a contiguous (batch, length, dim) one (the layout the fused 1D scan and x_proj read; only
    the custom op writes it directly, the other paths copy)."""
    check_conv_inputs(x, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if needs_grad and double_backward_enabled():
        return causal_conv1d_silu_reference(x, weight, bias, channel_last)
    if x.device.type == "meta" or (x.device.type == "cpu" and cpu_kernel_available()):
        return conv_forward(x, weight, bias, channel_last)
    out = _CausalConv1dSiLU.apply(x, weight, bias)
    return out.transpose(1, 2).contiguous().transpose(1, 2) if channel_last else out


def causal_conv1d_silu_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                                 channel_last: bool = False) -> Tensor:
    """The same through F.conv1d (padding K-1 both sides, the tail cut): the reference."""
    kernel = check_conv_inputs(x, weight, bias)
    out = F.silu(F.conv1d(x, weight, bias, padding=kernel - 1, groups=x.shape[1])[..., :x.shape[2]])
    return out.transpose(1, 2).contiguous().transpose(1, 2) if channel_last else out
