"""The fused SS2D op (climp.ops.fused_ss2d) against the unfused path built on the sequential scan."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from climp.ops import cpu_kernel_available, double_backward_mode
from climp.ops.fused_ss2d import ss2d, ss2d_flops, ss2d_reference, ss2d_scan

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler to build the CPU kernel")


def make_inputs(batch, height, width, dim, rank, state, dtype=torch.float64, with_D=True, with_bias=True,
                softplus=True, seed=0):
    """Random SS2D inputs; without softplus the deltas are kept positive (as softplus would)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = rand(batch, height, width, dim)
    xdbl = rand(batch, height, width, 4, rank + 2 * state) * 0.5
    weight = rand(4, dim, rank) * 0.5
    bias = rand(4, dim) * 0.5 if with_bias else None
    if not softplus:  # delta = bias + weight . x >= 0.05
        xdbl[..., :rank] = xdbl[..., :rank].abs()
        weight = weight.abs() * 0.3
        bias = None if bias is None else bias.abs() + 0.05
        if bias is None:
            xdbl[..., :rank] += 0.05
    A = -(torch.rand(4 * dim, state, generator=g, dtype=dtype) + 0.5)
    D = rand(4 * dim) if with_D else None
    return [u, xdbl, weight, bias, A, D]


def grads_of(fn, inputs, softplus, grad_out=None):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves, softplus)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    used = [t for t in leaves if t is not None]
    return out, torch.autograd.grad(out, used, grad_out), grad_out


CASES = [  # (batch, H, W, dim, rank, d_state)
    (2, 3, 5, 5, 3, 1),  # odd H and W, H != W, channels below the SIMD width
    (1, 4, 4, 13, 2, 1),  # batch 1, 13 channels (one full block and a partial one)
    (2, 5, 3, 16, 4, 4),  # d_state > 1, two full blocks
    (1, 3, 6, 9, 5, 3),  # d_state not a multiple of anything
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("softplus,with_D,with_bias", [(True, True, True), (False, False, False), (True, False, True),
                                                       (False, True, False)])
def test_fused_matches_sequential_reference(case, dtype, softplus, with_D, with_bias):
    inputs = make_inputs(*case, dtype=dtype, with_D=with_D, with_bias=with_bias, softplus=softplus)
    out, grads, grad_out = grads_of(ss2d, inputs, softplus)
    ref = lambda *a: ss2d_reference(*a, backend="reference")  # noqa: E731
    ref_out, ref_grads, _ = grads_of(ref, inputs, softplus, grad_out)
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (2e-5, 2e-5)
    assert out.dtype == dtype and out.shape == inputs[0].shape
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    names = [n for n, t in zip(("u", "xdbl", "dt_weight", "dt_bias", "A", "D"), inputs) if t is not None]
    for name, got, want in zip(names, grads, ref_grads):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(1.0, scale), msg=f"gradient of {name}")


@needs_kernel
@pytest.mark.parametrize("state", [1, 2])
def test_fused_op_gradcheck(state):
    inputs = make_inputs(1, 3, 2, 3, 2, state)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda *a: ss2d_scan(*a, True), leaves, eps=1e-6, atol=1e-6)


@needs_kernel
def test_fused_op_registrations_pass_opcheck():
    inputs = make_inputs(2, 3, 2, 5, 2, 1)
    for t in inputs:
        t.requires_grad_()
    torch.library.opcheck(torch.ops.climp.ss2d_scan.default, (*inputs, True))


def test_meta_and_fake_tensors_give_shapes():
    meta = [t.to("meta") for t in make_inputs(2, 3, 5, 7, 2, 1)]
    assert ss2d(*meta).shape == (2, 3, 5, 7) and ss2d(*meta).device.type == "meta"
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in make_inputs(2, 3, 5, 7, 2, 2)]
        assert ss2d(*fake).shape == (2, 3, 5, 7)


def test_flop_counter_uses_the_registered_formula():
    inputs = [t.to("meta") for t in make_inputs(2, 3, 5, 7, 2, 3)]
    with FlopCounterMode(display=False) as counter:
        ss2d(*inputs)
    assert counter.get_total_flops() == ss2d_flops(2, 3, 5, 7, 2, 3)
    assert ss2d_flops(1, 1, 1, 1, 1, 1) == 4 * (9 + 1 + 2)


@needs_kernel
def test_double_backward_mode_routes_to_a_twice_differentiable_path():
    u, xdbl, weight, bias, A, D = make_inputs(1, 3, 2, 4, 2, 1)
    u.requires_grad_()
    with double_backward_mode():
        out = ss2d(u, xdbl, weight, bias, A, D)
        (g,) = torch.autograd.grad(out.pow(2).sum(), u, create_graph=True)
        (hv,) = torch.autograd.grad(g.sum(), u)
    ref_hv = torch.autograd.functional.hvp(
        lambda x: ss2d_reference(x, xdbl, weight, bias, A, D, backend="reference").pow(2).sum(), u.detach(),
        torch.ones_like(u))[1]
    torch.testing.assert_close(hv, ref_hv, rtol=1e-8, atol=1e-8)


def test_bad_shapes_are_named():
    u, xdbl, weight, bias, A, D = make_inputs(1, 3, 2, 4, 2, 1)
    with pytest.raises(ValueError, match="xdbl"):
        ss2d(u, xdbl[..., :3], weight, bias, A, D)
    with pytest.raises(ValueError, match="channel-last"):
        ss2d(u[0], xdbl, weight, bias, A, D)
    with pytest.raises(ValueError, match="dt_weight"):
        ss2d(u, xdbl, weight[:3], bias, A, D)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the GPU path is the unfused one)")
def test_cuda_path_matches_the_cpu_reference():
    inputs = make_inputs(2, 5, 3, 13, 3, 1, dtype=torch.float32)
    want = ss2d_reference(*inputs, backend="reference")
    got = ss2d(*[t.cuda() for t in inputs])
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 4])  # fewer batch elements than threads (private dxdbl copies), more
@pytest.mark.parametrize("dtype,case", [
    (torch.float64, (3, 4, 21, 3, 2)),
    # float32 runs wider vectors (16 lanes with AVX-512): two full blocks and a partial one, and
    # a 2x2 map of many small items (the forward's chunked schedule)
    (torch.float32, (3, 4, 37, 3, 1)),
    (torch.float32, (2, 2, 40, 5, 1)),
])
def test_threaded_kernel_matches_reference(monkeypatch, batch, dtype, case):
    import climp.ops.fused_ss2d as fused_module

    monkeypatch.setattr(fused_module, "MIN_UPDATES_PER_THREAD", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        inputs = make_inputs(batch, *case, dtype=dtype)
        out, grads, grad_out = grads_of(ss2d, inputs, True)
    finally:
        torch.set_num_threads(threads)
    ref = lambda *a: ss2d_reference(*a, backend="reference")  # noqa: E731
    ref_out, ref_grads, _ = grads_of(ref, inputs, True, grad_out)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


@needs_kernel
@pytest.mark.parametrize("batch", [1, 3])  # block items (next block prefetched across batch elements); whole ones
@pytest.mark.parametrize("rank", [1, 4, 8, 16])  # the dt projection's odd tail alone; the compile-time ranks
def test_dispatched_ranks_match_reference(monkeypatch, batch, rank):
    """The one-state kernels at the ranks they specialise, on 2 threads, with an odd map (3 x 5) and
    40 channels (two full 16-lane blocks and a partial one, whose vector sums of dxdbl the first
    block writes and the others add to), against the sequential reference."""
    import climp.ops.fused_ss2d as fused_module

    monkeypatch.setattr(fused_module, "MIN_UPDATES_PER_THREAD", 1)
    inputs = make_inputs(batch, 3, 5, 40, rank, 1, dtype=torch.float32, seed=rank)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, grads, grad_out = grads_of(ss2d, inputs, True)
    finally:
        torch.set_num_threads(threads)
    ref = lambda *a: ss2d_reference(*a, backend="reference")  # noqa: E731
    ref_out, ref_grads, _ = grads_of(ref, inputs, True, grad_out)
    torch.testing.assert_close(out, ref_out, rtol=2e-5, atol=2e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * max(1.0, want.abs().max().item()))


@needs_kernel
def test_fused_op_gradcheck_rank_one_odd_map():
    """float64 finite differences through the dt projection's odd tail (rank 1) on a 3 x 1 map."""
    inputs = make_inputs(2, 3, 1, 5, 1, 1, seed=3)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda *a: ss2d_scan(*a, True), leaves, eps=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 5])  # block items with per-thread dxdbl copies; whole batch elements
def test_threaded_backward_is_bit_identical(monkeypatch, batch):
    """Two identical float32 backward passes at 2 threads give the same bits: the parameter
    gradients are summed over items per thread, so the item-to-thread map must be fixed."""
    import climp.ops.fused_ss2d as fused_module

    monkeypatch.setattr(fused_module, "MIN_UPDATES_PER_THREAD", 1)
    inputs = make_inputs(batch, 6, 7, 40, 3, 1, dtype=torch.float32)
    grad_out = torch.randn(batch, 6, 7, 40, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [grads_of(ss2d, inputs, True, grad_out)[1] for _ in range(6)]
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for got, want in zip(other, runs[0]):
            assert torch.equal(got, want)


@needs_kernel
@pytest.mark.parametrize("forward_type", ["v05_noz", "v2"])
def test_vmamba_tower_fused_equals_unfused(forward_type):
    from climp.models.vmamba import VMambaConfig, VMambaVisionTower

    cfg = dict(dims=[8, 16, 24, 32], depths=[1, 2, 1, 1], d_state=1, forward_type=forward_type, drop_path_rate=0.0,
               pool="pyramid")
    torch.manual_seed(0)
    fused = VMambaVisionTower(VMambaConfig.from_dict(cfg), embed_dim=8).double()
    unfused = VMambaVisionTower(VMambaConfig.from_dict({**cfg, "scan_backend": "cpu"}), embed_dim=8).double()
    unfused.load_state_dict(fused.state_dict())
    assert list(fused.state_dict()) == list(unfused.state_dict())
    images = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    out_fused, out_unfused = fused(images), unfused(images)
    torch.testing.assert_close(out_fused, out_unfused, rtol=1e-10, atol=1e-10)
    out_fused.pow(2).sum().backward()
    out_unfused.pow(2).sum().backward()
    for (name, p), q in zip(fused.named_parameters(), unfused.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")


@needs_kernel
def test_fused_vmamba_block_never_allocates_a_four_direction_tensor():
    """No tensor of (batch, 4, d_inner, pixels) elements is made in forward or backward (the unfused
    path makes several: the test would fail there)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from climp.models.vmamba import SS2D

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    torch.manual_seed(0)
    batch, height, width, d_model = 2, 6, 5, 8
    four_directions = 4 * batch * 2 * d_model * height * width  # d_inner = 2 * d_model
    for backend, fused in (("auto", True), ("cpu", False)):
        op = SS2D(d_model, scan_backend=backend)
        x = torch.randn(batch, height, width, d_model, requires_grad=True)
        with LargestOutput() as mode:
            op(x).sum().backward()
        assert (mode.largest < four_directions) == fused, (backend, mode.largest)


@needs_kernel
def test_compiled_ss2d_block_matches_eager():
    """torch.compile captures the fused op in one graph (fake impl + registered autograd)."""
    from climp.models.vmamba import SS2D

    torch.manual_seed(0)
    op = SS2D(8, d_state=1)
    x = torch.randn(2, 6, 5, 8, requires_grad=True)
    want = op(x)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    compiled = torch.compile(op, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)
