"""The Mamba text towers with pooling "last" compute the last layer's post-scan work and the final
norm at the pooled token only: output and every parameter gradient equal the full computation's
(every layer on every token, then pooling), drop path and gradient checkpointing included."""
import pytest
import torch

from climp.eval.efficiency import count_flops
from climp.models.mamba import MambaBackbone, MambaConfig
from climp.models.text import Mamba2TextConfig, Mamba2TextTower, MambaTextConfig, MambaTextTower
from climp.ops import selective_scan_flops

VOCAB = 1000
TOWERS = {
    "mamba": (MambaTextTower, MambaTextConfig, dict(d_model=16, n_layer=3, d_state=4)),
    "mamba-unfused": (MambaTextTower, MambaTextConfig, dict(d_model=16, n_layer=3, d_state=4, scan_backend="cpu")),
    "mamba-bias": (MambaTextTower, MambaTextConfig, dict(d_model=16, n_layer=2, d_state=4, bias=True)),
    "mamba2": (Mamba2TextTower, Mamba2TextConfig, dict(d_model=16, n_layer=3, d_state=8, headdim=8, chunk_size=4)),
    "mamba2-silu-gate": (Mamba2TextTower, Mamba2TextConfig,
                         dict(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=4, rmsnorm=False, bias=True)),
}


def make_tower(kind: str, **overrides) -> MambaTextTower:
    tower_class, cfg_class, cfg = TOWERS[kind]
    torch.manual_seed(0)
    tower = tower_class(cfg_class.from_dict({"vocab_size": VOCAB, **cfg, **overrides}), embed_dim=8)
    with torch.no_grad():  # norms off ones, biases off zeros, so every parameter's gradient is exercised
        g = torch.Generator().manual_seed(1)
        for p in tower.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return tower


def right_padded(lengths, width=None) -> torch.Tensor:
    """Rows of random ids 1..VOCAB-1 of the given lengths, padded with 0; row 0 holds a pad-id
    token inside its caption (it stays part of the caption)."""
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(len(lengths), width or max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
    if lengths[0] > 2:
        ids[0, 1] = 0
    return ids


def full_computation(tower: MambaTextTower, ids: torch.Tensor) -> torch.Tensor:
    """Every layer and the final norm on every token, then the pooling: the reference."""
    return tower.proj(tower.pool(tower.backbone(ids), ids))


def output_and_grads(fn, tower, ids, seed):
    torch.manual_seed(seed)
    out = fn(ids)
    loss = (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)).sum()
    names = [n for n, p in tower.named_parameters()]
    grads = torch.autograd.grad(loss, list(tower.parameters()), allow_unused=True)
    return out, dict(zip(names, grads))


def assert_same(tower, ids, seed=3, rtol=1e-10, atol=1e-12):
    out, grads = output_and_grads(tower, tower, ids, seed)
    ref, ref_grads = output_and_grads(lambda x: full_computation(tower, x), tower, ids, seed)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for name, grad in ref_grads.items():
        assert grad is not None and grads[name] is not None, name
        torch.testing.assert_close(grads[name], grad, rtol=rtol, atol=atol, msg=name)
    return out


@pytest.mark.parametrize("kind", list(TOWERS))
@pytest.mark.parametrize("lengths", [[5, 9, 2, 9], [7]])
def test_last_token_path_equals_the_full_computation(kind, lengths):
    tower = make_tower(kind).double().eval()
    assert_same(tower, right_padded(lengths))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_equal_in_float32_with_padding_columns(kind):
    tower = make_tower(kind).eval()
    ids = right_padded([6, 3, 11], width=16)  # trailing all-pad columns: the tower trims them
    assert_same(tower, ids, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_drop_path_draws_the_same_rows(kind, checkpointing):
    """In train mode with drop path the last block draws one keep/drop per row either way, so
    under one seed both paths drop the same rows (and checkpointing replays the draws)."""
    tower = make_tower(kind, drop_path_rate=0.6).double().train()
    tower.set_grad_checkpointing(checkpointing)
    ids = right_padded([5, 9, 2, 9, 4, 8])
    out = assert_same(tower, ids, seed=4)
    torch.manual_seed(5)
    other_seed = tower(ids)
    assert (out - other_seed).abs().max() > 1e-3  # drop path is live: the draws matter


def test_mean_pooling_keeps_every_token():
    tower = make_tower("mamba", pooling="mean").double().eval()
    positions = []
    tower.backbone.register_forward_pre_hook(lambda m, args, kwargs: positions.append(kwargs.get("positions")),
                                             with_kwargs=True)
    assert_same(tower, right_padded([5, 8]))
    assert positions == [None, None]


def test_last_token_path_saves_the_last_layers_gate_and_out_proj_flops():
    tower = make_tower("mamba").eval()
    cfg, batch, length = tower.cfg, 3, 9
    ids = right_padded([9, 4, 6])
    new = count_flops(tower, ids)
    old = count_flops(lambda x: full_computation(tower, x), ids)
    d_inner = cfg.expand * cfg.d_model
    gate_and_out_proj = 2 * 2 * batch * (length - 1) * cfg.d_model * d_inner  # on B rows, not B * L
    gate_in_scan = (selective_scan_flops(batch, d_inner, length, cfg.d_state, with_D=True, with_z=True)
                    - selective_scan_flops(batch, d_inner, length, cfg.d_state, with_D=True, with_z=False))
    assert gate_in_scan == batch * d_inner * length
    assert old["flops"] - new["flops"] == gate_and_out_proj + gate_in_scan


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_last_token_path_runs_on_the_meta_device(kind):
    tower = make_tower(kind).eval().to("meta")
    out = tower(torch.ones(3, 7, dtype=torch.long, device="meta"))
    assert out.shape == (3, 8) and out.device.type == "meta"


def test_backbone_positions_give_the_hidden_state_at_those_steps():
    torch.manual_seed(0)
    backbone = MambaBackbone(MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4)).double().eval()
    ids = right_padded([6, 6, 6])
    positions = torch.tensor([5, 0, 3])
    with torch.no_grad():
        expected = backbone(ids)[torch.arange(3), positions]
        torch.testing.assert_close(backbone(ids, positions=positions), expected, rtol=1e-10, atol=1e-12)
    for bad in (torch.tensor([1, 2]), torch.tensor([[1], [2], [3]]), torch.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match="positions must be one integer step per row"):
            backbone(ids, positions=bad)
