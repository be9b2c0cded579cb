"""RMSNorm over the last dim: y = x * rsqrt(mean(x^2) + eps) * weight.

As PyTorch ops (`rms_norm_reference`, also what F.rms_norm does on the CPU) it is five
elementwise passes forward and more backward, each a full read and write of the activations, and
keeps the normalised tensor for the backward. On the CPU (and on the meta device, for shapes)
`rms_norm` runs the custom op `climp::rms_norm` (csrc/rms_norm_impl.h: one pass per row forward,
one backward, rows over PyTorch's OpenMP threads, deterministic weight gradient), which saves
only x and one rstd = rsqrt(mean(x^2) + eps) per row. Elsewhere (CUDA), for half-precision
inputs, when the kernel does not build, or when a twice-differentiable graph is needed (inside
`double_backward_mode()`), it runs the reference.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from .cpu_build import cpu_kernel_available, kernel_function, refuse_double_backward
from .selective_scan import double_backward_enabled

# Below this many elements a call runs on one thread.
MIN_ELEMENTS_PER_THREAD = 1 << 15
FUSED_DTYPES = (torch.float32, torch.float64)


def check_rms_norm_inputs(x: Tensor, weight: Tensor) -> None:
    """Raise a ValueError when weight is not one scale per channel of x's last dim."""
    if x.dim() < 1 or weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must be (x.shape[-1],) = {tuple(x.shape[-1:])}, got {tuple(weight.shape)} "
                         f"for x of shape {tuple(x.shape)}")


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The formula in PyTorch ops, computed in float32 at least, returned in x's dtype."""
    check_rms_norm_inputs(x, weight)
    dtype = torch.promote_types(x.dtype, torch.float32)
    h = x.to(dtype)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight.to(torch.promote_types(weight.dtype, torch.float32))).to(x.dtype)


def _threads(x: Tensor) -> int:
    return max(1, min(torch.get_num_threads(), x.numel() // MIN_ELEMENTS_PER_THREAD))


def _rows(t: Tensor) -> Tensor:
    """t as a contiguous (rows, width) matrix."""
    return t.contiguous().view(-1, t.shape[-1])


@torch.library.custom_op("climp::rms_norm", mutates_args=(), device_types="cpu")
def rms_norm_op(x: Tensor, weight: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """(y, rstd): y shaped like x (contiguous), rstd = rsqrt(mean(x^2) + eps) per row, x.shape[:-1].
    x and weight float32 or float64, of one dtype."""
    xr, w = _rows(x), weight.contiguous()
    y = torch.empty_like(xr)
    rstd = x.new_empty(xr.shape[0])
    kernel_function("rms_norm_fwd", x.dtype)(xr.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr(),
                                             xr.shape[0], xr.shape[1], float(eps), _threads(x))
    return y.view(x.shape), rstd.view(x.shape[:-1])


@rms_norm_op.register_fake
def _rms_norm_fake(x, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1])


@torch.library.custom_op("climp::rms_norm_backward", mutates_args=(), device_types="cpu")
def rms_norm_backward(x: Tensor, weight: Tensor, rstd: Tensor, grad: Tensor) -> List[Tensor]:
    """[dx (shaped like x, contiguous), dweight] from the forward's x, weight and rstd; grad in any strides."""
    xr, gr, w, rs = _rows(x), _rows(grad.to(x.dtype)), weight.contiguous(), rstd.contiguous()
    dx, dweight = torch.empty_like(xr), torch.empty_like(w)
    kernel_function("rms_norm_bwd", x.dtype)(xr.data_ptr(), w.data_ptr(), rs.data_ptr(), gr.data_ptr(), dx.data_ptr(),
                                             dweight.data_ptr(), xr.shape[0], xr.shape[1], _threads(x))
    return [dx.view(x.shape), dweight]


@rms_norm_backward.register_fake
def _rms_norm_backward_fake(x, weight, rstd, grad):
    return [x.new_empty(x.shape), torch.empty_like(weight, memory_format=torch.contiguous_format)]


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dweight = rms_norm_backward(x, weight, rstd, grad)
    return dx, dweight, None


rms_norm_op.register_autograd(_backward, setup_context=_setup_context)


refuse_double_backward(rms_norm_backward, "the CPU RMSNorm")


def fused_rms_norm_available(x: Tensor, weight: Tensor) -> bool:
    """Whether `rms_norm(x, weight, eps)` runs the custom op: float32 or float64 x and weight of
    one dtype, on the CPU (kernel built) or the meta device."""
    if x.dtype not in FUSED_DTYPES or weight.dtype != x.dtype or weight.device != x.device:
        return False
    return x.device.type == "meta" or (x.device.type == "cpu" and cpu_kernel_available())


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of x (..., width) with scale weight (width,), in x's dtype (see the module docstring)."""
    check_rms_norm_inputs(x, weight)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if (needs_grad and double_backward_enabled()) or not fused_rms_norm_available(x, weight):
        return rms_norm_reference(x, weight, eps)
    return rms_norm_op(x, weight, float(eps))[0]
