"""Training activation memory and attention backends (climp.eval.activation_memory) on modules
whose saved tensors are known exactly."""
import pytest
import torch

from climp.eval.activation_memory import (attention_backend, inference_peak_memory, measure_saved_activations,
                                          training_activation_memory)

F32 = 4


def test_linear_relu_chain_keeps_the_relu_outputs_only():
    """addmm saves its input (here the batch itself, or the previous ReLU's output: the same
    storage) and the transposed weight (a view of a parameter); ReLU saves its output."""
    torch.manual_seed(0)
    chain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8), torch.nn.ReLU())
    x = torch.randn(4, 16)
    r = measure_saved_activations(chain, x)
    assert r["saved_activation_bytes"] == (4 * 32 + 4 * 8) * F32
    assert r["saved_storages"] == 2


def test_parameters_and_inputs_are_excluded_for_a_module():
    linear = torch.nn.Linear(100, 10, bias=False)  # saves its input (the batch) and its weight
    x = torch.randn(3, 100, requires_grad=True)
    assert measure_saved_activations(linear, x)["saved_activation_bytes"] == 0
    # the same computation as a plain function: the weight (saved through a view, its transpose) is
    # then an activation like any other
    assert measure_saved_activations(lambda v: v @ linear.weight.t(), x)["saved_activation_bytes"] == 1000 * F32


def test_views_and_repeated_saves_of_one_storage_count_once():
    def fn(v):
        y = v.exp()                      # saves y
        a = y[:, :5]                     # a view of y, saved twice by a * a
        return (a * a).sum() + y.view(-1).sin().sum()  # sin saves another view of y
    x = torch.randn(10, 20, requires_grad=True)
    r = measure_saved_activations(fn, x)
    assert r["saved_activation_bytes"] == 200 * F32 and r["saved_storages"] == 1


def test_storages_of_a_graph_the_forward_dropped_are_not_counted():
    def fn(v):
        dropped = v.exp().sum()  # exp saves its result, freed with this branch's graph
        del dropped
        return v.tanh()          # tanh saves its result
    x = torch.randn(1000, requires_grad=True)
    assert measure_saved_activations(fn, x)["saved_activation_bytes"] == 1000 * F32


class Attention(torch.nn.Module):
    """One head of self-attention through scaled_dot_product_attention."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.qkv = torch.nn.Linear(width, 3 * width)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_math_attention_keeps_the_attention_matrix_and_fused_does_not():
    """The math backend keeps the (L, L) softmax for the backward; the fused kernel keeps its
    output and a log-sum-exp per query instead."""
    batch, length = 2, 64
    tower = Attention()
    make = lambda dev: torch.randn(batch, length, 8, device=dev)  # noqa: E731
    math = training_activation_memory(tower, make, "math")
    fused = training_activation_memory(tower, make, "fused")
    matrix = batch * length * length * F32
    assert math["training_activation_bytes"] - fused["training_activation_bytes"] >= matrix
    assert fused["training_activation_bytes"] < matrix
    assert math["training_attention_kernels"] == ["math (softmax of a materialised attention matrix)"]
    assert fused["training_attention_kernels"] == ["aten._scaled_dot_product_flash_attention_for_cpu"]
    # shapes alone give the same bookkeeping; fused attention asked for on meta runs on the CPU
    assert training_activation_memory(tower, make, "math", "meta")["training_activation_bytes"] == \
        math["training_activation_bytes"]
    on_meta = training_activation_memory(tower, make, "fused", "meta")
    assert on_meta["training_memory_device"] == "cpu"
    assert on_meta["training_activation_bytes"] == fused["training_activation_bytes"]


def test_tower_modes_and_backends_are_restored():
    tower = Attention().eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    r = training_activation_memory(tower, lambda dev: torch.randn(1, 4, 8, device=dev), "math")
    assert r["training_activation_bytes"] > 0 and not tower.training
    tower.train()
    inference = inference_peak_memory(tower, lambda dev: torch.randn(1, 4, 8, device=dev), "fused")
    assert tower.training and inference["attention"] == "fused" and inference["peak_activation_bytes"] > 0
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        with attention_backend("flash"):
            pass
