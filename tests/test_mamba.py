"""Mamba-1 mixer/backbone: initialisation, numerics against a per-token loop, and checkpoint
parity with transformers' MambaModel and mamba_ssm's state-dict layout."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from climp.models.mamba import (
    MambaBackbone,
    MambaBlock,
    MambaConfig,
    MambaMixer,
    RMSNorm,
    mamba_init_,
)
from climp.models.pretrained import language_model_config_from_json, load_mamba_state_dict

transformers = pytest.importorskip("transformers")


def tiny_cfg(**kw) -> MambaConfig:
    d = dict(d_model=16, n_layer=2, vocab_size=50, d_state=4, scan_backend="reference")
    d.update(kw)
    return MambaConfig.from_dict(d)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its structured init (ones, log-arange) so tests see all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def mixer_loop(mixer: MambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """Independent float64 reference of the mixer: explicit causal conv and a per-token recurrence."""
    p = {k: v.detach().double() for k, v in mixer.state_dict().items()}
    h = hidden.double()
    batch, length, _ = h.shape
    xz = h @ p["in_proj.weight"].T + p.get("in_proj.bias", 0.0)
    x, z = xz[..., : mixer.d_inner], xz[..., mixer.d_inner:]
    w = p["conv1d.weight"][:, 0]  # (d_inner, d_conv)
    k = w.shape[1]
    x_pad = torch.cat([x.new_zeros(batch, k - 1, mixer.d_inner), x], dim=1)
    conv = torch.stack([(x_pad[:, t: t + k] * w.T).sum(1) for t in range(length)], dim=1)
    conv = conv + p.get("conv1d.bias", 0.0)
    x = F.silu(conv)
    dbc = x @ p["x_proj.weight"].T
    dt, B, C = dbc.split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.softplus(dt @ p["dt_proj.weight"].T + p["dt_proj.bias"])
    A = -torch.exp(p["A_log"])
    state = h.new_zeros(batch, mixer.d_inner, mixer.d_state)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, t, :, None] * A)
        state = dA * state + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        y = (state * C[:, t, None, :]).sum(-1) + p["D"] * x[:, t]
        ys.append(y * F.silu(z[:, t]))
    return torch.stack(ys, dim=1) @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_mixer_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    mixer = MambaMixer(32, d_state=8, expand=2, dt_min=0.002, dt_max=0.05, dt_scale=2.0)
    assert mixer.dt_rank == math.ceil(32 / 16)
    expected_a = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, 8)
    torch.testing.assert_close(mixer.A_log.data, expected_a)
    torch.testing.assert_close(mixer.D.data, torch.ones(64))
    dt = F.softplus(mixer.dt_proj.bias.data)
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    assert dt.max() / dt.min() > 5  # log-uniform spread, not a constant
    bound = 2.0 * mixer.dt_rank ** -0.5
    assert mixer.dt_proj.weight.abs().max() <= bound and mixer.dt_proj.weight.abs().max() > 0.5 * bound
    for p in (mixer.A_log, mixer.D, mixer.dt_proj.bias):
        assert getattr(p, "_no_weight_decay", False)
    assert mixer.x_proj.bias is None and mixer.in_proj.bias is None
    assert mixer.conv1d.weight.shape == (64, 1, 4) and mixer.conv1d.padding == (3,)


def test_dt_floor_clamps_small_time_steps():
    mixer = MambaMixer(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    torch.testing.assert_close(F.softplus(mixer.dt_proj.bias.data), torch.full((32,), 1e-3), rtol=1e-4, atol=0)


def test_backbone_init_keeps_dt_bias_and_rescales_out_proj():
    torch.manual_seed(0)
    model = MambaBackbone(tiny_cfg(n_layer=4, d_model=64))
    mixer = model.layers[0].mixer
    assert F.softplus(mixer.dt_proj.bias).min() >= 1e-3 * (1 - 1e-4)  # not zeroed by init_weights
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(4)  # kaiming-uniform(a=sqrt 5) / sqrt(n_layer)
    w = mixer.out_proj.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.004


@pytest.mark.parametrize("conv_bias,bias", [(True, False), (False, True)])
def test_mixer_matches_per_token_loop(conv_bias, bias):
    torch.manual_seed(1)
    mixer = MambaMixer(12, d_state=5, d_conv=3, expand=2, conv_bias=conv_bias, bias=bias, scan_backend="reference")
    randomize_(mixer)
    hidden = torch.randn(2, 9, 12)
    torch.testing.assert_close(mixer(hidden).double(), mixer_loop(mixer, hidden), rtol=1e-4, atol=1e-5)


def test_mixer_is_causal():
    torch.manual_seed(2)
    mixer = MambaMixer(8, d_state=4, scan_backend="reference")
    hidden = torch.randn(1, 10, 8)
    changed = hidden.clone()
    changed[:, 6:] = torch.randn(1, 4, 8)
    out_a, out_b = mixer(hidden), mixer(changed)
    torch.testing.assert_close(out_a[:, :6], out_b[:, :6])
    assert (out_a[:, 6:] - out_b[:, 6:]).abs().max() > 1e-6


def test_block_is_prenorm_residual():
    torch.manual_seed(3)
    mixer = MambaMixer(8, d_state=4, scan_backend="reference")
    block = MambaBlock(8, mixer)
    randomize_(block)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(block(x), x + mixer(block.norm(x)))
    assert set(block.state_dict()) >= {"norm.weight", "mixer.A_log", "mixer.in_proj.weight"}


def test_drop_path_is_timm_stochastic_depth():
    from timm.layers import DropPath

    model = MambaBackbone(tiny_cfg(n_layer=3, drop_path_rate=0.2))
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.layers]
    assert isinstance(model.layers[-1].drop_path, DropPath)
    assert rates == pytest.approx([0.0, 0.1, 0.2])


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="d_modle"):
        MambaConfig.from_dict({"d_modle": 8, "n_layer": 1, "vocab_size": 10})
    with pytest.raises(ValueError, match="n_layer"):
        MambaConfig(d_model=8, n_layer=0, vocab_size=10)
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(d_model=8, n_layer=1, vocab_size=10, dt_rank="big")
    assert MambaConfig(d_model=8, n_layer=1, vocab_size=100).padded_vocab_size == 104


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(4)
    model = MambaBackbone(tiny_cfg())
    randomize_(model)
    ids = torch.randint(0, 50, (2, 7))

    def grads():
        model.zero_grad()
        model(ids).pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    ckpt = grads()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------- checkpoints


def hf_model(cls_name: str = "MambaModel", vocab: int = 100):
    torch.manual_seed(5)
    hcfg = transformers.MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=8, vocab_size=vocab)
    model = getattr(transformers, cls_name)(hcfg).eval()
    randomize_(model)
    return model


@pytest.mark.parametrize("cls_name", ["MambaModel", "MambaForCausalLM"])
def test_transformers_checkpoint_parity(tmp_path, cls_name):
    ref = hf_model(cls_name)
    ref.save_pretrained(tmp_path)
    ours = MambaBackbone.from_pretrained(tmp_path, scan_backend="reference").eval()
    assert ours.embedding.weight.shape[0] == 104  # padded to a multiple of 8 with zero rows
    assert ours.embedding.weight[100:].abs().max() == 0
    ids = torch.randint(0, 100, (3, 17))
    with torch.no_grad():
        backbone = ref.backbone if cls_name == "MambaForCausalLM" else ref
        expected = backbone(input_ids=ids).last_hidden_state
        got = ours(ids)
    assert (got - expected).abs().max() <= 1e-4


def mamba_ssm_state_dict(ref) -> dict:
    """A transformers MambaModel state dict renamed to mamba_ssm's MambaLMHeadModel layout, with
    the embedding padded to a multiple of 8 rows as mamba_ssm stores it."""
    sd = {}
    for k, v in ref.state_dict().items():
        k = k.replace("embeddings.", "embedding.")
        sd["backbone." + k] = v.clone()
    emb = sd["backbone.embedding.weight"]
    sd["backbone.embedding.weight"] = torch.cat([emb, torch.zeros(4, emb.shape[1])])
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    return sd


def write_mamba_ssm_checkpoint(path, ref) -> None:
    config = {
        "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 100,
        "ssm_cfg": {"d_state": 8, "layer": "Mamba1"}, "attn_layer_idx": [], "attn_cfg": {},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }
    (path / "config.json").write_text(json.dumps(config))
    torch.save(mamba_ssm_state_dict(ref), path / "pytorch_model.bin")


def test_mamba_ssm_layout_checkpoint_parity(tmp_path):
    ref = hf_model()
    write_mamba_ssm_checkpoint(tmp_path, ref)
    ours = MambaBackbone.from_pretrained(tmp_path, scan_backend="reference").eval()
    assert ours.cfg.d_state == 8 and ours.cfg.padded_vocab_size == 104
    ids = torch.randint(0, 100, (2, 11))
    with torch.no_grad():
        assert (ours(ids) - ref(input_ids=ids).last_hidden_state).abs().max() <= 1e-4


def test_state_dict_key_errors_list_the_keys():
    ref = hf_model()
    model = MambaBackbone(MambaConfig(d_model=32, n_layer=2, vocab_size=100, d_state=8))
    sd = mamba_ssm_state_dict(ref)
    del sd["backbone.layers.1.mixer.D"]
    sd["backbone.layers.0.mixer.extra"] = torch.zeros(1)
    with pytest.raises(ValueError) as err:
        load_mamba_state_dict(model, sd)
    assert "layers.1.mixer.D" in str(err.value) and "layers.0.mixer.extra" in str(err.value)
    assert "missing" in str(err.value) and "unexpected" in str(err.value)


def test_state_dict_shape_and_vocab_errors():
    ref = hf_model(vocab=120)
    small = MambaBackbone(MambaConfig(d_model=32, n_layer=2, vocab_size=100, d_state=8))
    with pytest.raises(ValueError, match="120 rows"):
        load_mamba_state_dict(small, ref.state_dict())
    wrong_state = MambaBackbone(MambaConfig(d_model=32, n_layer=2, vocab_size=120, d_state=4))
    with pytest.raises(ValueError, match="A_log"):
        load_mamba_state_dict(wrong_state, ref.state_dict())


def test_loaded_weights_equal_the_source():
    ref = hf_model()
    model = MambaBackbone(MambaConfig(d_model=32, n_layer=2, vocab_size=100, d_state=8))
    load_mamba_state_dict(model, {"backbone." + k: v for k, v in ref.state_dict().items()})
    torch.testing.assert_close(model.layers[1].mixer.A_log, ref.layers[1].mixer.A_log)
    torch.testing.assert_close(model.embedding.weight[:100], ref.embeddings.weight)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        MambaBackbone.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaBackbone.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        MambaBackbone.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 32, "n_layer": 2, "vocab_size": 100}))
    with pytest.raises(FileNotFoundError, match="no weights"):
        MambaBackbone.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        MambaBackbone.from_pretrained(tmp_path)


def mamba_config_from_json(raw):
    return language_model_config_from_json(raw, "mamba")


def test_config_json_variants():
    assert mamba_config_from_json({"d_model": 8, "n_layer": 1, "vocab_size": 9}).padded_vocab_size == 16
    with pytest.raises(ValueError, match="mamba2"):
        mamba_config_from_json({"model_type": "mamba2", "hidden_size": 8})
    with pytest.raises(ValueError, match="Mamba1"):
        mamba_config_from_json({"d_model": 8, "n_layer": 1, "vocab_size": 9, "ssm_cfg": {"layer": "Mamba2"}})
    with pytest.raises(ValueError, match="attention"):
        mamba_config_from_json({"d_model": 8, "n_layer": 1, "vocab_size": 9, "attn_layer_idx": [0]})
    with pytest.raises(ValueError, match="d_modle"):
        mamba_config_from_json({"d_model": 8, "n_layer": 1, "vocab_size": 9, "d_modle": 3})
    with pytest.raises(ValueError, match="neither"):
        mamba_config_from_json({"width": 8})


@pytest.mark.parametrize("A_init_range", [None, (1.0, 16.0)])
def test_mamba_init_sets_the_ssm_parameters_and_marks_them(A_init_range):
    A_log, D, bias, weight = (torch.nn.Parameter(torch.zeros(*shape)) for shape in [(6, 4), (6,), (6,), (6, 3)])
    mamba_init_(A_log, D, bias, weight, dt_min=0.01, dt_max=0.05, dt_init_floor=1e-4, dt_scale=2.0,
                A_init_range=A_init_range)
    if A_init_range is None:
        torch.testing.assert_close(A_log.data, torch.log(torch.arange(1.0, 5.0)).expand(6, 4))
    else:
        assert A_log.exp().min() >= 1.0 and A_log.exp().max() <= 16.0 and A_log.unique().numel() == 24
    assert torch.equal(D.data, torch.ones(6))
    dt = F.softplus(bias.data)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    assert weight.abs().max() <= 2.0 / math.sqrt(3) and weight.std() > 0
    assert all(getattr(p, "_no_weight_decay", False) for p in (A_log, D, bias)) and bias._no_reinit
    with pytest.raises(ValueError, match="dt_init"):
        mamba_init_(A_log, D, bias, weight, dt_init="zeros")
