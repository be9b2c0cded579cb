"""linear_halves (climp.ops.split_linear) against F.linear(...).chunk(2), and Mamba's in_proj on it."""
import pytest
import torch
import torch.nn.functional as F

from climp.models.mamba import MambaMixer
from climp.ops import linear_halves


@pytest.mark.parametrize("bias", [False, True])
def test_values_equal_one_linear_and_gradients_pass_gradcheck_twice(bias):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True) if bias else None
    for got, want in zip(linear_halves(x, weight, b), F.linear(x, weight, b).chunk(2, dim=-1)):
        assert torch.equal(got, want)
    inputs = (x, weight) + ((b,) if bias else ())
    assert torch.autograd.gradcheck(linear_halves, inputs)
    assert torch.autograd.gradgradcheck(linear_halves, inputs)


def test_float32_gradients_match_autograd_of_the_chunked_linear():
    torch.manual_seed(1)
    x = torch.randn(4, 7, 32).transpose(0, 1).requires_grad_()  # non-contiguous input
    weight = torch.randn(64, 32, requires_grad=True)
    grads = torch.randn(7, 4, 32), torch.randn(7, 4, 32)
    got = torch.autograd.grad(linear_halves(x, weight), (x, weight), grads)
    want = torch.autograd.grad(F.linear(x, weight).chunk(2, dim=-1), (x, weight), grads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_autocast_gradients_come_back_in_the_inputs_dtypes():
    x = torch.randn(2, 3, 8, requires_grad=True)
    weight = torch.randn(6, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = linear_halves(x, weight)
    assert first.dtype == torch.bfloat16
    (first.float().sum() + second.float().sum()).backward()
    assert x.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(weight.grad, x.detach().sum((0, 1)).expand(6, 8), rtol=2e-2, atol=2e-2)


def test_bad_weight_is_named():
    with pytest.raises(ValueError, match="weight must be"):
        linear_halves(torch.randn(2, 8), torch.randn(5, 8))


def test_mixer_in_proj_halves_match_one_projection_and_keep_the_parameters():
    torch.manual_seed(4)
    mixer = MambaMixer(16, d_state=4, bias=True)
    hidden = torch.randn(2, 5, 16)
    for got, want in zip(mixer.in_proj_halves(hidden), mixer.in_proj(hidden).chunk(2, dim=-1)):
        torch.testing.assert_close(got, want)
    assert [name for name, _ in mixer.in_proj.named_parameters()] == ["weight", "bias"]
    assert mixer.in_proj.weight.shape == (2 * mixer.d_inner, 16)
