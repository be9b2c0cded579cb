"""causal_conv1d_silu (the CPU custom op and the PyTorch-ops path) against F.conv1d + SiLU:
values, every gradient (float64 gradcheck), odd sizes, batch 1, strided input, determinism at
two threads, meta device, double backward; the channel-last kernel path as the fused mixer calls
it (odd dims, lengths below the kernel, every kernel size, float32 and float64)."""
import pytest
import torch

from climp.ops import causal_conv1d_silu, causal_conv1d_silu_reference, double_backward_mode
from climp.ops.causal_conv import _CausalConv1dSiLU


def portable(x, w, b=None):
    return _CausalConv1dSiLU.apply(x, w, b)


IMPLEMENTATIONS = {"op": causal_conv1d_silu, "portable": portable}


def _inputs(batch, dim, length, kernel, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(dim, 1, kernel, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(dim, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", [(2, 5, 7, 4), (1, 3, 1, 4), (1, 8, 3, 4), (3, 6, 9, 2), (2, 4, 5, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_matches_conv1d_in_values_and_gradients(shape, bias, impl):
    x, w, b = _inputs(*shape, bias=bias)
    out = IMPLEMENTATIONS[impl](x, w, b)
    ref = causal_conv1d_silu_reference(x, w, b)
    assert out.is_contiguous() and out.shape == x.shape
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    inputs = [t for t in (x, w, b) if t is not None]
    mine = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(ref, inputs, grad)
    for a, r in zip(mine, theirs):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck_float64(impl):
    fn = IMPLEMENTATIONS[impl]
    x, w, b = _inputs(2, 3, 6, 4)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: fn(x, w, None), (x, w))
    strided = torch.randn(2, 7, 6, dtype=torch.float64).transpose(1, 2)[:, :3].requires_grad_()
    assert torch.autograd.gradcheck(fn, (strided, w, b))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_float32_strided_input_as_the_mixer_passes_it(impl):
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(3, 11, 2 * 13, generator=g).transpose(1, 2).requires_grad_()  # (B, 2D, L) view
    w = torch.randn(13, 1, 4, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g, requires_grad=True)
    x = xz.chunk(2, dim=1)[0]
    out, ref = IMPLEMENTATIONS[impl](x, w, b), causal_conv1d_silu_reference(x, w, b)
    torch.testing.assert_close(out, ref)
    mine = torch.autograd.grad(out.sum(), (xz, w, b))
    theirs = torch.autograd.grad(ref.sum(), (xz, w, b))
    for a, r in zip(mine, theirs):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def _mixer_view(batch, dim, length, kernel, dtype, seed=0):
    """x as the fused mixer passes it (the (batch, dim, length) view of the first half of a
    (batch, length, 2 dim) in_proj output: unit channel stride), weight, bias, and an output
    gradient in the channel-last layout the op returns."""
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(batch, length, 2 * dim, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(dim, 1, kernel, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(dim, generator=g, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, length, dim, generator=g, dtype=dtype).transpose(1, 2)
    return xz, xz[..., :dim].transpose(1, 2), w, b, grad


# dims around the vector widths (8 and 16 lanes), lengths below, at and above the kernel, batch 1,
# the kernel sizes with their own code (3, 4), others, and one too long for the channel-last sweeps
@pytest.mark.parametrize("batch,dim,length,kernel", [
    (2, 13, 9, 4), (1, 16, 7, 4), (3, 17, 12, 4), (2, 40, 2, 4), (1, 5, 1, 4), (2, 33, 3, 3),
    (2, 24, 6, 3), (1, 9, 5, 2), (2, 7, 4, 1), (2, 19, 11, 5), (1, 48, 4, 5), (2, 6, 80, 70)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_last_path_matches_conv1d(batch, dim, length, kernel, dtype):
    xz, x, w, b, grad = _mixer_view(batch, dim, length, kernel, dtype)
    out = causal_conv1d_silu(x, w, b, channel_last=True)
    assert out.transpose(1, 2).is_contiguous()
    ref = causal_conv1d_silu_reference(*(t.double() for t in (x, w, b)))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    mine = torch.autograd.grad(out, (xz, w, b), grad)
    theirs = torch.autograd.grad(ref, (xz, w, b), grad.double())
    for a, r in zip(mine, theirs):
        torch.testing.assert_close(a.double(), r.double(), rtol=tol, atol=tol * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("batch,dim,length,kernel", [(2, 19, 6, 4), (1, 5, 3, 4), (2, 6, 5, 3), (1, 3, 4, 2)])
def test_channel_last_path_gradcheck_float64(batch, dim, length, kernel):
    _, x, w, b, _ = _mixer_view(batch, dim, length, kernel, torch.float64)
    x = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_silu(x, w, b, channel_last=True), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: causal_conv1d_silu(x, w, None, channel_last=True), (x, w))


def test_channel_last_path_bit_identical_at_one_two_and_three_threads_and_run_to_run():
    # 4 * 72 * 400 elements: enough for 3 threads (the op gives each at least MIN_ELEMENTS_PER_THREAD)
    xz, x, w, b, grad = _mixer_view(4, 72, 400, 4, torch.float32, seed=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            out = causal_conv1d_silu(x, w, b, channel_last=True)
            results.append((out, *torch.autograd.grad(out, (xz, w, b), grad)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


def test_bit_identical_gradients_twice_at_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, w, b = _inputs(16, 128, 40, 4, dtype=torch.float32)
        grad = torch.randn(16, 128, 40, generator=torch.Generator().manual_seed(3))
        first = torch.autograd.grad(causal_conv1d_silu(x, w, b), (x, w, b), grad)
        second = torch.autograd.grad(causal_conv1d_silu(x, w, b), (x, w, b), grad)
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_meta_device_gives_shapes():
    x = torch.empty(2, 5, 7, device="meta")
    out = causal_conv1d_silu(x, torch.empty(5, 1, 4, device="meta"), torch.empty(5, device="meta"))
    assert out.shape == (2, 5, 7) and out.device.type == "meta"


def test_double_backward_inside_double_backward_mode():
    x, w, b = _inputs(2, 3, 5, 4)
    with double_backward_mode():
        (gx,) = torch.autograd.grad(causal_conv1d_silu(x, w, b).sum(), x, create_graph=True)
    (hx,) = torch.autograd.grad(gx.square().sum(), x)
    (gr,) = torch.autograd.grad(causal_conv1d_silu_reference(x, w, b).sum(), x, create_graph=True)
    (hr,) = torch.autograd.grad(gr.square().sum(), x)
    torch.testing.assert_close(hx, hr)
    (g,) = torch.autograd.grad(causal_conv1d_silu(x, w, b).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double_backward_mode"):
        torch.autograd.grad(g.sum(), x)


def test_bad_shapes_are_named():
    x, w, b = _inputs(2, 3, 6, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_silu(x, w[:2], b)
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_silu(x, w, b[:2])
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d_silu(x[0], w, b)


@pytest.mark.parametrize("batch", [1, 3])
def test_mixer_values_and_gradients_match_the_conv1d_path(monkeypatch, batch):
    from climp.models import mamba

    torch.manual_seed(0)
    mixer = mamba.MambaMixer(13, d_state=5, d_conv=4, expand=2).double()
    hidden = torch.randn(batch, 11, 13, dtype=torch.float64, requires_grad=True)

    def run():
        out = mixer(hidden)
        grads = torch.autograd.grad(out, [hidden, *mixer.parameters()], torch.ones_like(out))
        return out, grads

    out, grads = run()
    monkeypatch.setattr(mamba, "causal_conv1d_silu", causal_conv1d_silu_reference)
    ref_out, ref_grads = run()
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
