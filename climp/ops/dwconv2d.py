"""Depthwise 2D conv ('same' zero padding, stride 1) + bias + SiLU on a channel-last map, as
VMamba's SS2D runs its conv branch.

`dwconv2d_silu(x, weight, bias)` takes x (batch, H, W, C) and returns silu(conv + bias) in the
same layout, contiguous; weight is (C, 1, kh, kw) as nn.Conv2d(groups=C) stores it (kh, kw odd).
The generic depthwise convolution (mkldnn, channels_last) and its backward cost far more than
the few multiply-adds per element they compute on small maps. On the CPU (and on the meta
device, for shapes and FLOP counts) it runs the custom op `climp::dwconv2d_silu`
(csrc/dwconv2d_impl.h: channels in SIMD lanes, x read in whatever pixel strides it has, so the x
half of a gated in_proj output is not copied; deterministic backward). Autograd saves only the
inputs: the pre-activation is recomputed in the backward. Elsewhere, when the kernel does not
build, or inside `double_backward_mode()`, it runs `dwconv2d_silu_reference` (F.conv2d + SiLU).
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


def check_dwconv_inputs(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tuple[int, int]:
    """Raise a ValueError naming the argument whose shape disagrees; return (kh, kw)."""
    if x.dim() != 4:
        raise ValueError(f"x must be channel-last (batch, H, W, C), got shape {tuple(x.shape)}")
    dim = x.shape[3]
    if weight.dim() != 4 or weight.shape[:2] != (dim, 1):
        raise ValueError(f"weight must be depthwise (C={dim}, 1, kh, kw), got {tuple(weight.shape)}")
    kh, kw = weight.shape[2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"weight's kernel must have odd sides for 'same' padding, got {kh}x{kw}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"bias must be (C={dim},), got {tuple(bias.shape)}")
    return kh, kw


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _threads(x: Tensor) -> int:
    return max(1, min(torch.get_num_threads(), x.numel() // MIN_ELEMENTS_PER_THREAD))


def _channel_last(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype with unit channel stride (pixel strides kept: no copy of a strided view)."""
    t = t.to(dtype)
    return t.contiguous() if t.shape[3] > 1 and t.stride(3) != 1 else t


def _operands(x: Tensor, weight: Tensor, bias: Optional[Tensor]):
    """x with unit channel stride, weight tap-major (kh * kw, C), bias contiguous: compute dtype."""
    dtype = _compute_dtype(x)
    wc = weight.to(dtype).reshape(weight.shape[0], -1).t().contiguous()
    bc = None if bias is None else bias.to(dtype).contiguous()
    return dtype, _channel_last(x, dtype), wc, bc


@torch.library.custom_op("climp::dwconv2d_silu", mutates_args=(), device_types="cpu")
def dwconv2d_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """silu(depthwise conv2d + bias) of a channel-last map: contiguous (batch, H, W, C), x's dtype."""
    dtype, xc, wc, bc = _operands(x, weight, bias)
    batch, height, width, dim = x.shape
    out = torch.empty(x.shape, dtype=dtype)
    kernel_function("dwconv2d_silu_fwd", dtype)(
        xc.data_ptr(), *xc.stride()[:3], wc.data_ptr(), None if bc is None else bc.data_ptr(), out.data_ptr(),
        batch, height, width, dim, weight.shape[2], weight.shape[3], _threads(x))
    return out.to(x.dtype)


@dwconv2d_forward.register_fake
def _dwconv2d_forward_fake(x, weight, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("climp::dwconv2d_silu_backward", mutates_args=(), device_types="cpu")
def dwconv2d_backward(x: Tensor, weight: Tensor, bias: Optional[Tensor], grad: Tensor) -> List[Tensor]:
    """Gradients of x (contiguous), weight and bias (empty when bias is None), in the inputs' dtypes."""
    dtype, xc, wc, bc = _operands(x, weight, bias)
    gc = _channel_last(grad, dtype)
    batch, height, width, dim = x.shape
    dx, dw = torch.empty(x.shape, dtype=dtype), torch.empty_like(wc)
    dbias = None if bc is None else torch.empty_like(bc)
    kernel_function("dwconv2d_silu_bwd", dtype)(
        xc.data_ptr(), *xc.stride()[:3], wc.data_ptr(), None if bc is None else bc.data_ptr(), gc.data_ptr(),
        *gc.stride()[:3], dx.data_ptr(), dw.data_ptr(), None if dbias is None else dbias.data_ptr(),
        batch, height, width, dim, weight.shape[2], weight.shape[3], _threads(x))
    return [dx.to(x.dtype), dw.t().contiguous().reshape(weight.shape).to(weight.dtype),
            weight.new_empty(0) if bias is None else dbias.to(bias.dtype)]


@dwconv2d_backward.register_fake
def _dwconv2d_backward_fake(x, weight, bias, grad):
    return [x.new_empty(x.shape), torch.empty_like(weight), weight.new_empty(0) if bias is None else torch.empty_like(bias)]


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, dbias = dwconv2d_backward(x, weight, bias, grad)
    return dx, dw, None if bias is None else dbias


dwconv2d_forward.register_autograd(_backward, setup_context=_setup_context)


refuse_double_backward(dwconv2d_backward, "the CPU depthwise conv2d")


@register_flop_formula(torch.ops.climp.dwconv2d_silu)
def _dwconv2d_flop_formula(x_shape, weight_shape, *args, **kwargs) -> int:
    """A multiply and an add per tap and output element (bias and SiLU not counted, as for F.conv2d)."""
    batch, height, width, dim = x_shape
    return 2 * batch * height * width * dim * weight_shape[2] * weight_shape[3]


def fused_dwconv2d_available(x: Tensor) -> bool:
    """Whether `dwconv2d_silu(x, ...)` runs the custom op: CPU (kernel built) or meta tensors."""
    return x.device.type == "meta" or (x.device.type == "cpu" and cpu_kernel_available())


def dwconv2d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """silu(depthwise conv2d of x + bias), 'same' zero padding, stride 1: x (batch, H, W, C) in any
    strides; weight (C, 1, kh, kw) with odd sides, as nn.Conv2d(groups=C) stores it; bias (C,)
    or None. Returns (batch, H, W, C), contiguous, in x's dtype."""
    check_dwconv_inputs(x, weight, bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if (needs_grad and double_backward_enabled()) or not fused_dwconv2d_available(x):
        return dwconv2d_silu_reference(x, weight, bias)
    return dwconv2d_forward(x, weight, bias)


def dwconv2d_silu_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The same through F.conv2d on the channel-first view and F.silu: the reference."""
    kh, kw = check_dwconv_inputs(x, weight, bias)
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, padding=((kh - 1) // 2, (kw - 1) // 2), groups=x.shape[3])
    return F.silu(out).permute(0, 2, 3, 1).contiguous()
