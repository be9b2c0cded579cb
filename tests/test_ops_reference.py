"""The sequential reference against an independent naive loop, plus float64 grad checks."""
from __future__ import annotations

import pytest
import torch

from climp.ops import selective_scan_reference

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Materialises exp(delta A) and delta B u as (batch, dim, length, state), as mamba_ssm's
    selective_scan_ref does, and steps through the sequence in float64."""
    u64, delta64, A64 = u.double(), delta.double(), A.double()
    if delta_bias is not None:
        delta64 = delta64 + delta_bias.double()[:, None]
    if delta_softplus:
        delta64 = torch.log1p(torch.exp(delta64))
    batch, dim, length = u.shape
    if B.dim() == 3:
        B_full, C_full = B.double()[:, None], C.double()[:, None]
    else:
        group_of_channel = torch.arange(dim) // (dim // B.shape[1])
        B_full, C_full = B.double()[:, group_of_channel], C.double()[:, group_of_channel]
    B_full = B_full.expand(batch, dim, -1, -1)
    C_full = C_full.expand(batch, dim, -1, -1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta64, A64))
    drive = torch.einsum("bdl,bdnl,bdl->bdln", delta64, B_full, u64)
    state = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", state, C_full[:, :, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u64 * D.double()[:, None]
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y


def make_inputs(batch=2, dim=6, length=9, state=3, groups=None, options=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5 - 0.5,
        "A": -(randn(dim, state).abs() + 0.3),
        "B": randn(*bc),
        "C": randn(*bc),
        "D": randn(dim) if options else None,
        "z": randn(batch, dim, length) if options else None,
        "delta_bias": randn(dim) * 0.2 if options else None,
    }


@pytest.mark.parametrize("groups", [None, 1, 2, 3])
@pytest.mark.parametrize("options", [True, False])
@pytest.mark.parametrize("softplus", [True, False])
def test_reference_matches_naive_loop(groups, options, softplus):
    inputs = make_inputs(groups=groups, options=options)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
    expected = naive_scan(**inputs, delta_softplus=softplus)
    actual = selective_scan_reference(**inputs, delta_softplus=softplus)
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_low_precision_returns_input_dtype(dtype):
    inputs = make_inputs(groups=2, dtype=dtype)
    expected = naive_scan(**inputs, delta_softplus=True)
    actual = selective_scan_reference(**inputs, delta_softplus=True)
    assert actual.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def _checked(inputs, softplus):
    names = [k for k in NAMES if inputs[k] is not None]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def scan(*args):
        return selective_scan_reference(**dict(zip(names, args)), delta_softplus=softplus)

    return scan, leaves


@pytest.mark.parametrize("groups", [None, 2])
def test_reference_gradcheck_float64(groups):
    scan, leaves = _checked(make_inputs(batch=2, dim=4, length=5, state=2, groups=groups), True)
    assert torch.autograd.gradcheck(scan, leaves)


@pytest.mark.parametrize("options", [True, False])
def test_reference_gradgradcheck_float64(options):
    scan, leaves = _checked(make_inputs(batch=1, dim=4, length=4, state=2, groups=2, options=options), options)
    assert torch.autograd.gradgradcheck(scan, leaves)
