"""A float64 model computes in float64 end to end, so its loss gradient is smooth to float64
precision: directional finite differences of the gradient match the autograd Hessian-vector
product to 1e-8 relative. Narrower models keep computing in float32 at least."""
from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import climp
from climp.analysis import ContrastiveLoss, HessianOperator, select_parameters
from climp.models.mamba import RMSNorm

TEXT = {"d_model": 16, "n_layer": 1, "vocab_size": 64}
VMAMBA = {"depths": [1, 1, 1, 1], "dims": 8, "image_size": 32}
TOWERS: Dict[str, Tuple[str, dict]] = {
    "vmamba+mamba": ("climp-tiny", {"vision_cfg": VMAMBA, "text_cfg": TEXT}),
    "mamba1d+mamba": ("climp-mamba1d-tiny", {"vision_cfg": {"d_model": 16, "n_layer": 1, "image_size": 32},
                                             "text_cfg": TEXT}),
    "vmamba+mamba2": ("climp-tiny", {"vision_cfg": VMAMBA, "text_cfg": {
        "type": "mamba2", "d_model": 32, "n_layer": 1, "vocab_size": 64, "d_state": 8, "headdim": 16,
        "chunk_size": 4}}),
    "vit+transformer": ("clip-vit-tiny", {"vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                         "head_width": 16},
                                          "text_cfg": {"layers": 1, "width": 32, "heads": 2, "vocab_size": 64}}),
}


pytestmark = pytest.mark.usefixtures("single_thread")  # one thread: tiny matrices


def float64_model(tower: str, seed: int = 0):
    """A shrunk model of the given towers in float64 with one batch of 4 images and captions."""
    name, overrides = TOWERS[tower]
    torch.manual_seed(seed)
    model = climp.create_model(name, **overrides).double()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (4, 6), generator=g)
    ids[0, 4:] = 0
    return model, [(torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64), ids)]


class NarrowFloatLog(TorchDispatchMode):
    """Records every op that produces a floating tensor narrower than float64."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(o, torch.Tensor) and o.is_floating_point() and o.dtype != torch.float64 for o in outs):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("tower", list(TOWERS))
def test_float64_model_has_no_narrower_float_anywhere(tower):
    model, batches = float64_model(tower)
    with NarrowFloatLog() as log:
        ContrastiveLoss()(model, batches[0]).backward()
    assert log.ops == []


@pytest.mark.parametrize("tower", list(TOWERS))
def test_gradient_differences_match_autograd_hvp_in_float64(tower):
    """Richardson-extrapolated central differences (error O(h^4) + O(eps_mach / h)) of the
    first-order gradient along a random unit direction v against double backward: within 1e-8
    of ||Hv||. The operator's own central differences at the default float64 step: within 1e-7
    of ||Hv|| (rounding, ~eps_mach ||g|| / h, dominates along random directions; relative to
    ||H|| it is smaller still). Any float32 rounding inside the model puts both ~1e-4 off."""
    model, batches = float64_model(tower)
    chosen = select_parameters(model)
    exact = HessianOperator(model, ContrastiveLoss(), batches, chosen)
    v = torch.randn(exact.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v /= v.norm()
    hv = exact.matvec(v)
    origin = [p.detach().clone() for p in exact.params]

    def gradient_at(step: float) -> torch.Tensor:
        with torch.no_grad():
            for p, o, d in zip(exact.params, origin, v.split([p.numel() for p in exact.params])):
                p.copy_(o + step * d.view_as(p))
        return exact.gradient()

    h = 1e-3
    g1, g_1, g2, g_2 = (gradient_at(s) for s in (h, -h, 2 * h, -2 * h))
    gradient_at(0.0)
    richardson = (8 * (g1 - g_1) - (g2 - g_2)) / (12 * h)
    assert float((richardson - hv).norm()) < 1e-8 * float(hv.norm())
    fd = HessianOperator(model, ContrastiveLoss(), batches, chosen, method="finite-difference")
    assert float((fd.matvec(v) - hv).norm()) < 1e-7 * float(hv.norm())
    assert all(torch.equal(p, o) for p, o in zip(exact.params, origin))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_of_narrow_floats_computes_in_float32(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(8).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = (torch.randn(3, 8) * 50).to(dtype)
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, expected)


def test_rmsnorm_keeps_float64():
    norm = RMSNorm(4).double()
    x = torch.tensor([[1.0, 2.0, 3.0, 1e-9]], dtype=torch.float64)
    expected = x / torch.sqrt((x ** 2).mean() + norm.eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-15, atol=0)


def test_float64_vit_at_another_resolution_stays_float64():
    """The position-embedding resize (bicubic) keeps float64 too."""
    model, _ = float64_model("vit+transformer")
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    with NarrowFloatLog() as log:
        features = model.encode_image(images)
    assert features.dtype == torch.float64 and log.ops == []
