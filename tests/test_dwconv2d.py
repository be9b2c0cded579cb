"""dwconv2d_silu (the CPU custom op climp::dwconv2d_silu) against F.conv2d + F.silu: values, every
gradient (float64 gradcheck), odd and unequal sides, batch 1, channels off the SIMD width, 3x3 and
5x5 kernels, strided input, several threads, determinism, meta/fake shapes, FLOP count, double
backward, and SS2D with the fused conv against SS2D with nn.Conv2d."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from climp.ops import cpu_kernel_available, double_backward_mode, dwconv2d_silu, dwconv2d_silu_reference

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler to build the CPU kernel")


def conv_silu(x, w, b):
    """The reference written out independently of the module: channel-first F.conv2d, then SiLU."""
    k = w.shape[2]
    return F.silu(F.conv2d(x.permute(0, 3, 1, 2), w, b, padding=k // 2, groups=x.shape[3])).permute(0, 2, 3, 1)


def make_inputs(batch, height, width, dim, kernel, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, height, width, dim, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(dim, 1, kernel, kernel, generator=g, dtype=dtype) / kernel).requires_grad_()
    b = torch.randn(dim, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def assert_matches_reference(x, w, b, leaves=None, tol=None):
    out = dwconv2d_silu(x, w, b)
    ref = conv_silu(x, w, b)
    assert out.shape == x.shape and out.is_contiguous() and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, **(tol or {}))
    grad = torch.randn_like(out)
    leaves = leaves or [t for t in (x, w, b) if t is not None]
    for got, want in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(got, want, **(tol or {}))


CASES = [  # (batch, H, W, C, kernel)
    (2, 5, 7, 5, 3),  # odd H and W, H != W, 5 channels (below one SIMD vector)
    (1, 4, 4, 33, 3),  # batch 1, two full vectors and one channel
    (3, 2, 2, 16, 3),  # 2x2 map: every pixel on the border
    (2, 6, 3, 17, 5),  # 5x5 kernel wider than the map
    (2, 1, 1, 3, 3),  # a single pixel
]


@needs_kernel
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_float32_values_and_gradients_match_conv2d(case, bias):
    x, w, b = make_inputs(*case, dtype=torch.float32, bias=bias)
    assert_matches_reference(x, w, b, tol=dict(rtol=1e-5, atol=1e-5))


@needs_kernel
@pytest.mark.parametrize("case", [(2, 3, 5, 5, 3), (1, 4, 3, 9, 5), (2, 2, 1, 3, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(case, bias):
    x, w, b = make_inputs(*case, bias=bias)
    assert torch.autograd.gradcheck(dwconv2d_silu, (x, w, b))


@needs_kernel
def test_strided_inputs():
    """The x half of a gated in_proj output (pixel stride 2C, read in place), and a channel-first
    tensor's permutation (channel stride != 1, copied); a non-contiguous output gradient."""
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(2, 5, 6, 2 * 13, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    x = xz.chunk(2, dim=-1)[0]
    assert x.stride() == (5 * 6 * 26, 6 * 26, 26, 1)
    assert_matches_reference(x, w, b, leaves=[xz, w, b])
    first = torch.randn(2, 13, 5, 6, generator=g, dtype=torch.float64).requires_grad_()
    assert_matches_reference(first.permute(0, 2, 3, 1), w, b, leaves=[first, w, b])
    out = dwconv2d_silu(x, w, b)
    grad = torch.randn(2, 6, 5, 13, generator=g, dtype=torch.float64).transpose(1, 2)
    got = torch.autograd.grad(out, (xz, w, b), grad)
    want = torch.autograd.grad(conv_silu(x, w, b), (xz, w, b), grad)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c)


@needs_kernel
@pytest.mark.parametrize("batch", [1, 3])
def test_threads_split_rows_and_sum_weight_gradients_in_order(monkeypatch, batch):
    """Three threads over a few rows each (ranges crossing batch elements, rows recomputed at their
    edges): the same values as the reference, and the same bits in two runs."""
    import climp.ops.dwconv2d as module

    monkeypatch.setattr(module, "MIN_ELEMENTS_PER_THREAD", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        x, w, b = make_inputs(batch, 7, 5, 21, 3)
        assert_matches_reference(x, w, b)
        x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
        grad = torch.randn(batch, 7, 5, 21, generator=torch.Generator().manual_seed(2))
        runs = [torch.autograd.grad(dwconv2d_silu(x32, w32, b32), (x32, w32, b32), grad) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for got, want in zip(run, runs[0]):
            assert torch.equal(got, want)


@needs_kernel
def test_registrations_pass_opcheck():
    x, w, b = make_inputs(2, 3, 4, 5, 3)
    torch.library.opcheck(torch.ops.climp.dwconv2d_silu.default, (x, w, b))
    torch.library.opcheck(torch.ops.climp.dwconv2d_silu.default, (x, w, None))


def test_meta_and_fake_tensors_give_shapes():
    x, w, b = (t.detach().to("meta") for t in make_inputs(2, 3, 5, 7, 3))
    out = dwconv2d_silu(x, w, b)
    assert out.shape == (2, 3, 5, 7) and out.device.type == "meta"
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t.detach()) for t in make_inputs(2, 3, 5, 7, 5, dtype=torch.float32)]
        assert dwconv2d_silu(*fake).shape == (2, 3, 5, 7)


def test_flop_counter_uses_the_registered_formula():
    x, w, b = (t.detach().to("meta") for t in make_inputs(2, 3, 5, 7, 3))
    with FlopCounterMode(display=False) as counter:
        dwconv2d_silu(x, w, b)
    assert counter.get_total_flops() == 2 * 2 * 3 * 5 * 7 * 3 * 3
    # the same count as the flop counter gives the depthwise F.conv2d it replaces
    with FlopCounterMode(display=False) as conv_counter:
        F.conv2d(x.permute(0, 3, 1, 2), w, b, padding=1, groups=7)
    assert conv_counter.get_total_flops() == counter.get_total_flops()


@needs_kernel
def test_double_backward_only_inside_double_backward_mode():
    x, w, b = make_inputs(1, 3, 4, 3, 3)
    with double_backward_mode():
        (gx,) = torch.autograd.grad(dwconv2d_silu(x, w, b).sum(), x, create_graph=True)
    (hx,) = torch.autograd.grad(gx.square().sum(), x)
    (gr,) = torch.autograd.grad(dwconv2d_silu_reference(x, w, b).sum(), x, create_graph=True)
    (hr,) = torch.autograd.grad(gr.square().sum(), x)
    torch.testing.assert_close(hx, hr)
    (g,) = torch.autograd.grad(dwconv2d_silu(x, w, b).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double_backward_mode"):
        torch.autograd.grad(g.sum(), x)


def test_bad_shapes_are_named():
    x, w, b = make_inputs(2, 3, 4, 5, 3)
    with pytest.raises(ValueError, match="weight must be depthwise"):
        dwconv2d_silu(x, w[:4], b)
    with pytest.raises(ValueError, match="odd"):
        dwconv2d_silu(x, torch.zeros(5, 1, 2, 2, dtype=x.dtype), b)
    with pytest.raises(ValueError, match="bias"):
        dwconv2d_silu(x, w, b[:2])
    with pytest.raises(ValueError, match="channel-last"):
        dwconv2d_silu(x[0], w, b)


@needs_kernel
@pytest.mark.parametrize("forward_type,conv_bias", [("v05_noz", False), ("v2", True)])
def test_ss2d_fused_conv_equals_the_nn_conv2d_path(monkeypatch, forward_type, conv_bias):
    """SS2D with scan_backend "auto" (fused conv, fused scan) against the same weights with the
    reference conv path (nn.Conv2d + SiLU): the scan stays fused on both sides (ss2d decides that
    by itself), so only the conv differs."""
    from climp.models import vmamba

    torch.manual_seed(0)
    op = vmamba.SS2D(12, forward_type=forward_type, conv_bias=conv_bias).double()
    x = torch.randn(2, 5, 6, 12, dtype=torch.float64, requires_grad=True)
    calls = []
    real = vmamba.dwconv2d_silu
    monkeypatch.setattr(vmamba, "dwconv2d_silu", lambda *a: calls.append(1) or real(*a))
    fused = op(x)
    fused_grads = torch.autograd.grad(fused.square().sum(), [x, *op.parameters()])
    assert calls, "SS2D with scan_backend 'auto' did not use the fused conv"
    monkeypatch.setattr(vmamba, "fused_ss2d_available", lambda u, backend: False)
    calls.clear()
    ref = op(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *op.parameters()])
    assert not calls
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    for (name, _), got, want in zip([("x", None), *op.named_parameters()], fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=f"gradient of {name}")
