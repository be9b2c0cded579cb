"""The fused channel-last Mamba-1 scan (climp.ops.fused_mamba1d) against the unfused path on the
sequential reference scan, and the mixer's fused path against its unfused (scan_backend) one."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from climp.models.mamba import MambaMixer
from climp.ops import causal_conv1d_silu, cpu_kernel_available, double_backward_mode
from climp.ops.fused_mamba1d import mamba1d_flops, mamba1d_scan, mamba1d_scan_op, mamba1d_scan_reference

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler to build the CPU kernel")


def make_inputs(batch, length, dim, rank, state, dtype=torch.float64, with_z=True, seed=0):
    """Random inputs; u and z are the two halves of one (batch, length, 2 * dim) tensor (strided
    views, as the mixer's in_proj output gives them)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u, z = rand(batch, length, 2 * dim).chunk(2, dim=-1)
    xdbl = rand(batch, length, rank + 2 * state) * 0.5
    weight = rand(dim, rank) * 0.5
    bias = rand(dim) * 0.5
    A = -(torch.rand(dim, state, generator=g, dtype=dtype) + 0.5)
    D = rand(dim)
    return [u, z if with_z else None, xdbl, weight, bias, A, D]


def leaves(inputs):
    return [None if t is None else t.detach().clone().requires_grad_() for t in inputs]


def values_and_grads(fn, inputs, grad_out):
    x = leaves(inputs)
    out = fn(*x)
    used = [t for t in x if t is not None]
    return out, torch.autograd.grad(out, used, grad_out)


def reference(*inputs):
    return mamba1d_scan_reference(*inputs, delta_softplus=True, backend="reference")


def fused(*inputs):
    return mamba1d_scan_op(*inputs, True)


CASES = [  # (batch, length, dim, rank, d_state, with_z)
    (2, 7, 5, 1, 1, True),  # dim below the SIMD width, dt_rank 1, one state
    (1, 1, 13, 3, 16, True),  # batch 1, L = 1, a full block and a partial one
    (3, 9, 16, 2, 16, True),  # two full blocks, d_state 16
    (2, 6, 11, 4, 1, False),  # no gate, odd dim
    (1, 5, 9, 5, 3, True),  # d_state not a power of two
    (2, 9, 37, 3, 16, True),  # several 16-channel blocks and a partial one
    (3, 12, 40, 2, 4, False),  # d_state 4 on several blocks, no gate
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_sequential_reference(case, dtype):
    *shape, with_z = case
    inputs = make_inputs(*shape, dtype=dtype, with_z=with_z)
    grad_out = torch.randn(shape[0], shape[1], shape[2], dtype=dtype, generator=torch.Generator().manual_seed(5))
    out, grads = values_and_grads(fused, inputs, grad_out)
    want, want_grads = values_and_grads(reference, inputs, grad_out)
    assert out.shape == want.shape and out.is_contiguous() and out.dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(out, want, **tol)
    names = [n for n, t in zip(("u", "z", "xdbl", "dt_weight", "dt_bias", "A", "D"), inputs) if t is not None]
    for name, a, b in zip(names, grads, want_grads):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"d{name}: {m}")


@needs_kernel
@pytest.mark.parametrize("state", [1, 16])
def test_exp_arguments_beyond_range_match_the_reference(state):
    """Channels whose delta * A leave the float32 exp's range (a decay below 2^-125) take the
    clamped exps; the rest of the block and the other blocks are unaffected."""
    inputs = make_inputs(2, 10, 40, 2, state, dtype=torch.float32, seed=4)
    inputs[5][::3] *= 400.0  # A: every third channel decays at once
    grad_out = torch.randn(2, 10, 40, generator=torch.Generator().manual_seed(6))
    out, grads = values_and_grads(fused, inputs, grad_out)
    wide = [t.double() for t in inputs]
    want, want_grads = values_and_grads(reference, wide, grad_out.double())
    torch.testing.assert_close(out, want.float(), rtol=2e-4, atol=2e-5)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b.float(), rtol=2e-4, atol=2e-4)


@needs_kernel
@pytest.mark.parametrize("state,with_z", [(1, True), (3, True), (2, False)])
def test_gradcheck_float64(state, with_z):
    inputs = leaves(make_inputs(2, 4, 5, 2, state, with_z=with_z))
    assert torch.autograd.gradcheck(fused, inputs)


@needs_kernel
def test_opcheck():
    """torch.library.opcheck: schema, fake implementation, autograd registration, AOT dispatch."""
    for with_z in (True, False):
        inputs = leaves(make_inputs(2, 5, 9, 2, 4, dtype=torch.float32, with_z=with_z))
        torch.library.opcheck(mamba1d_scan_op, (*inputs, True))


@needs_kernel
def test_bit_identical_gradients_twice_at_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_inputs(16, 40, 64, 4, 16, dtype=torch.float32)
        grad_out = torch.randn(16, 40, 64, generator=torch.Generator().manual_seed(3))
        first = values_and_grads(fused, inputs, grad_out)
        second = values_and_grads(fused, inputs, grad_out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_below_the_thread_count_shares_blocks_between_threads(dtype):
    """One batch element on two threads: its channel blocks are split between the threads, whose
    private copies of the xdbl gradient are added in thread order (the same bits every time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_inputs(1, 64, 128, 4, 16, dtype=dtype, seed=2)  # enough state updates for two threads
        grad_out = torch.randn(1, 64, 128, dtype=dtype, generator=torch.Generator().manual_seed(7))
        first = values_and_grads(fused, inputs, grad_out)
        second = values_and_grads(fused, inputs, grad_out)
    finally:
        torch.set_num_threads(threads)
    want, want_grads = values_and_grads(reference, inputs, grad_out)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=5e-5)
    torch.testing.assert_close(first[0], want, **tol)
    for a, b, c in zip(first[1], second[1], want_grads):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, **tol)


@needs_kernel
def test_conv_channel_last_output_equals_channel_first():
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(3, 10, 2 * 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    x = xz.chunk(2, dim=-1)[0].transpose(1, 2)  # (B, D, L) view of the in_proj output
    out = causal_conv1d_silu(x, w, b, channel_last=True)
    want = causal_conv1d_silu(x, w, b)
    assert out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    grad = torch.randn(3, 13, 10, generator=g, dtype=torch.float64)
    for grad_in in (grad, grad.transpose(1, 2).contiguous().transpose(1, 2)):  # channel-first, channel-last
        mine = torch.autograd.grad(out, (xz, w, b), grad_in, retain_graph=True)
        for a, r in zip(mine, torch.autograd.grad(want, (xz, w, b), grad, retain_graph=True)):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_silu(x, w, b, channel_last=True), (x, w, b))


def mixer_pair(dtype, unfused_backend="cpu", **kwargs):
    torch.manual_seed(0)
    fused_mixer = MambaMixer(**kwargs).to(dtype)
    unfused_mixer = MambaMixer(**kwargs, scan_backend=unfused_backend).to(dtype)
    unfused_mixer.load_state_dict(fused_mixer.state_dict())
    return fused_mixer, unfused_mixer


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d_model,d_state,dt_rank,batch,length", [(8, 16, "auto", 3, 11), (5, 1, 3, 1, 1),
                                                                   (12, 4, 2, 2, 6)])
def test_mixer_fused_equals_unfused(dtype, d_model, d_state, dt_rank, batch, length):
    fused_mixer, unfused_mixer = mixer_pair(dtype, d_model=d_model, d_state=d_state, dt_rank=dt_rank)
    x = torch.randn(batch, length, d_model, dtype=dtype, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(batch, length, d_model, dtype=dtype, generator=torch.Generator().manual_seed(2))
    results = []
    for mixer in (fused_mixer, unfused_mixer):
        xl = x.clone().requires_grad_()
        out = mixer(xl)
        results.append((out, torch.autograd.grad(out, [xl, *mixer.parameters()], grad)))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    names = ["input", *(n for n, _ in fused_mixer.named_parameters())]
    for name, a, b in zip(names, results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"gradient of {name}: {m}")


@needs_kernel
def test_mixer_fused_path_runs_the_fused_op_without_a_channel_first_delta():
    """The fused path makes no (batch, d_inner, L) delta: the unfused one's dt matmul would."""
    fused_mixer, unfused_mixer = mixer_pair(torch.float32, d_model=8, d_state=4)
    x = torch.randn(2, 5, 8, requires_grad=True)
    for mixer, fused_wanted in ((fused_mixer, True), (unfused_mixer, False)):
        with torch.profiler.profile() as prof:
            mixer(x).sum().backward()
        keys = {e.key for e in prof.key_averages()}
        assert ("climp::mamba1d_scan" in keys) == fused_wanted
        assert ("climp::selective_scan" in keys) != fused_wanted


def test_mixer_flops_equal_and_meta_forward():
    """On the meta device (fake implementations, nothing built or computed) both paths run and the
    FLOP counter counts the same total: the fused op's formula includes the dt projection."""
    counts = []
    for backend in ("auto", "cpu"):
        with torch.device("meta"):
            mixer = MambaMixer(16, d_state=16, scan_backend=backend)
            x = torch.empty(3, 7, 16)
        with FlopCounterMode(display=False) as counter:
            out = mixer(x)
        assert out.shape == (3, 7, 16) and out.device.type == "meta"
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1]
    assert mamba1d_flops(3, 7, 32, 1, 16) == 9 * 3 * 7 * 32 * 16 + 2 * 3 * 7 * 32 + 2 * 3 * 7 * 32


@needs_kernel
def test_compiled_mixer_is_one_graph_and_matches_eager():
    fused_mixer, _ = mixer_pair(torch.float32, d_model=8, d_state=4)
    x = torch.randn(2, 6, 8, requires_grad=True)
    want = fused_mixer(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *fused_mixer.parameters()])
    compiled = torch.compile(fused_mixer, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *fused_mixer.parameters()])
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@needs_kernel
def test_double_backward_mode_uses_the_differentiable_path():
    """Inside double_backward_mode the fused path falls back to autograd ops, so a Hessian-vector
    product works and equals the unfused path's on the twice-differentiable scan."""
    fused_mixer, unfused_mixer = mixer_pair(torch.float64, "chunked", d_model=6, d_state=3)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    v = torch.randn(2, 5, 6, dtype=torch.float64)
    hvps = []
    for mixer in (fused_mixer, unfused_mixer):
        with double_backward_mode():
            xl = x.clone().requires_grad_()
            (g,) = torch.autograd.grad(mixer(xl).square().sum(), xl, create_graph=True)
            (hv,) = torch.autograd.grad((g * v).sum(), xl)
        hvps.append(hv)
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="not differentiable"):
        xl = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fused_mixer(xl).square().sum(), xl, create_graph=True)
        torch.autograd.grad((g * v).sum(), xl)


def test_bad_shapes_name_the_argument():
    u, z, xdbl, w, b, A, D = make_inputs(2, 4, 5, 2, 3)
    with pytest.raises(ValueError, match="xdbl"):
        mamba1d_scan(u, z, xdbl[..., :-1], w, b, A, D)
    with pytest.raises(ValueError, match="dt_weight"):
        mamba1d_scan(u, z, xdbl, w[:4], b, A, D)
    with pytest.raises(ValueError, match="z must"):
        mamba1d_scan(u, z[:, :3], xdbl, w, b, A, D)


@needs_kernel
def test_bfloat16_mixer_matches_the_unfused_path():
    """bf16 parameters and activations: the op computes on float32 copies (which must stay alive
    while the kernel runs) and returns bf16, as the unfused path does."""
    fused_mixer, unfused_mixer = mixer_pair(torch.bfloat16, d_model=16, d_state=8)
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_()
    outs = [mixer(x) for mixer in (fused_mixer, unfused_mixer)]
    assert outs[0].dtype == torch.bfloat16
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=2e-2, atol=2e-3)
    grads = [torch.autograd.grad(out.float().sum(), [x, *mixer.parameters()])
             for out, mixer in zip(outs, (fused_mixer, unfused_mixer))]
    for a, b in zip(*grads):
        assert a.dtype == b.dtype
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max() + 1e-3
