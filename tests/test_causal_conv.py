"""causal_conv1d_silu against F.conv1d + SiLU: values, every gradient (float64 gradcheck),
odd sizes, batch 1, strided input, determinism at two threads."""
import pytest
import torch

from climp.ops import causal_conv1d_silu, causal_conv1d_silu_reference


def _inputs(batch, dim, length, kernel, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(dim, 1, kernel, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(dim, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.parametrize("shape", [(2, 5, 7, 4), (1, 3, 1, 4), (1, 8, 3, 4), (3, 6, 9, 2), (2, 4, 5, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_conv1d_in_values_and_gradients(shape, bias):
    x, w, b = _inputs(*shape, bias=bias)
    out = causal_conv1d_silu(x, w, b)
    ref = causal_conv1d_silu_reference(x, w, b)
    assert out.is_contiguous() and out.shape == x.shape
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    inputs = [t for t in (x, w, b) if t is not None]
    mine = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(ref, inputs, grad)
    for a, r in zip(mine, theirs):
        torch.testing.assert_close(a, r)


def test_gradcheck_float64():
    x, w, b = _inputs(2, 3, 6, 4)
    assert torch.autograd.gradcheck(causal_conv1d_silu, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: causal_conv1d_silu(x, w, None), (x, w))


def test_float32_strided_input_as_the_mixer_passes_it():
    g = torch.Generator().manual_seed(1)
    xz = torch.randn(3, 11, 2 * 13, generator=g).transpose(1, 2).requires_grad_()  # (B, 2D, L) view
    w = torch.randn(13, 1, 4, generator=g, requires_grad=True)
    b = torch.randn(13, generator=g, requires_grad=True)
    x = xz.chunk(2, dim=1)[0]
    out, ref = causal_conv1d_silu(x, w, b), causal_conv1d_silu_reference(x, w, b)
    torch.testing.assert_close(out, ref)
    mine = torch.autograd.grad(out.sum(), (xz, w, b))
    theirs = torch.autograd.grad(ref.sum(), (xz, w, b))
    for a, r in zip(mine, theirs):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_bit_identical_gradients_twice_at_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, w, b = _inputs(16, 64, 40, 4, dtype=torch.float32)
        grad = torch.randn(16, 64, 40, generator=torch.Generator().manual_seed(3))
        first = torch.autograd.grad(causal_conv1d_silu(x, w, b), (x, w, b), grad)
        second = torch.autograd.grad(causal_conv1d_silu(x, w, b), (x, w, b), grad)
    finally:
        torch.set_num_threads(threads)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_bad_shapes_are_named():
    x, w, b = _inputs(2, 3, 6, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_silu(x, w[:2], b)
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_silu(x, w, b[:2])
    with pytest.raises(ValueError, match="x must be"):
        causal_conv1d_silu(x[0], w, b)
