"""The fused CPU RMSNorm (climp.ops.rms_norm) against its formula, and the models' RMSNorm on it."""
import pytest
import torch

from climp.models.mamba import RMSNorm
from climp.ops import cpu_kernel_available, double_backward_mode, fused_rms_norm_available, rms_norm
from climp.ops.rms_norm import rms_norm_op, rms_norm_reference

pytestmark = pytest.mark.skipif(not cpu_kernel_available(), reason="the CPU kernel does not build here")


def formula(x, weight, eps):
    """Independent of climp: the definition, in float64."""
    x64 = x.double()
    return (x64 / torch.sqrt((x64 ** 2).mean(-1, keepdim=True) + eps) * weight.double()).to(x.dtype)


def values_and_grads(fn, x, weight, grad, eps):
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    y = fn(x, weight, eps)
    dx, dw = torch.autograd.grad(y, (x, weight), grad)
    return y, dx, dw


@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 33), (1, 130), (1, 1, 128), (4, 9, 16)])
def test_float32_values_and_gradients_match_the_formula(shape):
    torch.manual_seed(0)
    x, grad = torch.randn(shape) * 3, torch.randn(shape)
    weight = torch.randn(shape[-1])
    fused = values_and_grads(rms_norm, x, weight, grad, 1e-5)
    assert fused[0].grad_fn.name().startswith("GeneratedBackwardFor_climp_rms_norm")
    expected = values_and_grads(formula, x.double(), weight.double(), grad.double(), 1e-5)
    for got, want in zip(fused, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [7, 33, 130])
def test_float64_gradcheck(width):
    torch.manual_seed(1)
    x = torch.randn(3, 4, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(width, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: rms_norm(a, w, 1e-6), (x, weight))
    torch.testing.assert_close(rms_norm(x, weight, 1e-6), formula(x, weight, 1e-6), rtol=1e-13, atol=1e-13)


def test_eps_is_respected():
    """Rows of zeros and tiny rows: rstd = eps ** -0.5 dominates, so a wrong eps shows at once."""
    x = torch.cat([torch.zeros(1, 33), torch.full((1, 33), 1e-3)])
    weight = torch.ones(33)
    for eps in (1e-5, 1e-2):
        torch.testing.assert_close(rms_norm(x, weight, eps), formula(x, weight, eps))
    assert not torch.allclose(rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-2))


def test_non_contiguous_input_and_gradient():
    torch.manual_seed(2)
    base = torch.randn(6, 40, 5)
    x = base.transpose(1, 2)[:, :, :33]  # (6, 5, 33), strided
    grad = torch.randn(6, 33, 5).transpose(1, 2)
    weight = torch.randn(33)
    fused = values_and_grads(rms_norm, x, weight, grad, 1e-5)
    expected = values_and_grads(rms_norm_reference, x, weight, grad, 1e-5)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_weight_gradient_is_deterministic_across_runs():
    torch.manual_seed(3)
    x, grad, weight = torch.randn(300, 130), torch.randn(300, 130), torch.randn(130)
    runs = [values_and_grads(rms_norm, x, weight, grad, 1e-5)[2] for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_saves_x_and_one_rstd_per_row():
    x = torch.randn(4, 7, 33, requires_grad=True)
    weight = torch.randn(33, requires_grad=True)
    y, rstd = rms_norm_op(x, weight, 1e-5)
    assert rstd.shape == (4, 7)
    torch.testing.assert_close(rstd, torch.rsqrt(x.pow(2).mean(-1) + 1e-5))
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 3 and saved[0] is x and saved[1] is weight and saved[2].shape == (4, 7)


def test_meta_tensors_get_shapes_from_the_fake():
    x = torch.empty(2, 9, 130, device="meta", requires_grad=True)
    weight = torch.empty(130, device="meta", requires_grad=True)
    assert fused_rms_norm_available(x, weight)
    y = rms_norm(x, weight, 1e-5)
    assert y.device.type == "meta" and y.shape == x.shape
    dx, dw = torch.autograd.grad(y.sum(), (x, weight))
    assert dx.shape == x.shape and dw.shape == weight.shape


def test_fallbacks_use_the_reference():
    x, weight = torch.randn(3, 16), torch.randn(16)
    assert not fused_rms_norm_available(x.bfloat16(), weight.bfloat16())
    assert not fused_rms_norm_available(x, weight.double())
    y = rms_norm(x.bfloat16(), weight, 1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, rms_norm_reference(x.bfloat16(), weight, 1e-5))
    xg = x.double().requires_grad_()
    with double_backward_mode():
        y = rms_norm(xg, weight.double(), 1e-5)
    assert "climp" not in type(y.grad_fn).__name__
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm(x, torch.ones(15), 1e-5)


def test_module_runs_the_fused_op_and_keeps_its_state_dict():
    norm = RMSNorm(33, eps=1e-6)
    assert list(norm.state_dict()) == ["weight"]
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 33)
    torch.testing.assert_close(norm(x), formula(x, norm.weight, 1e-6))

