"""The one entry point for the selective scan; picks a backend and checks shapes.

Backends: "reference" (sequential loop, the ground truth), "cpu" (compiled C kernel, forward
and backward, as the custom op `climp::selective_scan`), "chunked" (parallel scan in plain
PyTorch ops, any device), "cuda" (mamba_ssm's kernel). Every backend takes the same arguments
and returns the same values.

How "auto" chooses:
  * CUDA tensors use "cuda" when mamba_ssm is importable, except float64 ones (mamba_ssm's
    kernel computes in float32 at most; "chunked" keeps float64 end to end);
  * CPU tensors use "cpu" when the C kernel builds (else "chunked", with a one-time warning);
  * meta tensors use "cpu", whose op has a fake implementation (shapes only, nothing built);
  * any other device uses "chunked";
  * inside `double_backward_mode()`, when grad mode is on and an input requires grad, "auto"
    uses "chunked" on every device: the kernels' backward passes (ours and mamba_ssm's) are
    not differentiable themselves, while "chunked" is built from autograd ops and so is
    differentiable any number of times. Hessian-vector products wrap their computation in
    this context manager. (Outside it, a second backward through "cpu" raises an error that
    says so rather than returning a wrong answer.)
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

import torch

from .chunked import selective_scan_chunked
from .cpu_build import KernelBuildError, load_cpu_kernel
from .cpu_scan import selective_scan_cpu
from .cuda import mamba_ssm_available, selective_scan_cuda
from .reference import selective_scan_reference

ScanFn = Callable[..., torch.Tensor]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

BACKENDS: Dict[str, ScanFn] = {
    "reference": selective_scan_reference,
    "cpu": selective_scan_cpu,
    "chunked": selective_scan_chunked,
    "cuda": selective_scan_cuda,
}

_double_backward = contextvars.ContextVar("climp_double_backward", default=False)
_warned_no_kernel = False


@contextlib.contextmanager
def double_backward_mode(enabled: bool = True) -> Iterator[None]:
    """Within this block, "auto" picks a twice-differentiable backend for scans that need grads."""
    token = _double_backward.set(enabled)
    try:
        yield
    finally:
        _double_backward.reset(token)


def double_backward_enabled() -> bool:
    """Whether the innermost double_backward_mode() block is active."""
    return _double_backward.get()


@torch.compiler.assume_constant_result
def _cpu_backend_or_fallback() -> str:
    """"cpu" when the kernel builds, else "chunked" (warned once); torch.compile takes the answer
    as a constant rather than tracing the build."""
    global _warned_no_kernel
    try:
        load_cpu_kernel()
        return "cpu"
    except KernelBuildError as err:
        if not _warned_no_kernel:
            _warned_no_kernel = True
            warnings.warn(f"selective scan falls back to the slower 'chunked' backend: {err}", RuntimeWarning)
        return "chunked"


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise a ValueError that names the offending argument when shapes or dtypes disagree."""
    for name, t in zip(NAMES, (u, delta, A, B, C, D, z, delta_bias)):
        if t is not None and t.is_complex():
            raise ValueError(
                f"{name} is complex ({t.dtype}); climp's selective scan supports real inputs only "
                "(mamba_ssm's complex A, S4D-Lin style, is not implemented)"
            )
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, state), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = t.shape == (dim, state)
        elif t.dim() == 3:
            ok = t.shape == (batch, state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (state, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch={batch}, state={state}, length={length}), "
                f"(batch, groups dividing {dim}, state, length) or time-invariant (dim={dim}, state), "
                f"got {tuple(t.shape)}"
            )
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(t.shape)}")


def resolve_backend(backend: str, u: torch.Tensor, needs_grad: bool = False) -> str:
    """Map "auto" to a backend for u's device (rules in the module docstring); check others.

    needs_grad: whether autograd will differentiate the scan (grad mode on and some input
    requires grad); it matters only inside double_backward_mode().
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; available: {sorted(BACKENDS)} or 'auto'")
        return backend
    if needs_grad and double_backward_enabled():
        return "chunked"
    if u.device.type == "cuda":
        return "cuda" if mamba_ssm_available() and u.dtype != torch.float64 else "chunked"
    if u.device.type == "cpu":
        return _cpu_backend_or_fallback()
    if u.device.type == "meta":
        return "cpu"
    return "chunked"


def _groups(BC: torch.Tensor, dim: int) -> int:
    return {2: dim, 3: 1}.get(BC.dim(), BC.shape[1])


def _per_channel(BC: torch.Tensor, batch: int, dim: int, length: int) -> torch.Tensor:
    """B or C in any accepted shape as (batch, dim, state, length), one group per channel (an
    expanded view where possible; autograd sums the gradient back)."""
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(batch, -1, -1, length)
    if BC.dim() == 3:
        return BC[:, None].expand(-1, dim, -1, -1)
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan with mamba_ssm's semantics and shapes (its `selective_scan_fn`).

    u, delta, z: (batch, dim, length); A: (dim, state), real; B, C: (batch, state, length),
    grouped (batch, groups, state, length), or time-invariant (dim, state); D, delta_bias: (dim,).
    Returns (batch, dim, length) in u's dtype; with return_last_state, also the state after the
    last step, (batch, dim, state) in the compute dtype (float32, float64 for float64 inputs).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    name = resolve_backend(backend, u, needs_grad)
    batch, dim, length = u.shape
    if name != "cuda" and (B.dim() == 2 or _groups(B, dim) != _groups(C, dim)):
        # The backends take B and C grouped alike; mamba_ssm takes these as they are.
        B, C = _per_channel(B, batch, dim, length), _per_channel(C, batch, dim, length)
    return BACKENDS[name](u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=return_last_state)
