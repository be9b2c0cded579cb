"""SS2D: VMamba's four-direction selective scan of a channel-last feature map, fused or unfused.

`ss2d` takes the map u (batch, H, W, dim), the x_proj output computed in the map's own order
xdbl (batch, H, W, 4, rank + 2 * d_state) (per pixel and direction: the low-rank dt input, B, C;
the projection is per pixel, so it commutes with any traversal), and the per-direction dt
projection, dt bias, A and D (direction-major, as VMamba stores them). It returns the four
directions' scans summed back onto the grid, channel-last (batch, H, W, dim), which is what the
layer norm after it reads.

With backend "auto" on the CPU (and on the meta device, for shapes and FLOP counts) it runs the
custom op `climp::ss2d_scan` (csrc/ss2d_impl.h): traversals are index arithmetic, the merge
accumulates in the kernel and the dt projection runs in registers, so no (batch, 4, dim, pixels)
tensor is made; autograd saves only the op's inputs. Elsewhere (CUDA), with a named scan backend
("cpu" included), or when a twice-differentiable graph is needed (inside `double_backward_mode()`),
it runs `ss2d_reference`: cross_scan, the dt projection, one grouped `selective_scan(backend=...)`
and cross_merge in PyTorch ops (the unfused path the fused op is tested against).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from .cpu_build import cpu_kernel_available, kernel_function
from .cross_scan import cross_merge, cross_scan
from .selective_scan import double_backward_enabled, selective_scan

NUM_DIRECTIONS = 4
# Below this many state updates a call runs on one thread (as the plain scan kernel does).
MIN_UPDATES_PER_THREAD = 1 << 16


def check_ss2d_inputs(u, xdbl, dt_weight, dt_bias, A, D) -> Tuple[int, int]:
    """Raise a ValueError naming the argument whose shape disagrees; return (rank, d_state)."""
    if u.dim() != 4:
        raise ValueError(f"u must be channel-last (batch, H, W, dim), got shape {tuple(u.shape)}")
    batch, height, width, dim = u.shape
    if A.dim() != 2 or A.shape[0] != NUM_DIRECTIONS * dim:
        raise ValueError(f"A must be (4 * dim={NUM_DIRECTIONS * dim}, d_state), got {tuple(A.shape)}")
    state = A.shape[1]
    if dt_weight.dim() != 3 or dt_weight.shape[:2] != (NUM_DIRECTIONS, dim):
        raise ValueError(f"dt_weight must be (4, dim={dim}, rank), got {tuple(dt_weight.shape)}")
    rank = dt_weight.shape[2]
    want = (batch, height, width, NUM_DIRECTIONS, rank + 2 * state)
    if tuple(xdbl.shape) != want:
        raise ValueError(f"xdbl must be (batch, H, W, 4, rank + 2 * d_state) = {want}, got {tuple(xdbl.shape)}")
    for name, t in (("dt_bias", dt_bias), ("D", D)):
        if t is not None and t.numel() != NUM_DIRECTIONS * dim:
            raise ValueError(f"{name} must have 4 * dim = {NUM_DIRECTIONS * dim} elements, got {tuple(t.shape)}")
    return rank, state


def _directional(t: torch.Tensor) -> torch.Tensor:
    """(batch, 4, C, H, W) -> (batch, 4, C, H*W): slice k read in direction k's order."""
    rows = [t[:, k].flatten(2) for k in (0, 2)]
    cols = [t[:, k].transpose(2, 3).flatten(2) for k in (1, 3)]
    return torch.stack([rows[0], cols[0], rows[1].flip(-1), cols[1].flip(-1)], dim=1)


def ss2d_reference(
    u: torch.Tensor,
    xdbl: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: Optional[torch.Tensor],
    A: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Unfused SS2D in PyTorch ops plus one grouped `selective_scan(backend=backend)` call."""
    rank, state = check_ss2d_inputs(u, xdbl, dt_weight, dt_bias, A, D)
    batch, height, width, dim = u.shape
    length = height * width
    xs = cross_scan(u.permute(0, 3, 1, 2))  # (batch, 4, dim, L)
    proj = _directional(xdbl.permute(0, 3, 4, 1, 2))  # (batch, 4, rank + 2 * state, L)
    dtr, Bs, Cs = proj.split([rank, state, state], dim=2)
    dts = torch.matmul(dt_weight, dtr)  # (batch, 4, dim, L)
    ys = selective_scan(
        xs.reshape(batch, NUM_DIRECTIONS * dim, length),
        dts.reshape(batch, NUM_DIRECTIONS * dim, length),
        A,
        Bs.contiguous(),
        Cs.contiguous(),
        None if D is None else D.reshape(-1),
        delta_bias=None if dt_bias is None else dt_bias.reshape(-1),
        delta_softplus=delta_softplus,
        backend=backend,
    )
    y = cross_merge(ys.view(batch, NUM_DIRECTIONS, dim, length), height, width)
    return y.transpose(1, 2).reshape(batch, height, width, dim)


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _threads(batch: int, dim: int, length: int, state: int) -> int:
    updates = NUM_DIRECTIONS * batch * dim * length * state
    return max(1, min(torch.get_num_threads(), updates // MIN_UPDATES_PER_THREAD))



def _prepared(tensors, dtype: torch.dtype) -> List[torch.Tensor]:
    """The tensors in dtype and contiguous (as they are, without a dispatch, when they already are:
    a small map's call is short enough for the wrapper's per-tensor calls to count)."""
    return [t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous() for t in tensors]


@torch.library.custom_op("climp::ss2d_scan", mutates_args=(), device_types="cpu")
def ss2d_scan(u: torch.Tensor, xdbl: torch.Tensor, dt_weight: torch.Tensor, dt_bias: torch.Tensor,
              A: torch.Tensor, D: torch.Tensor, delta_softplus: bool) -> torch.Tensor:
    """Fused SS2D on the CPU (shapes as `ss2d`; dt_bias and D required, zeros for none)."""
    dtype = _compute_dtype(u)
    uc, xc, wc, bc, Ac, Dc = _prepared((u, xdbl, dt_weight, dt_bias, A, D), dtype)
    batch, height, width, dim = u.shape
    out = torch.empty(uc.shape, dtype=dtype)
    kernel_function("ss2d_fwd", dtype)(
        uc.data_ptr(), xc.data_ptr(), wc.data_ptr(), bc.data_ptr(), Ac.data_ptr(), Dc.data_ptr(),
        int(delta_softplus), out.data_ptr(), batch, height, width, dim, wc.shape[2], Ac.shape[1],
        _threads(batch, dim, height * width, Ac.shape[1]),
    )
    return out if out.dtype == u.dtype else out.to(u.dtype)


@ss2d_scan.register_fake
def _ss2d_scan_fake(u, xdbl, dt_weight, dt_bias, A, D, delta_softplus):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("climp::ss2d_scan_backward", mutates_args=(), device_types="cpu")
def ss2d_scan_backward(u: torch.Tensor, xdbl: torch.Tensor, dt_weight: torch.Tensor, dt_bias: torch.Tensor,
                       A: torch.Tensor, D: torch.Tensor, delta_softplus: bool,
                       grad_out: torch.Tensor) -> List[torch.Tensor]:
    """Gradients of `ss2d_scan` for (u, xdbl, dt_weight, dt_bias, A, D), states recomputed."""
    dtype = _compute_dtype(u)
    inputs = (u, xdbl, dt_weight, dt_bias, A, D)
    uc, xc, wc, bc, Ac, Dc = _prepared(inputs, dtype)
    (gc,) = _prepared((grad_out,), dtype)
    grads = [torch.empty(t.shape, dtype=dtype) for t in (uc, xc, wc, bc, Ac, Dc)]
    batch, height, width, dim = u.shape
    kernel_function("ss2d_bwd", dtype)(
        uc.data_ptr(), xc.data_ptr(), wc.data_ptr(), bc.data_ptr(), Ac.data_ptr(), Dc.data_ptr(),
        int(delta_softplus), gc.data_ptr(), *(g.data_ptr() for g in grads), batch, height, width, dim,
        wc.shape[2], Ac.shape[1], _threads(batch, dim, height * width, Ac.shape[1]),
    )
    return [g if g.dtype == t.dtype else g.to(t.dtype) for g, t in zip(grads, inputs)]


@ss2d_scan_backward.register_fake
def _ss2d_scan_backward_fake(u, xdbl, dt_weight, dt_bias, A, D, delta_softplus, grad_out):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (u, xdbl, dt_weight, dt_bias, A, D)]


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6])
    ctx.delta_softplus = inputs[6]


def _backward(ctx, grad_out):
    grads = ss2d_scan_backward(*ctx.saved_tensors, ctx.delta_softplus, grad_out)
    return (*grads, None)


ss2d_scan.register_autograd(_backward, setup_context=_setup_context)


def ss2d_flops(batch: int, height: int, width: int, dim: int, rank: int, state: int) -> int:
    """Forward FLOPs of one SS2D call: per direction VMamba's scan count 9*B*L*D*N plus B*D*L for
    the D skip, and the dt projection at 2 FLOPs per multiply-add (as a matmul counts)."""
    per_direction = 9 * batch * height * width * dim * state + batch * dim * height * width
    return NUM_DIRECTIONS * (per_direction + 2 * batch * height * width * dim * rank)


@register_flop_formula(torch.ops.climp.ss2d_scan)
def _ss2d_flop_formula(u_shape, xdbl_shape, dt_weight_shape, dt_bias_shape, A_shape, *args, **kwargs) -> int:
    batch, height, width, dim = u_shape
    return ss2d_flops(batch, height, width, dim, dt_weight_shape[2], A_shape[1])


def fused_ss2d_available(u: torch.Tensor, backend: str = "auto") -> bool:
    """Whether `ss2d(u, ..., backend=backend)` runs the fused op: CPU (kernel built) or meta
    tensors and backend "auto" (a named backend, "cpu" included, selects the unfused path)."""
    if backend != "auto" or u.device.type not in ("cpu", "meta"):
        return False
    return u.device.type == "meta" or cpu_kernel_available()



def _flat(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 1 else t.reshape(-1)


def ss2d(
    u: torch.Tensor,
    xdbl: torch.Tensor,
    dt_weight: torch.Tensor,
    dt_bias: Optional[torch.Tensor],
    A: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """SS2D of a channel-last map: (batch, H, W, dim) -> (batch, H, W, dim) (see module docstring).

    dt_weight: (4, dim, rank); dt_bias, D: 4 * dim values or None; A: (4 * dim, d_state).
    backend: "auto" (fused on the CPU) or a selective-scan backend name for the unfused path.
    """
    check_ss2d_inputs(u, xdbl, dt_weight, dt_bias, A, D)
    inputs = (u, xdbl, dt_weight, dt_bias, A, D)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if (needs_grad and double_backward_enabled()) or not fused_ss2d_available(u, backend):
        return ss2d_reference(u, xdbl, dt_weight, dt_bias, A, D, delta_softplus, backend=backend)
    dim4 = NUM_DIRECTIONS * u.shape[3]
    dt_bias = u.new_zeros(dim4, dtype=A.dtype) if dt_bias is None else _flat(dt_bias)
    D = u.new_zeros(dim4, dtype=A.dtype) if D is None else _flat(D)
    return ss2d_scan(u, xdbl, dt_weight, dt_bias, A, D, bool(delta_softplus))
