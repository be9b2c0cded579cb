"""Numerical checks of climp.analysis against exact Hessians of small float64 networks."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import pytest
import torch

import climp.ops
from climp.analysis import (ContrastiveLoss, HessianOperator, HessianSettings, analysis_mode, analyse_hessian,
                            filter_normalized_direction, hutchinson_trace, loss_slice, select_parameters,
                            slq_quadratures, spectral_density, top_eigenpairs)
from climp.analysis.eigen import lanczos
from climp.analysis.hvp import DEFAULT_EPS_REL
from analysis_models import (AttentionText, MeanPoolText, ScanText, TanhMLP, TinyClip, clip_batches,
                                  exact_hessian, mse_loss, regression_batches, shrunk_climp_tiny)


pytestmark = pytest.mark.usefixtures("single_thread")  # one thread: tiny matrices


def mlp_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = TanhMLP().double()
    batches = regression_batches(seed=seed)
    names = [n for n, _ in model.named_parameters()]
    return model, batches, names, exact_hessian(model, mse_loss, batches, names)


@pytest.fixture(scope="module")
def mlp():
    return mlp_setup()


def random_symmetric(n: int, seed: int, negative_fraction: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    values = torch.linspace(-negative_fraction, 1 - negative_fraction, n, dtype=torch.float64) * 10
    return Q @ torch.diag(values) @ Q.T


# --- Hessian-vector products -------------------------------------------------------------

def test_mlp_is_small_and_indefinite(mlp):
    _, _, _, H = mlp
    values = torch.linalg.eigvalsh(H)
    assert 30 <= H.shape[0] <= 60
    assert values.min() < 0 < values.max()


def test_hvp_equals_exact_hessian_product(mlp):
    model, batches, names, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.num_products == 3


def test_cached_graph_gives_the_same_products(mlp):
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model), cache_graph=True)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    first = op.matvec(v)
    assert len(op.cached_grads) == len(batches)
    torch.testing.assert_close(op.matvec(v), first, rtol=0, atol=0)
    torch.testing.assert_close(first, H @ v, rtol=1e-10, atol=1e-12)


def test_parameter_subset_gives_the_hessian_block(mlp):
    model, batches, names, H = mlp
    chosen = select_parameters(model, ["fc2"])
    assert list(chosen) == ["fc2.weight", "fc2.bias"]
    op = HessianOperator(model, mse_loss, batches, chosen)
    start = model.fc1.weight.numel() + model.fc1.bias.numel()
    block = H[start:, start:]
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), block @ v, rtol=1e-10, atol=1e-12)


def test_selection_errors_and_prefixes():
    model = TinyClip(MeanPoolText())
    assert set(select_parameters(model, ["text"])) == {"text.embed.weight", "text.proj.weight", "text.proj.bias"}
    assert list(select_parameters(model, ["logit_scale"])) == ["logit_scale"]
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(model, ["vision"])
    with pytest.raises(ValueError, match="empty"):
        select_parameters(model, [])
    assert set(select_parameters(model, ["text"], exclude=["text.embed"])) == {"text.proj.weight", "text.proj.bias"}
    with pytest.raises(ValueError, match="minus"):
        select_parameters(model, ["text.proj"], exclude=["text"])
    with pytest.raises(ValueError, match="exclusion"):
        select_parameters(model, ["text"], exclude=["txt"])
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(model, lambda m, b: torch.ones(2), [0], select_parameters(model)).loss()


def test_analysis_mode_is_deterministic_and_restores_state():
    model = TinyClip(AttentionText()).double()
    model.train()
    model.visual.requires_grad_(False)
    batch = clip_batches(1)[0]
    loss = ContrastiveLoss()
    with analysis_mode(model, list(model.text.parameters())):
        assert not any(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.text.parameters())
        assert not model.logit_scale.requires_grad
        assert float(loss(model, batch).detach()) == float(loss(model, batch).detach())
    assert all(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert model.logit_scale.requires_grad


def test_analysis_mode_enters_double_backward_mode(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def double_backward_mode():
        entered.append(True)
        yield

    monkeypatch.setattr(climp.ops, "double_backward_mode", double_backward_mode, raising=False)
    model = TanhMLP().double()
    with analysis_mode(model, list(model.parameters())):
        pass
    assert entered == [True]


def finite_difference_hvp(op: HessianOperator, v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(g(theta + eps v) - g(theta - eps v)) / (2 eps) from first-order gradients only."""
    base = [p.detach().clone() for p in op.params]
    grads = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, b, d in zip(op.params, base, v.split([p.numel() for p in op.params])):
                p.copy_(b + sign * eps * d.view_as(p))
        grads.append(op.gradient())
    with torch.no_grad():
        for p, b in zip(op.params, base):
            p.copy_(b)
    return (grads[0] - grads[1]) / (2 * eps)


def test_hvp_matches_finite_differences_of_gradients(mlp):
    model, batches, _, _ = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model))
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), finite_difference_hvp(op, v / v.norm()) * v.norm(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("logit_bias", [False, True])
def test_contrastive_hvp_equals_exact_hessian_product(logit_bias):
    torch.manual_seed(5)
    model = TinyClip(MeanPoolText(), logit_bias=logit_bias).double()
    batches = clip_batches(2)
    loss = ContrastiveLoss()
    chosen = select_parameters(model)
    H = exact_hessian(model, loss, batches, list(chosen))
    op = HessianOperator(model, loss, batches, chosen)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-8, atol=1e-10)
    assert float((H @ v).abs().max()) > 1e-3


@pytest.mark.parametrize("text_tower", [AttentionText, ScanText])
@pytest.mark.parametrize("logit_bias", [False, True])
def test_contrastive_hvp_through_attention_and_selective_scan(text_tower, logit_bias):
    """Double backward through scaled_dot_product_attention (with dropout, off in analysis
    mode) and through climp.ops.selective_scan, checked against finite differences."""
    torch.manual_seed(7)
    model = TinyClip(text_tower(), logit_bias=logit_bias).double()
    op = HessianOperator(model, ContrastiveLoss(), clip_batches(2), select_parameters(model, ["text", "logit_scale"]))
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    v /= v.norm()
    hv = op.matvec(v)
    assert float(hv.abs().max()) > 1e-3
    torch.testing.assert_close(hv, finite_difference_hvp(op, v, 1e-5), rtol=1e-6, atol=1e-6 * float(hv.abs().max()))


# --- finite-difference Hessian-vector products ---------------------------------------------
# Central differences err by O(h^2) (truncation, largest along the top eigenvectors) plus
# O(eps_mach / h) (rounding, dominant along random directions). Error measure:
# ||Hv_fd - Hv|| / (||H|| ||v||), along the top eigenvector and random directions. Measured at
# the default steps: float64 (eps_rel 1e-7) at most 5e-10; float32 (eps_rel 3e-4) at most
# 2e-4 on these nets and 1e-4 on climp-tiny. The tolerances leave a factor 5-20 above those.
FD_TOL = {torch.float64: 1e-8, torch.float32: 1e-3}


def operator_error(op: HessianOperator, exact_matvec, vectors, norm_H: float) -> float:
    """Largest ||op(v) - H v|| / (||H|| ||v||) over the vectors."""
    return max(float((op.matvec(v) - exact_matvec(v)).norm()) / (norm_H * float(v.norm())) for v in vectors)


def random_vectors(n: int, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64) for _ in range(count)]


def contrastive_setup(tower, seed: int = 5):
    torch.manual_seed(seed)
    model = TinyClip(tower()).double()
    batches = clip_batches(2)
    with climp.ops.double_backward_mode():
        H = exact_hessian(model, ContrastiveLoss(), batches, list(select_parameters(model)))
    return model, batches, H


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("net", ["mlp", "MeanPoolText", "AttentionText", "ScanText"])
def test_finite_difference_hvp_matches_exact_hessian(mlp, net, dtype):
    if net == "mlp":
        _, batches, _, H = mlp
        model, loss = TanhMLP().double(), mse_loss
        model.load_state_dict(mlp[0].state_dict())
    else:
        model, batches, H = contrastive_setup({"MeanPoolText": MeanPoolText, "AttentionText": AttentionText,
                                               "ScanText": ScanText}[net])
        loss = ContrastiveLoss()
    model = model.to(dtype)
    batches = [tuple(t.to(dtype) if t.is_floating_point() else t for t in b) for b in batches]
    op = HessianOperator(model, loss, batches, select_parameters(model), method="finite-difference")
    assert op.eps_rel == DEFAULT_EPS_REL[dtype]
    values, vectors = torch.linalg.eigh(H)
    top = vectors[:, values.abs().argmax()]
    norm_H = float(values.abs().max())
    assert operator_error(op, lambda v: H @ v, [top, *random_vectors(op.dim, 2, seed=9)], norm_H) < FD_TOL[dtype]
    assert op.num_products == 3


def test_finite_difference_step_is_relative_and_products_are_homogeneous(mlp):
    """h = eps_rel (1 + rms(theta)) whatever ||v||; H(c v) = c H(v) up to rounding; H 0 = 0."""
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model), method="finite-difference", eps_rel=1e-6)
    theta = torch.cat([p.detach().reshape(-1) for p in op.params])
    assert op.finite_difference_step() == pytest.approx(1e-6 * (1 + float(theta.pow(2).mean().sqrt())))
    v = random_vectors(op.dim, 1, seed=10)[0]
    torch.testing.assert_close(op.matvec(1e3 * v), 1e3 * op.matvec(v), rtol=1e-12, atol=0)
    assert float(op.matvec(torch.zeros(op.dim, dtype=torch.float64)).abs().max()) == 0.0
    coarse = HessianOperator(model, mse_loss, batches, select_parameters(model), method="finite-difference", eps_rel=3e-2)
    assert float((coarse.matvec(v) - H @ v).norm() / (H @ v).norm()) > 1e-4  # the step really is used


def test_finite_difference_restores_parameters_bit_for_bit():
    torch.manual_seed(3)
    model = TinyClip(ScanText()).float()  # float32: theta + h u - h u != theta in floating point
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    op = HessianOperator(model, ContrastiveLoss(), [tuple(t.float() if t.is_floating_point() else t for t in b)
                                                    for b in clip_batches(1)],
                         select_parameters(model), method="finite-difference")
    op.matvec(random_vectors(op.dim, 1, seed=11)[0])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_finite_difference_products_use_first_order_kernels(monkeypatch):
    """Finite differences never enter double_backward_mode (the scan keeps its fast backend)."""
    entered = []

    @contextlib.contextmanager
    def double_backward_mode():
        entered.append(True)
        with real_mode():
            yield

    real_mode = climp.ops.double_backward_mode
    monkeypatch.setattr(climp.ops, "double_backward_mode", double_backward_mode)
    torch.manual_seed(7)
    model = TinyClip(ScanText()).double()
    batches = clip_batches(1)
    v = random_vectors(sum(p.numel() for p in model.parameters()), 1, seed=12)[0]
    fd = HessianOperator(model, ContrastiveLoss(), batches, select_parameters(model), method="finite-difference")
    fd.matvec(v)
    fd.gradient()
    assert entered == []
    HessianOperator(model, ContrastiveLoss(), batches, select_parameters(model)).matvec(v)
    assert entered == [True]


def test_finite_difference_matches_autograd_on_a_mamba_clip():
    """A climp-tiny shrunk to ~1e5 parameters (VMamba image tower, Mamba text tower, float32):
    finite differences through the compiled scan kernel against double backward through the
    chunked scan, along the top eigenvector (from autograd Lanczos) and random directions."""
    model, batches = shrunk_climp_tiny()
    chosen = select_parameters(model)
    exact = HessianOperator(model, ContrastiveLoss(), batches, chosen)
    eig = top_eigenpairs(exact.matvec, exact.dim, k=1, max_steps=15, tol=1e-3,
                         generator=torch.Generator().manual_seed(0), progress=None)
    assert eig.top_values[0] > 1.0
    fd = HessianOperator(model, ContrastiveLoss(), batches, chosen, method="finite-difference")
    vectors = [eig.top_vectors[0], *random_vectors(exact.dim, 2, seed=13)]
    assert operator_error(fd, exact.matvec, vectors, eig.top_values[0]) < FD_TOL[torch.float32]


def test_finite_difference_eigenvalues_and_trace_match_exact(mlp):
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model), method="finite-difference")
    result = top_eigenpairs(op.matvec, op.dim, k=3, max_steps=op.dim, tol=1e-8,
                            generator=torch.Generator().manual_seed(0), progress=None)
    exact = torch.linalg.eigvalsh(H)
    torch.testing.assert_close(torch.tensor(result.top_values, dtype=torch.float64), exact.flip(0)[:3], rtol=1e-6, atol=1e-9)
    assert result.min_value == pytest.approx(float(exact[0]), rel=1e-6)
    fd_trace = hutchinson_trace(op.matvec, op.dim, num_samples=40, generator=torch.Generator().manual_seed(1), progress=None)
    exact_trace = hutchinson_trace(lambda v: H @ v, op.dim, num_samples=40, generator=torch.Generator().manual_seed(1),
                                   progress=None)
    assert fd_trace.trace == pytest.approx(exact_trace.trace, rel=1e-6)
    assert fd_trace.std == pytest.approx(exact_trace.std, rel=1e-6)


def test_finite_difference_eigenvalues_in_float32(mlp):
    model64, batches, _, H = mlp
    model = TanhMLP()
    model.load_state_dict(model64.state_dict())
    batches = [(x.float(), y.float()) for x, y in batches]
    op = HessianOperator(model, mse_loss, batches, select_parameters(model), method="finite-difference")
    result = top_eigenpairs(op.matvec, op.dim, k=2, max_steps=op.dim, tol=1e-6,
                            generator=torch.Generator().manual_seed(0), progress=None)
    exact = torch.linalg.eigvalsh(H)
    scale = float(exact.abs().max())
    for value, reference in zip(result.top_values + [result.min_value], exact.flip(0)[:2].tolist() + [float(exact[0])]):
        assert abs(value - reference) < FD_TOL[torch.float32] * scale


class KinkedMLP(TanhMLP):
    """TanhMLP plus an L1 penalty on parameters that sit at zero: the gradient jumps there."""

    def __init__(self) -> None:
        super().__init__()
        self.at_kink = torch.nn.Parameter(torch.zeros(20))


def kinked_loss(model, batch):
    return mse_loss(model, batch) + model.at_kink.abs().sum()


def test_finite_difference_consistency_flags_a_non_smooth_loss(mlp):
    """Smooth loss: Hv(h) and Hv(4h) agree to rounding and truncation. Kinked loss: the
    differences are jumps / h, so the check exceeds the limit and the analysis warns."""
    model64, batches, _, _ = mlp
    smooth = HessianOperator(model64, mse_loss, batches, select_parameters(model64), method="finite-difference")
    v = random_vectors(smooth.dim, 1, seed=14)[0]
    assert smooth.finite_difference_consistency(v) < 1e-6
    model32 = TanhMLP()
    model32.load_state_dict(model64.state_dict())
    batches32 = [(x.float(), y.float()) for x, y in batches]
    fd32 = HessianOperator(model32, mse_loss, batches32, select_parameters(model32), method="finite-difference")
    assert fd32.finite_difference_consistency(v) < 0.05
    torch.manual_seed(0)
    kinked = KinkedMLP().double()
    op = HessianOperator(kinked, kinked_loss, batches, select_parameters(kinked), method="finite-difference")
    assert op.finite_difference_consistency(random_vectors(op.dim, 1, seed=15)[0]) > 0.5
    assert op.eps_rel == DEFAULT_EPS_REL[torch.float64]
    settings = HessianSettings(top_k=1, lanczos_steps=4, hutchinson_samples=2, slq_runs=2, slq_steps=4,
                               landscape="none", progress=False)
    result = analyse_hessian(kinked, batches, kinked_loss, ["all"], settings)
    assert result["hvp"]["consistent"] is False and "--hvp autograd" in result["warnings"][0]
    auto = analyse_hessian(kinked, batches, kinked_loss, ["all"], dataclasses.replace(settings, hvp="auto"))
    assert auto["hvp"]["method"] == "autograd" and auto["hvp"]["consistent"] is None and not auto["warnings"]
    assert auto["hvp"]["consistency"] == pytest.approx(result["hvp"]["consistency"])
    exact = analyse_hessian(kinked, batches, kinked_loss, ["all"], dataclasses.replace(settings, hvp="autograd"))
    assert auto["eigen"]["top"] == pytest.approx(exact["eigen"]["top"], rel=1e-10)
    assert auto["trace"]["trace"] == pytest.approx(exact["trace"]["trace"], rel=1e-10)
    smooth_auto = analyse_hessian(model64, batches, mse_loss, ["all"], dataclasses.replace(settings, hvp="auto"))
    assert smooth_auto["hvp"]["method"] == "finite-difference" and smooth_auto["hvp"]["consistent"] is True


def test_operator_rejects_bad_methods():
    model = TanhMLP()
    params, batches = select_parameters(model), regression_batches(1)
    with pytest.raises(ValueError, match="unknown Hessian-vector product method"):
        HessianOperator(model, mse_loss, batches, params, method="exact")
    with pytest.raises(ValueError, match="cache_graph"):
        HessianOperator(model, mse_loss, batches, params, method="finite-difference", cache_graph=True)
    with pytest.raises(ValueError, match="eps_rel must be positive"):
        HessianOperator(model, mse_loss, batches, params, method="finite-difference", eps_rel=0.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        HessianOperator(model.half(), mse_loss, batches, select_parameters(model.half()), method="finite-difference")


# --- eigenvalues ---------------------------------------------------------------------------

def test_top_eigenvalues_match_eigvalsh(mlp):
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model))
    result = top_eigenpairs(op.matvec, op.dim, k=3, max_steps=op.dim, tol=1e-8,
                            generator=torch.Generator().manual_seed(0), progress=None)
    exact = torch.linalg.eigvalsh(H)
    torch.testing.assert_close(torch.tensor(result.top_values, dtype=torch.float64), exact.flip(0)[:3], rtol=1e-6, atol=1e-9)
    assert result.min_value == pytest.approx(float(exact[0]), rel=1e-6, abs=1e-9)
    for value, vector in zip(result.top_values, result.top_vectors):
        assert float((H @ vector - value * vector).norm()) < 1e-5 * abs(result.top_values[0])
        assert float(vector.norm()) == pytest.approx(1.0)


def test_lanczos_stops_early_on_converged_extremes():
    H = random_symmetric(120, seed=1)
    H += 40 * torch.outer(*(2 * [torch.linalg.eigh(H).eigenvectors[:, -1]]))  # isolate the top eigenvalue
    result = top_eigenpairs(lambda v: H @ v, 120, k=1, max_steps=120, tol=1e-6,
                            generator=torch.Generator().manual_seed(0), progress=None)
    exact = torch.linalg.eigvalsh(H)
    assert result.steps < 60
    assert result.top_values[0] == pytest.approx(float(exact[-1]), rel=1e-6)


def test_lanczos_restarts_when_krylov_space_is_exhausted():
    """Three distinct eigenvalues: the Krylov space has dimension 3, yet top-3 must be 5, 5, 5."""
    H = torch.diag(torch.tensor([5.0, 5.0, 5.0, 1.0, 1.0, 0.0, 0.0, -2.0], dtype=torch.float64))
    result = top_eigenpairs(lambda v: H @ v, 8, k=3, max_steps=8, tol=1e-10,
                            generator=torch.Generator().manual_seed(0), progress=None)
    assert result.top_values == pytest.approx([5.0, 5.0, 5.0])
    assert result.min_value == pytest.approx(-2.0)


def test_full_reorthogonalisation_keeps_basis_orthonormal():
    H = random_symmetric(100, seed=2)
    state = lanczos(lambda v: H @ v, torch.ones(100, dtype=torch.float64), 70)
    Q = state.basis
    torch.testing.assert_close(Q @ Q.T, torch.eye(Q.shape[0], dtype=torch.float64), atol=1e-10, rtol=0)
    T = torch.diag(state.alphas) + torch.diag(state.betas, 1) + torch.diag(state.betas, -1)
    torch.testing.assert_close(Q @ H @ Q.T, T, atol=1e-9, rtol=0)


# --- trace ---------------------------------------------------------------------------------

def test_hutchinson_trace_within_confidence_interval(mlp):
    _, _, _, H = mlp
    est = hutchinson_trace(lambda v: H @ v, H.shape[0], num_samples=2000, confidence=0.999,
                           generator=torch.Generator().manual_seed(0), progress=None)
    exact = float(torch.trace(H))
    assert est.ci_low <= exact <= est.ci_high
    assert est.ci_high - est.ci_low < 0.2 * abs(exact) + 1e-9
    # Rademacher probes: Var(v^T H v) = 2 (||H||_F^2 - sum_i H_ii^2)
    expected_std = math.sqrt(2 * float((H ** 2).sum() - (torch.diagonal(H) ** 2).sum()))
    assert est.std == pytest.approx(expected_std, rel=0.1)


def test_hutchinson_on_the_model_operator(mlp):
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model))
    est = hutchinson_trace(op.matvec, op.dim, num_samples=300, confidence=0.999,
                           generator=torch.Generator().manual_seed(1), progress=None)
    assert est.ci_low <= float(torch.trace(H)) <= est.ci_high


def test_hutchinson_rejects_bad_settings():
    with pytest.raises(ValueError, match="at least 2"):
        hutchinson_trace(lambda v: v, 4, num_samples=1)
    with pytest.raises(ValueError, match="confidence"):
        hutchinson_trace(lambda v: v, 4, num_samples=5, confidence=1.5)


# --- spectral density ----------------------------------------------------------------------

def rademacher_quadratic_form_std(A: torch.Tensor) -> float:
    """Std of q^T A q for q = Rademacher / sqrt(n): sqrt(2 (||A||_F^2 - sum_i A_ii^2)) / n."""
    return math.sqrt(2 * float((A ** 2).sum() - (torch.diagonal(A) ** 2).sum())) / A.shape[0]


def test_slq_density_integrates_to_one_and_matches_moments(mlp):
    _, _, _, H = mlp
    n, runs = H.shape[0], 200
    quads = slq_quadratures(lambda v: H @ v, n, num_runs=runs, num_steps=12,
                            generator=torch.Generator().manual_seed(0), progress=None)
    density = spectral_density(quads)
    assert float(torch.trapezoid(density.density, density.grid)) == pytest.approx(1.0, abs=1e-6)
    exact = torch.linalg.eigvalsh(H)
    # per run the quadrature is exact for degrees <= 23, so only the start vector is random
    for estimate, A, moment in ((density.mean, H, exact.mean()), (density.second_moment, H @ H, (exact ** 2).mean())):
        assert abs(estimate - float(moment)) < 4 * rademacher_quadratic_form_std(A) / math.sqrt(runs)
    first_moment = float(torch.trapezoid(density.density * density.grid, density.grid))
    assert first_moment == pytest.approx(density.mean, abs=1e-6 * float(exact.abs().max()))


def test_slq_quadrature_is_exact_for_low_moments_of_each_start_vector():
    """m Lanczos steps integrate x^k exactly for k <= 2m-1: sum_j w_j theta_j^k = q^T H^k q."""
    H = random_symmetric(50, seed=3)
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    quad = slq_quadratures(lambda v: H @ v, 50, num_runs=1, num_steps=4, generator=g1, progress=None)[0]
    q = (torch.randint(0, 2, (50,), generator=g2).double() * 2 - 1) / math.sqrt(50)
    for k in range(8):
        exact = float(q @ torch.linalg.matrix_power(H, k) @ q)
        assert float(quad.weights @ quad.nodes ** k) == pytest.approx(exact, rel=1e-8, abs=1e-10)


# --- loss landscape ------------------------------------------------------------------------

def test_landscape_centre_is_the_loss_and_parameters_are_restored(mlp):
    model, batches, _, H = mlp
    params = select_parameters(model)
    op = HessianOperator(model, mse_loss, batches, params)
    before = [p.detach().clone() for p in params.values()]
    direction = filter_normalized_direction(list(params.values()), torch.Generator().manual_seed(0))
    coords = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
    line = loss_slice(op.loss, op.params, [direction], [coords], progress=None)
    surface = loss_slice(op.loss, op.params, [direction, direction], [coords, coords], progress=None)
    assert line.shape == (5,) and surface.shape == (5, 5)
    assert float(line[2]) == pytest.approx(op.loss(), rel=1e-12)
    assert float(surface[2, 2]) == pytest.approx(op.loss(), rel=1e-12)
    torch.testing.assert_close(surface.diagonal(), loss_slice(op.loss, op.params, [direction], [2 * coords], progress=None))
    for p, b in zip(params.values(), before):
        assert torch.equal(p, b)


def test_eigenvector_slice_curves_like_its_eigenvalue(mlp):
    model, batches, _, H = mlp
    op = HessianOperator(model, mse_loss, batches, select_parameters(model))
    eig = top_eigenpairs(op.matvec, op.dim, k=1, max_steps=op.dim, tol=1e-10, progress=None)
    a = 1e-3
    left, centre, right = loss_slice(op.loss, op.params, [eig.top_vectors[0]],
                                     [torch.tensor([-a, 0.0, a], dtype=torch.float64)], progress=None).tolist()
    assert (left - 2 * centre + right) / a ** 2 == pytest.approx(eig.top_values[0], rel=1e-4)


def test_filter_normalisation_scales_each_filter_to_its_weight():
    model = TinyClip(ScanText())
    params = list(model.parameters())
    direction = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, direction):
        assert d.shape == p.shape
        if p.dim() >= 2:
            torch.testing.assert_close(d.reshape(d.shape[0], -1).norm(dim=1),
                                       p.detach().double().reshape(p.shape[0], -1).norm(dim=1))
        else:
            assert float(d.norm()) == pytest.approx(float(p.detach().double().norm()))
    ignoring = filter_normalized_direction(params, torch.Generator().manual_seed(0), ignore_1d=True)
    assert all(float(d.abs().sum()) == 0 for p, d in zip(params, ignoring) if p.dim() <= 1)
    assert any(float(d.abs().sum()) > 0 for d in ignoring)


# --- orchestration -------------------------------------------------------------------------

def test_analyse_hessian_end_to_end_matches_exact_spectrum(mlp):
    model, batches, _, H = mlp
    model.train()
    settings = HessianSettings(top_k=2, lanczos_steps=38, lanczos_tol=1e-8, hutchinson_samples=100,
                               confidence=0.999, slq_runs=8, slq_steps=38, landscape="2d",
                               landscape_steps=5, landscape_range=0.1, progress=False)
    result = analyse_hessian(model, batches, mse_loss, ["all"], settings)
    exact = torch.linalg.eigvalsh(H)
    assert result["hvp"] == {"method": "finite-difference", "dtype": "float64", "eps_rel": DEFAULT_EPS_REL[torch.float64],
                             "step": pytest.approx(result["hvp"]["step"]), "consistent": True,
                             "consistency": pytest.approx(0.0, abs=1e-6)}
    assert result["warnings"] == []
    assert result["eigen"]["top"] == pytest.approx(exact.flip(0)[:2].tolist(), rel=1e-6)
    assert result["abs_min_over_max"] == pytest.approx(float(exact[0].abs() / exact[-1]), rel=1e-6)
    assert result["trace"]["ci_low"] <= float(exact.sum()) <= result["trace"]["ci_high"]
    assert result["landscape"]["loss"][2][2] == pytest.approx(result["loss"], rel=1e-12)
    assert result["cost"]["hessian_vector_products"]["trace"] == 100
    assert all(m.training for m in model.modules())
    json.dumps(result)


def test_analyse_hessian_with_autograd_products(mlp):
    model, batches, _, H = mlp
    settings = HessianSettings(top_k=1, lanczos_steps=38, lanczos_tol=1e-8, hutchinson_samples=2, slq_steps=4,
                               landscape="none", progress=False, hvp="autograd", cache_graph=True)
    result = analyse_hessian(model, batches, mse_loss, ["all"], settings)
    assert result["hvp"] == {"method": "autograd", "dtype": "float64", "eps_rel": None, "step": None,
                             "consistency": None, "consistent": None}
    assert result["eigen"]["top"][0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-8)


def test_settings_validation():
    with pytest.raises(ValueError, match="unknown Hessian settings"):
        HessianSettings.from_dict({"top_k": 2, "topk": 3})
    with pytest.raises(ValueError, match="top_k >= 2"):
        HessianSettings(top_k=1, landscape="2d")
    with pytest.raises(ValueError, match="landscape must be"):
        HessianSettings(landscape="3d")
    assert HessianSettings.from_dict({"top_k": 5}).top_k == 5
    assert HessianSettings().hvp == "finite-difference"
    with pytest.raises(ValueError, match="hvp must be one of"):
        HessianSettings(hvp="exact")
    with pytest.raises(ValueError, match="cache_graph applies"):
        HessianSettings(cache_graph=True)
    with pytest.raises(ValueError, match="fd_eps_rel"):
        HessianSettings(fd_eps_rel=-1.0)
    assert HessianSettings(hvp="autograd", cache_graph=True).cache_graph
