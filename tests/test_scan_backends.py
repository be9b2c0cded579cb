"""Every fast selective-scan backend against the sequential reference: values and all grads."""
from __future__ import annotations

import importlib
import threading
import types
import warnings

import pytest
import torch

from climp.ops import (
    build_cpu_kernel,
    cross_merge,
    cross_scan,
    double_backward_mode,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)
from climp.ops import cpu_build
from climp.ops.chunked import selective_scan_chunked
from climp.ops.cpu_scan import selective_scan_cpu

# The module, not the function of the same name that climp.ops exports.
dispatch = importlib.import_module("climp.ops.selective_scan")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
FAST_BACKENDS = {"cpu": selective_scan_cpu, "chunked": lambda *a, **k: selective_scan_chunked(*a, chunk_size=8, **k)}


def make_inputs(batch=2, dim=8, length=19, state=4, groups=None, z=True, D=True, bias=True,
                softplus=True, dtype=torch.float32, param_dtype=None, strided=False, seed=0):
    """Inputs in a stable regime (decaying states); strided=True gives non-contiguous views."""
    gen = torch.Generator().manual_seed(seed)
    param_dtype = param_dtype or dtype

    def rand(*shape, scale=1.0, shift=0.0, dt=dtype, transpose=False):
        if strided and transpose and len(shape) >= 2:
            t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen, dtype=torch.float64).transpose(-1, -2)
        elif strided:
            t = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, dtype=torch.float64)[..., ::2]
        else:
            t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t * scale + shift).to(dt)

    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    raw_delta = rand(batch, dim, length, scale=0.5, shift=-1.0) if softplus else rand(batch, dim, length).abs() * 0.3
    inputs = {
        "u": rand(batch, dim, length, transpose=True),
        "delta": raw_delta,
        "A": -(rand(dim, state, dt=param_dtype, transpose=True).abs() + 0.2),
        "B": rand(*bc_shape, transpose=True),
        "C": rand(*bc_shape),
        "D": rand(dim, dt=param_dtype) if D else None,
        "z": rand(batch, dim, length) if z else None,
        "delta_bias": rand(dim, scale=0.3, dt=param_dtype) if bias else None,
    }
    return inputs


def leaves(inputs):
    return {k: (None if v is None else v.detach().clone().requires_grad_()) for k, v in inputs.items()}


def run_with_grads(fn, inputs, softplus, seed=1):
    x = leaves(inputs)
    out = fn(*(x[k] for k in NAMES), delta_softplus=softplus)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    wrt = [k for k in NAMES if x[k] is not None]
    grads = torch.autograd.grad(out, [x[k] for k in wrt], grad_out)
    return out, dict(zip(wrt, grads))


def assert_scaled_close(actual, expected, rtol, name):
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.double().abs().max().item() + 1e-12
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


CASES = {
    "full": dict(),
    "no_z_no_D": dict(z=False, D=False),
    "no_bias_no_softplus": dict(bias=False, softplus=False),
    "groups2": dict(groups=2),
    "groups4_state1": dict(groups=4, state=1),
    "state16": dict(state=16, length=37),
    "state1_long": dict(state=1, length=70),
    "length1": dict(length=1),
    "batch1_odd_dim": dict(batch=1, dim=13, groups=None),
    "groups2_partial_blocks": dict(dim=20, groups=2, state=3),
    "strided": dict(strided=True, groups=2),
}


@pytest.mark.parametrize("backend", sorted(FAST_BACKENDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_matches_reference_float32(backend, case):
    kwargs = dict(CASES[case])
    softplus = kwargs.get("softplus", True)
    inputs = make_inputs(**kwargs)
    out_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, softplus)
    out, grads = run_with_grads(FAST_BACKENDS[backend], inputs, softplus)
    assert_scaled_close(out, out_ref, 1e-4, "out")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert_scaled_close(grads[name], grads_ref[name], 1e-4, f"d{name}")


@pytest.mark.parametrize("backend", sorted(FAST_BACKENDS))
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_backend_matches_reference_bfloat16(backend, param_dtype):
    inputs = make_inputs(dtype=torch.bfloat16, param_dtype=param_dtype, groups=2, length=23)
    out_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, True)
    out, grads = run_with_grads(FAST_BACKENDS[backend], inputs, True)
    assert out.dtype == torch.bfloat16
    assert_scaled_close(out, out_ref, 2e-2, "out")
    for name in grads_ref:
        assert grads[name].dtype == inputs[name].dtype, name
        assert_scaled_close(grads[name], grads_ref[name], 3e-2, f"d{name}")


def test_cpu_state1_two_threads_matches_reference():
    """Big enough for the kernel to split d_state-1 blocks over two threads (dB, dC partials)."""
    inputs = make_inputs(batch=2, dim=512, length=131, state=1, groups=4, z=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, grads = run_with_grads(selective_scan_cpu, inputs, True)
    finally:
        torch.set_num_threads(previous)
    out_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, True)
    assert_scaled_close(out, out_ref, 1e-4, "out")
    for name in grads_ref:
        assert_scaled_close(grads[name], grads_ref[name], 1e-4, f"d{name}")


def test_float16_inputs_cpu():
    inputs = make_inputs(dtype=torch.float16, state=2)
    out_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, True)
    out, grads = run_with_grads(selective_scan_cpu, inputs, True)
    assert_scaled_close(out, out_ref, 5e-3, "out")
    for name in grads_ref:
        assert_scaled_close(grads[name], grads_ref[name], 1e-2, f"d{name}")


@pytest.mark.parametrize("backend", sorted(FAST_BACKENDS))
@pytest.mark.parametrize("case", ["full", "groups2_plain", "state1_gated"])
def test_backend_gradcheck_float64(backend, case):
    kwargs = dict(batch=2, dim=4, length=6, state=2, dtype=torch.float64)
    if case == "groups2_plain":
        kwargs.update(groups=2, z=False, bias=False, softplus=False)
    if case == "state1_gated":  # the d_state-1 kernel recomputes the pre-gate output for dz
        kwargs.update(state=1, dim=10, length=11)
    softplus = kwargs.get("softplus", True)
    x = leaves(make_inputs(**kwargs))
    wrt = [k for k in NAMES if x[k] is not None]
    fn = FAST_BACKENDS[backend]

    def scan(*args):
        kw = dict(zip(wrt, args))
        return fn(*(kw.get(k) for k in NAMES), delta_softplus=softplus)

    assert torch.autograd.gradcheck(scan, [x[k] for k in wrt])


def test_chunked_gradgradcheck_float64():
    x = leaves(make_inputs(batch=1, dim=4, length=5, state=2, groups=2, dtype=torch.float64))

    def scan(*args):
        return selective_scan_chunked(*args, delta_softplus=True, chunk_size=2)

    assert torch.autograd.gradgradcheck(scan, [x[k] for k in NAMES])


def test_chunked_double_backward_matches_reference():
    """A Hessian-vector product through each: d/dx <grad_x(sum(out * w)), v>."""
    inputs = make_inputs(batch=2, dim=4, length=11, state=3, groups=2, dtype=torch.float64)
    results = []
    for fn in (selective_scan_reference, lambda *a, **k: selective_scan_chunked(*a, chunk_size=4, **k)):
        x = leaves(inputs)
        out = fn(*(x[k] for k in NAMES), delta_softplus=True)
        w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * w).sum(), [x[k] for k in NAMES], create_graph=True)
        vs = [torch.cos(torch.arange(g.numel(), dtype=g.dtype)).view_as(g) for g in grads]
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        results.append(torch.autograd.grad(dot, [x[k] for k in NAMES]))
    for name, a, b in zip(NAMES, *results):
        assert_scaled_close(a, b, 1e-5, f"hvp {name}")


def test_cpu_backward_refuses_double_backward():
    x = leaves(make_inputs(length=5))
    out = selective_scan_cpu(*(x[k] for k in NAMES), delta_softplus=True)
    (g,) = torch.autograd.grad(out.sum(), [x["u"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double_backward_mode"):
        torch.autograd.grad(g.sum(), [x["u"]])


def test_auto_uses_cpu_kernel_then_chunked_in_double_backward_mode():
    cpu = torch.zeros(1)
    assert resolve_backend("auto", cpu, needs_grad=True) == "cpu"
    with double_backward_mode():
        assert resolve_backend("auto", cpu, needs_grad=True) == "chunked"
        assert resolve_backend("auto", cpu, needs_grad=False) == "cpu"
        assert resolve_backend("cpu", cpu, needs_grad=True) == "cpu"
    # Meta tensors: the cpu op's fake implementation (shapes only).
    assert resolve_backend("auto", torch.zeros(1, device="meta")) == "cpu"


def test_auto_on_cuda_depends_on_mamba_ssm(monkeypatch):
    fake_cuda = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
    monkeypatch.setattr(dispatch, "mamba_ssm_available", lambda: True)
    assert resolve_backend("auto", fake_cuda) == "cuda"
    assert resolve_backend("auto", types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float64)) == "chunked"
    with double_backward_mode():
        assert resolve_backend("auto", fake_cuda, needs_grad=True) == "chunked"
    monkeypatch.setattr(dispatch, "mamba_ssm_available", lambda: False)
    assert resolve_backend("auto", fake_cuda) == "chunked"


def test_auto_without_compiler_falls_back_with_one_warning(monkeypatch):
    def no_kernel():
        raise cpu_build.KernelBuildError("no C compiler found")

    monkeypatch.setattr(dispatch, "load_cpu_kernel", no_kernel)
    monkeypatch.setattr(dispatch, "_warned_no_kernel", False)
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        assert resolve_backend("auto", torch.zeros(1)) == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.zeros(1)) == "chunked"


def test_unknown_backend_and_wrong_device_raise():
    inputs = make_inputs(length=3)
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        selective_scan(*(inputs[k] for k in NAMES), backend="triton")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        selective_scan(*(inputs[k] for k in NAMES), backend="cuda")


def test_dispatcher_double_backward_mode_gives_hessian_vector_products():
    x = leaves(make_inputs(batch=1, dim=8, length=9, state=2))
    with double_backward_mode():
        out = selective_scan(*(x[k] for k in NAMES), delta_softplus=True)
        (g,) = torch.autograd.grad(out.pow(2).sum(), [x["A"]], create_graph=True)
        (hvp,) = torch.autograd.grad(g.sum(), [x["A"]])
    y = leaves(make_inputs(batch=1, dim=8, length=9, state=2))
    out = selective_scan_reference(*(y[k] for k in NAMES), delta_softplus=True)
    (g,) = torch.autograd.grad(out.pow(2).sum(), [y["A"]], create_graph=True)
    (expected,) = torch.autograd.grad(g.sum(), [y["A"]])
    assert_scaled_close(hvp, expected, 1e-4, "hvp A")


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/climp-cc")
    with pytest.raises(cpu_build.KernelBuildError, match="no C compiler found"):
        build_cpu_kernel()


def test_concurrent_builds_into_fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIMP_CACHE", str(tmp_path))
    paths, errors = [], []

    def build():
        try:
            paths.append(build_cpu_kernel())
        except Exception as err:  # noqa: BLE001 - surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    assert paths[0].is_file() and str(paths[0]).startswith(str(tmp_path))
    assert not [p for p in paths[0].parent.iterdir() if p.name.startswith(".build-")]


def naive_cross_scan(x):
    batch, channels, height, width = x.shape
    rows = [x[:, :, i, j] for i in range(height) for j in range(width)]
    cols = [x[:, :, i, j] for j in range(width) for i in range(height)]
    seqs = [rows, cols, rows[::-1], cols[::-1]]
    return torch.stack([torch.stack(s, dim=-1) for s in seqs], dim=1)


def test_cross_scan_and_merge_against_loops():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(cross_scan(x), naive_cross_scan(x))
    torch.testing.assert_close(cross_scan(x[..., ::2, :]), naive_cross_scan(x[..., ::2, :]))
    ys = torch.randn(2, 4, 3, 20, requires_grad=True)
    merged = cross_merge(ys, 4, 5)
    # cross_merge is the adjoint of cross_scan: <cross_scan(x), ys> == <x, cross_merge(ys)>.
    torch.testing.assert_close((cross_scan(x) * ys).sum(), (x.flatten(2) * merged).sum())
    # Each one's backward is the other: d<merge(ys), w>/dys = scan(w), d<scan(x), ys>/dx = merge(ys).
    w = torch.randn(2, 3, 4, 5)
    (g,) = torch.autograd.grad(merged, [ys], w.flatten(2))
    torch.testing.assert_close(g, cross_scan(w))
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(cross_scan(x), [x], ys.detach())
    torch.testing.assert_close(g, cross_merge(ys.detach(), 4, 5).view_as(x))
    with pytest.raises(ValueError, match="height\\*width"):
        cross_merge(ys, 3, 5)


ALL_BACKENDS = dict(FAST_BACKENDS, reference=selective_scan_reference)


def naive_last_state(inputs, softplus):
    """The state after the last step by a float64 loop over time, channels and states."""
    x = {k: (None if v is None else v.double()) for k, v in inputs.items()}
    u, delta, A = x["u"], x["delta"], x["A"]
    batch, dim, length = u.shape
    if x["delta_bias"] is not None:
        delta = delta + x["delta_bias"][:, None]
    if softplus:
        delta = torch.nn.functional.softplus(delta)
    B = x["B"] if x["B"].dim() == 4 else x["B"][:, None]
    per_group = dim // B.shape[1]
    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    for t in range(length):
        for d in range(dim):
            Bt = B[:, d // per_group, :, t]
            h[:, d] = torch.exp(delta[:, d, t, None] * A[d]) * h[:, d] + (delta[:, d, t] * u[:, d, t])[:, None] * Bt
    return h


@pytest.mark.parametrize("backend", sorted(ALL_BACKENDS))
@pytest.mark.parametrize("case", ["full", "state1_long", "groups2_partial_blocks", "batch1_odd_dim"])
def test_return_last_state_values_and_gradients(backend, case):
    """(out, last_state) like mamba_ssm's selective_scan_fn; the last state checked against a
    plain loop, and gradients through both outputs against the reference's autograd."""
    kwargs = dict(CASES[case])
    softplus = kwargs.get("softplus", True)
    inputs = make_inputs(**kwargs)
    fn = ALL_BACKENDS[backend]
    x = leaves(inputs)
    out, last = fn(*(x[k] for k in NAMES), delta_softplus=softplus, return_last_state=True)
    batch, dim, _ = inputs["u"].shape
    assert last.shape == (batch, dim, inputs["A"].shape[1]) and last.dtype == torch.float32
    assert_scaled_close(last.double(), naive_last_state(inputs, softplus), 1e-4, "last_state")
    torch.testing.assert_close(out, fn(*(x[k] for k in NAMES), delta_softplus=softplus))
    gen = torch.Generator().manual_seed(5)
    w_out, w_last = torch.randn(out.shape, generator=gen), torch.randn(last.shape, generator=gen)
    wrt = [k for k in NAMES if x[k] is not None]
    grads = torch.autograd.grad((out * w_out).sum() + (last * w_last).sum(), [x[k] for k in wrt])
    y = leaves(inputs)
    out_ref, last_ref = selective_scan_reference(*(y[k] for k in NAMES), delta_softplus=softplus, return_last_state=True)
    grads_ref = torch.autograd.grad((out_ref * w_out).sum() + (last_ref * w_last).sum(), [y[k] for k in wrt])
    for name, g, g_ref in zip(wrt, grads, grads_ref):
        assert_scaled_close(g, g_ref, 1e-4, f"d{name}")


def test_cpu_last_state_gradcheck_float64():
    x = leaves(make_inputs(batch=2, dim=10, length=11, state=1, dtype=torch.float64))
    x2 = leaves(make_inputs(batch=2, dim=4, length=6, state=3, dtype=torch.float64))
    for inputs in (x, x2):
        def last_state(*args):
            return selective_scan_cpu(*args, delta_softplus=True, return_last_state=True)[1]

        assert torch.autograd.gradcheck(last_state, [inputs[k] for k in NAMES])


@pytest.mark.parametrize("backend", ["auto", "cpu", "chunked", "reference"])
@pytest.mark.parametrize("variable", ["neither", "B", "C"])
def test_time_invariant_B_C(backend, variable):
    """B, C of shape (dim, state) (mamba_ssm's non-variable B/C) equal the same values repeated
    over batch and time as per-channel groups, in value and gradient."""
    inputs = make_inputs(batch=2, dim=6, length=9, state=3)
    gen = torch.Generator().manual_seed(7)
    for name in ("B", "C"):
        if name != variable:
            inputs[name] = torch.randn(6, 3, generator=gen)
    x = leaves(inputs)
    out = selective_scan(*(x[k] for k in NAMES), delta_softplus=True, backend=backend)
    w = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, [x[k] for k in NAMES], w)
    y = leaves(inputs)
    expanded = {k: (y[k][None, :, :, None].expand(2, 6, 3, 9) if y[k].dim() == 2 else y[k][:, None].expand(2, 6, 3, 9))
                if k in ("B", "C") else y[k] for k in NAMES}
    out_ref = selective_scan_reference(*(expanded[k] for k in NAMES), delta_softplus=True)
    grads_ref = torch.autograd.grad(out_ref, [y[k] for k in NAMES], w)
    assert_scaled_close(out, out_ref, 1e-4, "out")
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert g.shape == inputs[name].shape
        assert_scaled_close(g, g_ref, 1e-4, f"d{name}")


def test_bad_B_shape_and_complex_inputs_are_refused():
    inputs = make_inputs(length=5)
    bad = dict(inputs, B=torch.randn(7, 4))
    with pytest.raises(ValueError, match="time-invariant \\(dim=8, state\\)"):
        selective_scan(*(bad[k] for k in NAMES))
    complex_A = dict(inputs, A=torch.complex(inputs["A"], torch.ones_like(inputs["A"])))
    with pytest.raises(ValueError, match="A is complex"):
        selective_scan(*(complex_A[k] for k in NAMES))


@pytest.mark.parametrize("backend", ["auto", "chunked"])
def test_B_and_C_with_different_groupings(backend):
    """B grouped in 2, C in 4 (or ungrouped): the backends, which take B and C grouped alike,
    get both per channel; values and gradients match the reference."""
    inputs = make_inputs(batch=2, dim=8, length=7, state=3, groups=2)
    gen = torch.Generator().manual_seed(9)
    for C in (torch.randn(2, 4, 3, 7, generator=gen), torch.randn(2, 3, 7, generator=gen)):
        inputs["C"] = C
        out, grads = run_with_grads(lambda *a, **k: selective_scan(*a, backend=backend, **k), inputs, True)
        out_ref, grads_ref = run_with_grads(selective_scan_reference, inputs, True)
        assert_scaled_close(out, out_ref, 1e-4, "out")
        for name in grads_ref:
            assert_scaled_close(grads[name], grads_ref[name], 1e-4, f"d{name}")
