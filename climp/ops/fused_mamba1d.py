"""The selective scan of Mamba-1's mixer in the projections' channel-last layout, fused or unfused.

`mamba1d_scan` takes the conv branch u (batch, L, dim), the gate z (batch, L, dim) or None, the
x_proj output xdbl (batch, L, rank + 2 * d_state) (per step: the low-rank dt input, B, C), the dt
projection's weight (dim, rank) and bias, A (dim, d_state) and D, and returns
y = scan(u) * silu(z) as (batch, L, dim), the layout out_proj reads. Views with a unit last
stride (such as z, half of the in_proj output) are read in place.

With backend "auto" on the CPU (and on the meta device, for shapes and FLOP counts) it runs the
custom op `climp::mamba1d_scan` (csrc/mamba1d_impl.h): delta = softplus(dt_weight . dt input +
bias), the D skip and the gate are computed per step in registers, so neither the
(batch, dim, L) delta nor transposed copies of u, z, B and C are made; autograd saves only the
op's inputs and the backward recomputes the states. Elsewhere (CUDA), with a named scan backend,
or when a twice-differentiable graph is needed (inside `double_backward_mode()`), it runs
`mamba1d_scan_reference`: the dt projection, transposes and `selective_scan(backend=...)` in
PyTorch ops (the unfused path the fused op is tested against).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .cpu_build import cpu_kernel_available, kernel_function, refuse_double_backward
from .cpu_scan import selective_scan_flops
from .selective_scan import double_backward_enabled, selective_scan

# Below this many state updates a call runs on one thread (as the plain scan kernel does).
MIN_UPDATES_PER_THREAD = 1 << 16


def check_mamba1d_inputs(u, z, xdbl, dt_weight, dt_bias, A, D) -> Tuple[int, int]:
    """Raise a ValueError naming the argument whose shape disagrees; return (rank, d_state)."""
    if u.dim() != 3:
        raise ValueError(f"u must be channel-last (batch, length, dim), got shape {tuple(u.shape)}")
    batch, length, dim = u.shape
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    state = A.shape[1]
    if dt_weight.dim() != 2 or dt_weight.shape[0] != dim:
        raise ValueError(f"dt_weight must be (dim={dim}, rank), got {tuple(dt_weight.shape)}")
    rank = dt_weight.shape[1]
    want = (batch, length, rank + 2 * state)
    if tuple(xdbl.shape) != want:
        raise ValueError(f"xdbl must be (batch, length, rank + 2 * d_state) = {want}, got {tuple(xdbl.shape)}")
    for name, t in (("dt_bias", dt_bias), ("D", D)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(t.shape)}")
    return rank, state


def mamba1d_scan_reference(
    u: Tensor,
    z: Optional[Tensor],
    xdbl: Tensor,
    dt_weight: Tensor,
    dt_bias: Optional[Tensor],
    A: Tensor,
    D: Optional[Tensor],
    delta_softplus: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Unfused: the dt projection and transposes in PyTorch ops, one `selective_scan(backend=...)`."""
    rank, state = check_mamba1d_inputs(u, z, xdbl, dt_weight, dt_bias, A, D)
    dt, B, C = torch.split(xdbl, [rank, state, state], dim=-1)
    delta = torch.matmul(dt_weight, dt.transpose(1, 2))  # (batch, dim, length)
    y = selective_scan(
        u.transpose(1, 2),
        delta,
        A,
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D=D,
        z=None if z is None else z.transpose(1, 2),
        delta_bias=dt_bias,
        delta_softplus=delta_softplus,
        backend=backend,
    )
    return y.transpose(1, 2)


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _rows(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in the compute dtype with a unit last stride (its other strides kept)."""
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


def _threads(u: Tensor, A: Tensor) -> int:
    updates = u.numel() * A.shape[1]
    return max(1, min(torch.get_num_threads(), updates // MIN_UPDATES_PER_THREAD))



def _operands(u, z, xdbl, dt_weight, dt_bias, A, D):
    """Compute-dtype operands and the kernel's leading arguments (pointers with their batch and
    step strides, then the parameters' pointers)."""
    dtype = _compute_dtype(u)
    uc, xc = _rows(u, dtype), _rows(xdbl, dtype)
    zc = None if z is None else _rows(z, dtype)
    params = [t.to(dtype).contiguous() for t in (dt_weight, dt_bias, A, D)]
    args = [uc.data_ptr(), uc.stride(0), uc.stride(1),
            None if zc is None else zc.data_ptr(), 0 if zc is None else zc.stride(0), 0 if zc is None else zc.stride(1),
            xc.data_ptr(), xc.stride(0), xc.stride(1), *(p.data_ptr() for p in params)]
    return dtype, args, params, (uc, zc, xc)  # the caller must hold params and rows while args are in use


@torch.library.custom_op("climp::mamba1d_scan", mutates_args=(), device_types="cpu")
def mamba1d_scan_op(u: Tensor, z: Optional[Tensor], xdbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor,
                    D: Tensor, delta_softplus: bool) -> Tensor:
    """Fused scan on the CPU (shapes as `mamba1d_scan`; dt_bias and D required, zeros for none)."""
    dtype, args, params, rows = _operands(u, z, xdbl, dt_weight, dt_bias, A, D)  # kept alive: args point into them
    batch, length, dim = u.shape
    out = torch.empty((batch, length, dim), dtype=dtype)
    kernel_function("mamba1d_fwd", dtype)(*args, int(delta_softplus), out.data_ptr(), batch, length, dim,
                                  dt_weight.shape[1], A.shape[1], _threads(u, A))
    return out.to(u.dtype)


@mamba1d_scan_op.register_fake
def _mamba1d_scan_fake(u, z, xdbl, dt_weight, dt_bias, A, D, delta_softplus):
    return u.new_empty(u.shape)


@torch.library.custom_op("climp::mamba1d_scan_backward", mutates_args=(), device_types="cpu")
def mamba1d_scan_backward(u: Tensor, z: Optional[Tensor], xdbl: Tensor, dt_weight: Tensor, dt_bias: Tensor,
                          A: Tensor, D: Tensor, delta_softplus: bool, grad_out: Tensor) -> List[Tensor]:
    """Gradients of u, z (empty without z), xdbl, dt_weight, dt_bias, A, D (contiguous, in the
    inputs' dtypes); states recomputed."""
    dtype, args, params, (uc, zc, xc) = _operands(u, z, xdbl, dt_weight, dt_bias, A, D)
    gc = grad_out.to(dtype).contiguous()
    batch, length, dim = u.shape
    du = torch.empty(u.shape, dtype=dtype)
    dz = None if z is None else torch.empty(u.shape, dtype=dtype)
    dx = torch.empty(xdbl.shape, dtype=dtype)
    dparams = [torch.empty_like(p) for p in params]
    kernel_function("mamba1d_bwd", dtype)(
        *args, int(delta_softplus), gc.data_ptr(), du.data_ptr(), None if dz is None else dz.data_ptr(),
        dx.data_ptr(), *(g.data_ptr() for g in dparams), batch, length, dim, dt_weight.shape[1], A.shape[1],
        _threads(u, A))
    grads = [du.to(u.dtype), u.new_empty(0) if z is None else dz.to(z.dtype), dx.to(xdbl.dtype)]
    return grads + [g.to(t.dtype) for g, t in zip(dparams, (dt_weight, dt_bias, A, D))]


@mamba1d_scan_backward.register_fake
def _mamba1d_scan_backward_fake(u, z, xdbl, dt_weight, dt_bias, A, D, delta_softplus, grad_out):
    like = (u, z, xdbl, dt_weight, dt_bias, A, D)
    return [u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in like]


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:7])
    ctx.delta_softplus = inputs[7]


def _backward(ctx, grad_out):
    u, z, xdbl, dt_weight, dt_bias, A, D = ctx.saved_tensors
    grads = mamba1d_scan_backward(u, z, xdbl, dt_weight, dt_bias, A, D, ctx.delta_softplus, grad_out)
    if z is None:
        grads[1] = None
    return (*grads, None)


mamba1d_scan_op.register_autograd(_backward, setup_context=_setup_context)


refuse_double_backward(mamba1d_scan_backward, "the fused 1D scan")


def mamba1d_flops(batch: int, length: int, dim: int, rank: int, state: int, with_z: bool = True) -> int:
    """Forward FLOPs of one fused call, what the unfused path counts: the scan (VMamba's
    9*B*L*D*N plus B*D*L for the D skip and B*D*L for the gate, `selective_scan_flops`) and the dt
    projection at 2 FLOPs per multiply-add (as its matmul counts)."""
    return (selective_scan_flops(batch, dim, length, state, with_D=True, with_z=with_z)
            + 2 * batch * length * dim * rank)


@register_flop_formula(torch.ops.climp.mamba1d_scan)
def _mamba1d_flop_formula(u_shape, z_shape, xdbl_shape, dt_weight_shape, dt_bias_shape, A_shape, *args,
                          **kwargs) -> int:
    batch, length, dim = u_shape
    return mamba1d_flops(batch, length, dim, dt_weight_shape[1], A_shape[1], with_z=z_shape is not None)



def fused_mamba1d_available(u: Tensor, backend: str = "auto") -> bool:
    """Whether `mamba1d_scan(u, ..., backend=backend)` runs the fused op: CPU (kernel built) or
    meta tensors and backend "auto" (a named backend selects the unfused path)."""
    if backend != "auto" or u.device.type not in ("cpu", "meta"):
        return False
    return u.device.type == "meta" or cpu_kernel_available()


def mamba1d_scan(
    u: Tensor,
    z: Optional[Tensor],
    xdbl: Tensor,
    dt_weight: Tensor,
    dt_bias: Optional[Tensor],
    A: Tensor,
    D: Optional[Tensor],
    delta_softplus: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Mamba-1's gated selective scan, channel-last: (batch, L, dim) -> (batch, L, dim) (see the
    module docstring). backend: "auto" (fused on the CPU) or a selective-scan backend name for
    the unfused path."""
    check_mamba1d_inputs(u, z, xdbl, dt_weight, dt_bias, A, D)
    inputs = (u, z, xdbl, dt_weight, dt_bias, A, D)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if (needs_grad and double_backward_enabled()) or not fused_mamba1d_available(u, backend):
        return mamba1d_scan_reference(u, z, xdbl, dt_weight, dt_bias, A, D, delta_softplus, backend=backend)
    dim = u.shape[2]
    dt_bias = u.new_zeros(dim, dtype=A.dtype) if dt_bias is None else dt_bias
    D = u.new_zeros(dim, dtype=A.dtype) if D is None else D
    return mamba1d_scan_op(u, z, xdbl, dt_weight, dt_bias, A, D, bool(delta_softplus))
