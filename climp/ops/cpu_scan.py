"""The `cpu` backend: the compiled kernel of csrc/selective_scan.c as torch.library custom ops.

`climp::selective_scan` (forward) and `climp::selective_scan_backward` are custom ops with fake
implementations (shapes only) and registered autograd, so torch.compile traces models through
them without graph breaks, FlopCounterMode counts the scan by the formula registered on the
forward op, and models on the meta device run their forward without computing anything.

The forward saves only the inputs, plus, when z is given, d_state > 1 and a backward will run,
the (batch, dim, length) output before gating (for z's gradient; with one state the backward
gets it from the recomputed state); the backward recomputes the states one block of channels
at a time. The kernel computes in float32 (float64 for float64 inputs) and returns outputs and
gradients in the inputs' dtypes (the last state in the compute dtype, as mamba_ssm does). Its
backward is deterministic (same inputs and thread count, same bits) and not itself
differentiable (see selective_scan.py for how `auto` routes double backward elsewhere).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .cpu_build import kernel_function, refuse_double_backward

# Below this many state updates a call runs on one thread: waking a team costs more than it saves.
MIN_UPDATES_PER_THREAD = 1 << 16


def selective_scan_flops(batch: int, dim: int, length: int, state: int, with_D: bool = True,
                         with_z: bool = False) -> int:
    """FLOPs of one selective scan, following VMamba's `flops_selective_scan_fn` for mamba_ssm's
    reference scan: 9*B*L*D*N, plus B*D*L each for the D skip and the z gate."""
    flops = 9 * batch * length * dim * state
    if with_D:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepared(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """A contiguous copy in the compute dtype (no copy when it already is one)."""
    return None if t is None else t.to(dtype).contiguous()


def _grouped(BC: Tensor) -> Tensor:
    return BC.unsqueeze(1) if BC.dim() == 3 else BC


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _kernel(dtype: torch.dtype, direction: str):
    return kernel_function(f"selective_scan_{direction}", dtype)


def _shape_args(u: Tensor, A: Tensor, B: Tensor) -> Tuple[int, int, int, int, int, int]:
    """batch, dim, length, state, groups and the thread count (torch's, fewer for small calls)."""
    batch, dim, length = u.shape
    updates = batch * dim * length * A.shape[1]
    threads = max(1, min(torch.get_num_threads(), updates // MIN_UPDATES_PER_THREAD))
    return batch, dim, length, A.shape[1], B.shape[1], threads


def _absent(like: Tensor) -> Tensor:
    """Stands for an output that was not asked for (custom ops return tensors, not None); in
    `like`'s dtype, as the fake implementation gives."""
    return like.new_empty(0)


@torch.library.custom_op("climp::selective_scan", mutates_args=(), device_types="cpu")
def scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                 z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                 return_last_state: bool, keep_pregate: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, last_state or empty, output before gating or empty); keep_pregate only matters
    with z and d_state > 1 (the backward's input for dz)."""
    dtype = _compute_dtype(u)
    uc, dc, Ac, Dc, zc, bc = (_prepared(t, dtype) for t in (u, delta, A, D, z, delta_bias))
    Bc, Cc = _prepared(_grouped(B), dtype), _prepared(_grouped(C), dtype)
    out = torch.empty(u.shape, dtype=dtype)
    last = torch.empty(u.shape[0], u.shape[1], A.shape[1], dtype=dtype) if return_last_state else None
    pregate = torch.empty(u.shape, dtype=dtype) if _keeps_pregate(z, A, keep_pregate) else None
    _kernel(dtype, "fwd")(
        uc.data_ptr(), dc.data_ptr(), Ac.data_ptr(), Bc.data_ptr(), Cc.data_ptr(), _ptr(Dc), _ptr(zc),
        _ptr(bc), int(delta_softplus), out.data_ptr(), _ptr(pregate), _ptr(last), *_shape_args(uc, Ac, Bc),
    )
    return out.to(u.dtype), _absent(u) if last is None else last, _absent(u) if pregate is None else pregate


def _keeps_pregate(z: Optional[Tensor], A: Tensor, keep_pregate: bool) -> bool:
    return keep_pregate and z is not None and A.shape[1] > 1


@scan_forward.register_fake
def _scan_forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep_pregate):
    dtype = _compute_dtype(u)
    out = u.new_empty(u.shape)
    last = u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=dtype) if return_last_state else u.new_empty(0)
    pregate = u.new_empty(u.shape, dtype=dtype) if _keeps_pregate(z, A, keep_pregate) else u.new_empty(0)
    return out, last, pregate


@torch.library.custom_op("climp::selective_scan_backward", mutates_args=(), device_types="cpu")
def scan_backward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, pregate: Tensor,
                  dout: Tensor, dlast: Optional[Tensor]) -> List[Tensor]:
    """Gradients of u, delta, A, B, C, D, z, delta_bias (empty for absent inputs), in the
    inputs' dtypes; dlast: the last state's gradient, or None."""
    dtype = _compute_dtype(u)
    uc, dc, Ac, Dc, zc, bc = (_prepared(t, dtype) for t in (u, delta, A, D, z, delta_bias))
    Bc, Cc = _prepared(_grouped(B), dtype), _prepared(_grouped(C), dtype)
    doutc, dlastc = _prepared(dout, dtype), _prepared(dlast, dtype)
    du, ddelta = torch.empty_like(uc), torch.empty_like(dc)
    dA, dB, dC = torch.empty_like(Ac), torch.empty_like(Bc), torch.empty_like(Cc)
    dD = None if D is None else torch.empty_like(Dc)
    dz = None if z is None else torch.empty_like(zc)
    dbias = None if delta_bias is None else torch.empty_like(bc)
    _kernel(dtype, "bwd")(
        uc.data_ptr(), dc.data_ptr(), Ac.data_ptr(), Bc.data_ptr(), Cc.data_ptr(), _ptr(Dc), _ptr(zc),
        _ptr(bc), int(delta_softplus), pregate.data_ptr() if pregate.numel() else None, doutc.data_ptr(),
        _ptr(dlastc), du.data_ptr(), ddelta.data_ptr(), dA.data_ptr(), dB.data_ptr(), dC.data_ptr(), _ptr(dD),
        _ptr(dz), _ptr(dbias), *_shape_args(uc, Ac, Bc),
    )
    grads = [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.view(B.shape).to(B.dtype),
             dC.view(C.shape).to(C.dtype)]
    for grad, like in ((dD, D), (dz, z), (dbias, delta_bias)):
        grads.append(_absent(u) if like is None else grad.to(like.dtype))
    return grads


@scan_backward.register_fake
def _scan_backward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, pregate, dout, dlast):
    return [torch.empty_like(t) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus = delta_softplus
    ctx.return_last_state = return_last_state


def _backward(ctx, dout, dlast, _dpregate):
    u, delta, A, B, C, D, z, delta_bias, pregate = ctx.saved_tensors
    dlast = dlast if ctx.return_last_state else None
    grads = scan_backward(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, pregate, dout, dlast)
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(g if t is not None else None for g, t in zip(grads, present)), None, None, None)


scan_forward.register_autograd(_backward, setup_context=_setup_context)


refuse_double_backward(scan_backward, "the 'cpu' selective scan",
                       "(Hessian-vector products) run inside climp.ops.double_backward_mode() or use backend='chunked'")


@register_flop_formula(torch.ops.climp.selective_scan)
def _scan_flop_formula(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args, **kwargs) -> int:
    batch, dim, length = u_shape
    return selective_scan_flops(batch, dim, length, A_shape[1], with_D=D_shape is not None,
                                with_z=z_shape is not None)


def selective_scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Selective scan with the compiled CPU kernel (same contract as selective_scan_reference);
    meta tensors get the output's shape from the op's fake implementation."""
    if u.device.type not in ("cpu", "meta"):
        raise ValueError(f"the 'cpu' selective-scan backend needs CPU tensors, got u on {u.device}")
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out, last, _ = scan_forward(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                bool(return_last_state), keep)
    return (out, last) if return_last_state else out
