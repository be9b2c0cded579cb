"""The `cpu` backend: the compiled kernel of csrc/selective_scan.c behind an autograd Function.

The forward saves only the inputs, plus, when z is given and d_state > 1, the (batch, dim,
length) output before gating (for z's gradient; with one state the backward gets it from the
recomputed state); the backward recomputes the states one block of channels at a time. The
kernel computes in float32 (float64 for float64 inputs) and returns outputs and gradients in
the inputs' dtypes. Its backward is not itself differentiable (see selective_scan.py for how
`auto` routes double backward elsewhere).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .cpu_build import load_cpu_kernel


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _prepared(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A contiguous copy in the compute dtype (no copy when it already is one)."""
    return None if t is None else t.detach().to(dtype).contiguous()


def _grouped(BC: torch.Tensor) -> torch.Tensor:
    return BC.unsqueeze(1) if BC.dim() == 3 else BC


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _kernel(lib, dtype: torch.dtype, direction: str):
    return getattr(lib, f"selective_scan_{direction}_{'f64' if dtype == torch.float64 else 'f32'}")


# Below this many state updates a call runs on one thread: waking a team costs more than it saves.
MIN_UPDATES_PER_THREAD = 1 << 16


def _shape_args(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> Tuple[int, int, int, int, int, int]:
    batch, dim, length = u.shape
    updates = batch * dim * length * A.shape[1]
    threads = max(1, min(torch.get_num_threads(), updates // MIN_UPDATES_PER_THREAD))
    return batch, dim, length, A.shape[1], B.shape[1], threads


class _CpuSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = _compute_dtype(u)
        uc, dc, Ac, Dc, zc, bc = (_prepared(t, dtype) for t in (u, delta, A, D, z, delta_bias))
        Bc, Cc = _prepared(_grouped(B), dtype), _prepared(_grouped(C), dtype)
        out = torch.empty(u.shape, dtype=dtype)
        # Before D and gating; with one state the backward recomputes it.
        y_ssm = None if z is None or A.shape[1] == 1 else torch.empty(u.shape, dtype=dtype)
        _kernel(load_cpu_kernel(), dtype, "fwd")(
            uc.data_ptr(), dc.data_ptr(), Ac.data_ptr(), Bc.data_ptr(), Cc.data_ptr(), _ptr(Dc), _ptr(zc),
            _ptr(bc), int(delta_softplus), out.data_ptr(), _ptr(y_ssm), *_shape_args(uc, Ac, Bc),
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y_ssm)
        ctx.delta_softplus = delta_softplus
        return out.to(u.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, y_ssm = ctx.saved_tensors
        dtype = _compute_dtype(u)
        uc, dc, Ac, Dc, zc, bc = (_prepared(t, dtype) for t in (u, delta, A, D, z, delta_bias))
        Bc, Cc = _prepared(_grouped(B), dtype), _prepared(_grouped(C), dtype)
        doutc = _prepared(dout, dtype)
        du, ddelta = torch.empty_like(uc), torch.empty_like(dc)
        dA, dB, dC = torch.empty_like(Ac), torch.empty_like(Bc), torch.empty_like(Cc)
        dD = None if D is None else torch.empty_like(Dc)
        dz = None if z is None else torch.empty_like(zc)
        dbias = None if delta_bias is None else torch.empty_like(bc)
        _kernel(load_cpu_kernel(), dtype, "bwd")(
            uc.data_ptr(), dc.data_ptr(), Ac.data_ptr(), Bc.data_ptr(), Cc.data_ptr(), _ptr(Dc), _ptr(zc),
            _ptr(bc), int(ctx.delta_softplus), _ptr(y_ssm), doutc.data_ptr(), du.data_ptr(), ddelta.data_ptr(),
            dA.data_ptr(), dB.data_ptr(), dC.data_ptr(), _ptr(dD), _ptr(dz), _ptr(dbias),
            *_shape_args(uc, Ac, Bc),
        )
        grads = (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.to(A.dtype),
            dB.view(B.shape).to(B.dtype),
            dC.view(C.shape).to(C.dtype),
            None if D is None else dD.to(D.dtype),
            None if z is None else dz.to(z.dtype),
            None if delta_bias is None else dbias.to(delta_bias.dtype),
            None,
        )
        return grads


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan with the compiled CPU kernel (same contract as selective_scan_reference)."""
    if u.device.type != "cpu":
        raise ValueError(f"the 'cpu' selective-scan backend needs CPU tensors, got u on {u.device}")
    return _CpuSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
