import copy

import pytest
import torch

from climp.eval.efficiency import count_flops, measure_peak_memory, profile_tower, selective_scan_flops
from climp.ops import selective_scan


def scan_inputs(device="cpu", b=2, d=6, l=10, n=4):
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(b, d, l, generator=g), torch.rand(b, d, l, generator=g), -torch.rand(d, n, generator=g),
         torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g), torch.randn(d, generator=g)]
    return [x.to(device) for x in t]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_scan_flops_follow_the_formula_on_cpu_and_meta(device):
    u, delta, A, B, C, D = scan_inputs(device)
    linear = torch.randn(10, 3, device=device)
    r = count_flops(lambda x: selective_scan(x, delta, A, B, C, D=D, z=x) @ linear, u)
    scan = selective_scan_flops(2, 6, 10, 4, with_D=True, with_z=True)
    assert scan == 9 * 2 * 6 * 10 * 4 + 2 * 2 * 6 * 10
    assert r["flops_by_op"]["climp.selective_scan"] == scan
    assert r["flops"] == scan + 2 * (2 * 6) * 10 * 3  # plus the matmul


def test_model_flops_on_meta_equal_flops_on_cpu():
    """The scans' FLOPs come from the formulas registered on the ops, on real and meta tensors
    alike: a whole climp-tiny image tower (fused SS2D) and text tower (fused Mamba-1 scan) count the
    same on both, scans included."""
    import climp

    model = climp.create_model("climp-tiny")
    for tower, inputs, scan_op in ((model.visual, torch.randn(1, 3, 64, 64), "climp.ss2d_scan"),
                                   (model.text, torch.randint(1, 100, (1, 12)), "climp.mamba1d_scan")):
        on_cpu = count_flops(tower, inputs)
        on_meta = count_flops(copy.deepcopy(tower).to("meta"), inputs.to("meta"))
        assert on_cpu == on_meta
        assert on_cpu["flops_by_op"][scan_op] > 0


def test_peak_memory_tracks_live_storages():
    def fn(x):
        a = x * 2          # 4000 bytes live
        b = a + 1          # 8000 peak
        del a
        c = b.view(-1) * 3  # b and c: 8000
        return c.sum()     # + 4 bytes while b and c are live
    r = measure_peak_memory(fn, torch.randn(1000))
    assert r["peak_activation_bytes"] == 8004


def test_weights_and_their_views_are_not_counted():
    lin = torch.nn.Linear(64, 32)
    r = measure_peak_memory(lin, torch.randn(4, 64))
    assert r["peak_activation_bytes"] == 4 * 32 * 4


def test_profile_tower_reports_flops_memory_and_throughput():
    tower = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    r = profile_tower(tower, lambda dev, n: torch.randn(n, 16, device=dev), batch=3, repeats=1)
    assert r["flops"] == 2 * 16 * 8 and r["params"] == 16 * 8 + 8
    assert r["items_per_second"] > 0 and r["peak_activation_bytes"] == 2 * 3 * 8 * 4
    assert next(tower.parameters()).device.type == "cpu"


def test_cpu_fused_attention_flops_are_counted():
    """The CPU flash-attention kernel (what ViT/Transformer towers run on real CPU tensors) counts
    the same FLOPs as the math path: 2 matmuls of 2*s*s*d each per head."""
    from climp.eval.efficiency import count_flops

    q = torch.randn(1, 2, 64, 16)
    counted = count_flops(lambda x: torch.nn.functional.scaled_dot_product_attention(x, x, x), q)["flops"]
    assert counted == 2 * (2 * 2 * 64 * 64 * 16)


def test_saved_activations_count_exactly_what_autograd_keeps():
    from climp.eval.activation_memory import measure_saved_activations

    x = torch.randn(1000, requires_grad=True)
    assert measure_saved_activations(torch.exp, x)["saved_activation_bytes"] == 4000  # exp keeps its result

    def twice(v):  # y is saved twice by y * y (one storage), the product by nothing more
        y = v.sin()
        return y * y
    r = measure_saved_activations(twice, x)
    assert r["saved_activation_bytes"] == 4000 and r["saved_storages"] == 1  # sin saves x (an input)

    class ExpLinear(torch.nn.Linear):
        def forward(self, v):
            return super().forward(torch.exp(v))

    module = ExpLinear(1000, 10)
    assert measure_saved_activations(module, x)["saved_activation_bytes"] == 4000  # exp's result, also the
    # matmul's input; the weight (saved by the matmul) is the module's own
    assert measure_saved_activations(lambda v: module(v), x)["saved_activation_bytes"] == 4000 + 40000
    with torch.no_grad():
        assert measure_saved_activations(torch.exp, x)["saved_activation_bytes"] == 4000
