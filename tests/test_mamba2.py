"""Mamba-2: the chunked SSD scan against a per-step recurrence, parity with transformers'
Mamba2Model (its CPU torch path), mamba_ssm-layout checkpoints, checkpointing and causality."""
import json
import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from climp.models.mamba2 import Mamba2Backbone, Mamba2Config, Mamba2Mixer
from climp.ops import ssd_chunk_scan

transformers = pytest.importorskip("transformers")


def ssd_sequential(x, dt, A, B, C, D):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ; y_t = h_t C_t + D x_t, one step at a time."""
    batch, length, nheads, headdim = x.shape
    per_group = nheads // B.shape[2]
    B = B.repeat_interleave(per_group, dim=2)  # (b, l, h, n): head h reads group h // per_group
    C = C.repeat_interleave(per_group, dim=2)
    h = x.new_zeros(batch, nheads, headdim, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h * C[:, t, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1)


def random_scan_inputs(batch, length, nheads, headdim, ngroups, dstate, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, nheads, headdim, generator=g, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, nheads, generator=g, dtype=dtype) - 1.0)
    A = -torch.rand(nheads, generator=g, dtype=dtype) * 4 - 0.5
    B = torch.randn(batch, length, ngroups, dstate, generator=g, dtype=dtype)
    C = torch.randn(batch, length, ngroups, dstate, generator=g, dtype=dtype)
    D = torch.randn(nheads, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("length,chunk_size", [(1, 4), (20, 8), (21, 5), (16, 4), (9, 256), (40, 7)])
@pytest.mark.parametrize("ngroups", [1, 2, 4])
def test_chunk_scan_matches_sequential_recurrence(dtype, tol, length, chunk_size, ngroups):
    inputs = random_scan_inputs(2, length, 4, 3, ngroups, 5, dtype)
    expected = ssd_sequential(*inputs)
    got = ssd_chunk_scan(*inputs, chunk_size=chunk_size)
    assert got.dtype == dtype and got.shape == expected.shape
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= tol * max(scale, 1.0)


def test_chunk_scan_is_exact_for_long_sequences_with_strong_decay():
    # Many chunks and large cumulative decays: the state passing must stay accurate and finite.
    x, dt, A, B, C, D = random_scan_inputs(1, 300, 2, 2, 1, 3, torch.float64, seed=3)
    A = A * 10
    expected = ssd_sequential(x, dt, A, B, C, D)
    got = ssd_chunk_scan(x, dt, A, B, C, D, chunk_size=16)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_chunk_scan_gradients_match_sequential_recurrence():
    inputs = [t.requires_grad_() for t in random_scan_inputs(2, 19, 4, 3, 2, 5, torch.float64, seed=1)]
    weights = torch.randn(2, 19, 4, 3, dtype=torch.float64)
    grads = torch.autograd.grad((ssd_chunk_scan(*inputs, chunk_size=6) * weights).sum(), inputs)
    expected = torch.autograd.grad((ssd_sequential(*inputs) * weights).sum(), inputs)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_chunk_scan_is_twice_differentiable():
    inputs = tuple(t.requires_grad_() for t in random_scan_inputs(1, 7, 2, 2, 2, 3, torch.float64, seed=2))
    fn = lambda *args: ssd_chunk_scan(*args, chunk_size=3)  # noqa: E731
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)


def test_chunk_scan_hessian_vector_products_match_sequential_recurrence():
    inputs = [t.requires_grad_() for t in random_scan_inputs(2, 11, 4, 2, 2, 3, torch.float64, seed=4)]
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(2, 11, 4, 2, dtype=torch.float64, generator=g)
    directions = [torch.randn(t.shape, dtype=torch.float64, generator=g) for t in inputs]

    def hvp(fn):
        grads = torch.autograd.grad((fn(*inputs) * weights).sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum((gr * v).sum() for gr, v in zip(grads, directions)), inputs)

    got = hvp(lambda *args: ssd_chunk_scan(*args, chunk_size=4))
    for h, e in zip(got, hvp(ssd_sequential)):
        torch.testing.assert_close(h, e, rtol=1e-9, atol=1e-9)


def test_chunk_scan_rejects_bad_shapes():
    x, dt, A, B, C, D = random_scan_inputs(1, 8, 4, 2, 2, 3, torch.float32)
    with pytest.raises(ValueError, match="heads"):
        ssd_chunk_scan(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), D)
    with pytest.raises(ValueError, match="dt must be"):
        ssd_chunk_scan(x, dt[:, :4], A, B, C, D)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunk_scan(x, dt, A, B, C, D, chunk_size=0)


# ----------------------------------------------------------------------------- mixer and config


def test_mixer_parameters_and_init():
    mixer = Mamba2Mixer(64, d_state=16, headdim=32, ngroups=2, A_init_range=(2, 5), dt_min=0.01, dt_max=0.05)
    assert mixer.nheads == 4
    assert mixer.in_proj.weight.shape == (2 * 128 + 2 * 2 * 16 + 4, 64)
    assert mixer.conv1d.weight.shape == (128 + 64, 1, 4)
    assert mixer.norm.group_size == 64
    for name in ("A_log", "D", "dt_bias"):
        assert getattr(getattr(mixer, name), "_no_weight_decay", False), name
    A = mixer.A_log.exp()
    assert ((A >= 2) & (A <= 5)).all()
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert ((dt >= 0.01 - 1e-6) & (dt <= 0.05 + 1e-6)).all()
    out = mixer(torch.randn(2, 11, 64))
    assert out.shape == (2, 11, 64) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Mixer(64, headdim=48)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2Mixer(64, headdim=32, ngroups=3)


def mixer_reference(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 mixer written out step by step (mamba_ssm's semantics) with the sequential scan."""
    F = torch.nn.functional
    d_inner, n, g, h = mixer.d_inner, mixer.d_state, mixer.ngroups, mixer.nheads
    zxbcdt = u @ mixer.in_proj.weight.T
    z, x, B, C, dt = zxbcdt.split([d_inner, d_inner, g * n, g * n, h], dim=-1)
    xBC = torch.cat([x, B, C], dim=-1).transpose(1, 2)
    kernel = mixer.conv1d.weight.shape[-1]
    conv = F.conv1d(F.pad(xBC, (kernel - 1, 0)), mixer.conv1d.weight, mixer.conv1d.bias, groups=xBC.shape[1])
    x, B, C = F.silu(conv).transpose(1, 2).split([d_inner, g * n, g * n], dim=-1)
    dt = F.softplus(dt + mixer.dt_bias).clamp(*mixer.dt_limit)
    y = ssd_sequential(x.reshape(*x.shape[:2], h, -1), dt, -mixer.A_log.exp(), B.reshape(*B.shape[:2], g, n),
                       C.reshape(*C.shape[:2], g, n), mixer.D).reshape(x.shape)
    y = y * F.silu(z)
    if mixer.norm is not None:
        groups = y.reshape(*y.shape[:2], g, -1)
        y = (groups / groups.pow(2).mean(-1, keepdim=True).add(mixer.norm.eps).sqrt()).reshape(y.shape)
        y = y * mixer.norm.weight
    return y @ mixer.out_proj.weight.T


@pytest.mark.parametrize("rmsnorm", [True, False])
@pytest.mark.parametrize("ngroups,dt_limit", [(1, (0.0, float("inf"))), (2, (0.05, 0.5))])
def test_mixer_matches_step_by_step_reference(rmsnorm, ngroups, dt_limit):
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=8, headdim=16, ngroups=ngroups, chunk_size=4, rmsnorm=rmsnorm,
                        dt_limit=dt_limit).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    u = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(mixer(u), mixer_reference(mixer, u), rtol=1e-10, atol=1e-10)


def test_dt_limit_clamps_the_time_step():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=8, headdim=16, chunk_size=4, dt_limit=(0.0, 1e-3))
    hidden = torch.randn(1, 9, 32)
    y_limited = mixer(hidden)
    with torch.no_grad():
        mixer.dt_limit = (0.0, float("inf"))
    assert not torch.allclose(y_limited, mixer(hidden), atol=1e-4)


def test_config_from_dict_rejects_unknown_and_bad_values():
    cfg = Mamba2Config.from_dict({"d_model": 64, "n_layer": 2, "vocab_size": 100, "headdim": 32,
                                  "dt_limit": [0.0, 5.0]})
    assert cfg.nheads == 4 and cfg.padded_vocab_size == 104 and cfg.dt_limit == (0.0, 5.0)
    with pytest.raises(ValueError, match="hedim"):
        Mamba2Config.from_dict({"d_model": 64, "n_layer": 2, "vocab_size": 100, "hedim": 32})
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Config(d_model=64, n_layer=2, vocab_size=100, headdim=48)
    with pytest.raises(ValueError, match="n_layer"):
        Mamba2Config(d_model=64, n_layer=0, vocab_size=100, headdim=32)


def tiny_backbone(**kw) -> Mamba2Backbone:
    cfg = dict(d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=16, ngroups=2, chunk_size=4)
    cfg.update(kw)
    return Mamba2Backbone(Mamba2Config(**cfg))


def test_grad_checkpointing_gives_identical_grads():
    torch.manual_seed(0)
    model = tiny_backbone()
    ids = torch.randint(0, 50, (2, 13))

    def grads():
        model.zero_grad()
        out = model(ids)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out_plain, g_plain = grads()
    model.set_grad_checkpointing(True)
    out_ckpt, g_ckpt = grads()
    assert torch.equal(out_plain, out_ckpt)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=0, atol=1e-7)


def test_backbone_is_causal():
    torch.manual_seed(0)
    model = tiny_backbone().eval()
    ids = torch.randint(0, 50, (2, 15))
    changed = ids.clone()
    changed[:, 9:] = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- checkpoints


def hf_mamba2(n_groups: int, causal_lm: bool = False):
    """A small transformers Mamba2 with every parameter perturbed (so no default value hides a bug)."""
    config = transformers.Mamba2Config(
        hidden_size=64, num_hidden_layers=2, num_heads=4, head_dim=32, state_size=16, n_groups=n_groups,
        vocab_size=100, chunk_size=8, expand=2, conv_kernel=4, layer_norm_epsilon=1e-5,
    )
    torch.manual_seed(n_groups)
    cls = transformers.Mamba2ForCausalLM if causal_lm else transformers.Mamba2Model
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_hidden(model, ids):
    base = model.backbone if hasattr(model, "backbone") else model
    with torch.no_grad():
        return base(input_ids=ids, use_cache=False).last_hidden_state


@pytest.mark.parametrize("n_groups", [1, 2])
def test_transformers_mamba2_parity(tmp_path, n_groups):
    hf = hf_mamba2(n_groups)
    hf.save_pretrained(tmp_path)
    ours = Mamba2Backbone.from_pretrained(tmp_path).eval()
    assert ours.cfg.ngroups == n_groups and ours.cfg.chunk_size == 8 and ours.cfg.nheads == 4
    ids = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(0))
    expected = hf_hidden(hf, ids)
    with torch.no_grad():
        got = ours(ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_transformers_causal_lm_directory_loads(tmp_path):
    hf = hf_mamba2(2, causal_lm=True)
    hf.save_pretrained(tmp_path)
    ours = Mamba2Backbone.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
    assert (got - hf_hidden(hf, ids)).abs().max().item() <= 1e-4


def write_mamba_ssm_checkpoint(directory, hf_model, pad_multiple=16, extra_ssm_cfg=None):
    """mamba_ssm's layout: config.json (d_model, ssm_cfg, ...) and pytorch_model.bin with
    backbone.embedding / backbone.layers.i.mixer.* / backbone.norm_f and a tied lm_head."""
    c = hf_model.config
    config = {
        "d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": c.vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
                    "headdim": c.head_dim, "ngroups": c.n_groups, "chunk_size": c.chunk_size,
                    **(extra_ssm_cfg or {})},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": True,
    }
    state = {}
    for key, value in hf_model.state_dict().items():
        state["backbone." + key.replace("embeddings.", "embedding.")] = value.clone()
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "pytorch_model.bin")
    return state


def test_mamba_ssm_layout_loads_with_vocab_padding(tmp_path):
    hf = hf_mamba2(2)
    write_mamba_ssm_checkpoint(tmp_path, hf, pad_multiple=16)
    ours = Mamba2Backbone.from_pretrained(tmp_path).eval()
    assert ours.embedding.weight.shape == (112, 64)  # 100 rows padded to a multiple of 16
    assert torch.equal(ours.embedding.weight[100:], torch.zeros(12, 64))
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours(ids)
    assert (got - hf_hidden(hf, ids)).abs().max().item() <= 1e-4


def test_from_pretrained_overrides(tmp_path):
    hf = hf_mamba2(1)
    hf.save_pretrained(tmp_path)
    ours = Mamba2Backbone.from_pretrained(tmp_path, chunk_size=5).eval()
    assert ours.layers[0].mixer.chunk_size == 5
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(ids) - hf_hidden(hf, ids)).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="chunk"):
        Mamba2Backbone.from_pretrained(tmp_path, chunk=5)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    hf = hf_mamba2(1)
    state = write_mamba_ssm_checkpoint(tmp_path / "extra", hf)
    state["backbone.layers.0.mixer.x_proj.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "extra" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unexpected keys.*layers\.0\.mixer\.x_proj\.weight"):
        Mamba2Backbone.from_pretrained(tmp_path / "extra")

    state = write_mamba_ssm_checkpoint(tmp_path / "missing", hf)
    del state["backbone.layers.1.mixer.dt_bias"]
    torch.save(state, tmp_path / "missing" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys.*layers\.1\.mixer\.dt_bias"):
        Mamba2Backbone.from_pretrained(tmp_path / "missing")

    write_mamba_ssm_checkpoint(tmp_path / "shape", hf, extra_ssm_cfg={"d_state": 8})
    with pytest.raises(ValueError, match="shape mismatches"):
        Mamba2Backbone.from_pretrained(tmp_path / "shape")


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Mamba2Backbone.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Mamba2Backbone.from_pretrained(tmp_path)

    hf = hf_mamba2(1)
    write_mamba_ssm_checkpoint(tmp_path / "ckpt", hf)
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        Mamba2Backbone.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        Mamba2Backbone.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Mamba2Backbone.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "config,message",
    [
        ({"model_type": "mamba", "hidden_size": 64}, "model_type"),
        ({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {}}, "Mamba2"),
        ({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2", "headdim": 32,
                                                                       "D_has_hdim": True}}, "D_has_hdim"),
        ({"d_model": 64, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {"layer": "Mamba2", "hedim": 32}}, "hedim"),
        ({"d_model": 64, "n_layer": 2, "vocab_size": 100, "d_intermediate": 256,
          "ssm_cfg": {"layer": "Mamba2", "headdim": 32}}, "d_intermediate"),
        ({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100, "head_dim": 32,
          "num_heads": 8}, "num_heads"),
        ({"vocab_size": 100}, "neither"),
    ],
)
def test_unsupported_configs_are_rejected(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=message):
        Mamba2Backbone.from_pretrained(tmp_path)


def test_backbone_init_matches_mamba_ssm_scheme():
    torch.manual_seed(0)
    model = tiny_backbone(n_layer=4)
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.004
    bound = math.sqrt(1.0 / model.cfg.expand / model.cfg.d_model) / math.sqrt(4)  # kaiming a=sqrt(5), /sqrt(n_layer)
    w = model.layers[0].mixer.out_proj.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.8 * bound
