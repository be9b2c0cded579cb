"""Text towers: Mamba (any length, padding-invariant by causality) and open_clip's Transformer
(parity with open_clip CLIP.encode_text for the same weights)."""
import open_clip
import pytest
import torch

from climp.models.text import (
    MambaTextConfig,
    MambaTextTower,
    TransformerTextConfig,
    TransformerTextTower,
    load_open_clip_text_state_dict,
)

SOT, EOT, VOCAB = 49406, 49407, 49408


def caption(length: int, generator: torch.Generator) -> torch.Tensor:
    """SOT, length - 2 random BPE ids, EOT (open_clip tokenizer layout)."""
    body = torch.randint(1, SOT, (length - 2,), generator=generator)
    return torch.cat([torch.tensor([SOT]), body, torch.tensor([EOT])])


def pad_batch(captions, length=None) -> torch.Tensor:
    length = length or max(len(c) for c in captions)
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for i, c in enumerate(captions):
        out[i, : len(c)] = c
    return out


def mamba_tower(**kw) -> MambaTextTower:
    cfg = dict(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return MambaTextTower(MambaTextConfig.from_dict(cfg), embed_dim=8).eval()


# ----------------------------------------------------------------------------- Mamba


def test_mamba_tower_reads_a_400_token_caption():
    tower = mamba_tower()
    ids = pad_batch([caption(400, torch.Generator().manual_seed(0))])
    with torch.no_grad():
        out = tower(ids)
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    assert tower.context_length is None and tower.output_dim == 8


def test_mamba_feature_does_not_change_when_batched_with_longer_captions():
    tower = mamba_tower()
    g = torch.Generator().manual_seed(1)
    short = caption(6, g)
    with torch.no_grad():
        alone = tower(short[None])
        batched = tower(pad_batch([short, caption(40, g), caption(90, g)]))
    torch.testing.assert_close(batched[0:1], alone, rtol=0, atol=1e-5)
    assert (batched[1] - batched[0]).abs().max() > 1e-3


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_mamba_tower_computes_nothing_after_the_longest_caption(pooling):
    # float64: float32 matmul rounding depends on the number of rows (11 vs 77 tokens)
    tower = mamba_tower(pooling=pooling).train().double()
    g = torch.Generator().manual_seed(5)
    captions = [caption(7, g), caption(12, g)]
    captions[1][11] = 0  # a pad-id token as the caption's last one still counts as padding
    lengths = []
    tower.backbone.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    padded, tight = pad_batch(captions, length=77), pad_batch(captions)
    assert tower.trim(padded).shape == (2, 11)
    out = tower(padded)
    grads = torch.autograd.grad(out.square().sum(), list(tower.parameters()))
    assert lengths == [11]
    tower.trim = lambda ids: ids  # the whole padded batch, as computed without trimming
    full = tower(padded)
    full_grads = torch.autograd.grad(full.square().sum(), list(tower.parameters()))
    assert lengths == [11, 77]
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-14)
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tower(tight), full, rtol=1e-12, atol=1e-14)


def test_mamba_last_pooling_takes_the_last_non_pad_token():
    tower = mamba_tower()
    g = torch.Generator().manual_seed(2)
    c = caption(9, g)
    c[4] = 0  # open_clip BPE id 0 ("!") inside a caption must not be mistaken for padding
    ids = pad_batch([c, caption(15, g)])
    with torch.no_grad():
        expected = tower.proj(tower.backbone(c[None])[:, -1])
        got = tower(ids)[0:1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_mamba_mean_pooling_averages_real_tokens():
    tower = mamba_tower(pooling="mean")
    g = torch.Generator().manual_seed(3)
    c = caption(7, g)
    c[3] = 0  # a pad-id token inside the caption is part of it
    with torch.no_grad():
        expected = tower.proj(tower.backbone(c[None]).mean(1))
        got = tower(pad_batch([c, caption(20, g)]))[0:1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "ids,match",
    [
        (torch.ones(2, 5), "integer"),
        (torch.ones(5, dtype=torch.long), "batch, length"),
        (torch.ones(0, 5, dtype=torch.long), "empty batch"),
        (torch.ones(2, 0, dtype=torch.long), "zero-length"),
        (torch.tensor([[SOT, EOT], [0, 0]]), "only padding"),
        (torch.tensor([[SOT, VOCAB]]), r"\[0, 49408\)"),
    ],
)
def test_mamba_tower_rejects_bad_input(ids, match):
    with pytest.raises(ValueError, match=match):
        mamba_tower()(ids)


def test_mamba_text_config_rejects_unknown_keys_and_pooling():
    with pytest.raises(ValueError, match="pool"):
        MambaTextConfig.from_dict(dict(d_model=8, n_layer=1, vocab_size=10, pooling="max"))
    with pytest.raises(ValueError, match="polling"):
        MambaTextConfig.from_dict(dict(d_model=8, n_layer=1, vocab_size=10, polling="last"))


def test_mamba_proj_init_scale():
    tower = mamba_tower(d_model=64)
    assert tower.proj.bias is None
    assert abs(tower.proj.weight.std().item() - 64 ** -0.5) < 0.2 * 64 ** -0.5


def test_backward_through_mamba_tower_reaches_every_parameter():
    tower = mamba_tower().train()
    g = torch.Generator().manual_seed(4)
    ids = pad_batch([caption(12, g), caption(5, g)])
    tower(ids).pow(2).sum().backward()
    for name, p in tower.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_mamba_tower_grad_checkpointing_same_grads():
    tower = mamba_tower().train()
    ids = pad_batch([caption(10, torch.Generator().manual_seed(5))])

    def grads():
        tower.zero_grad()
        tower(ids).sum().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters()}

    plain = grads()
    tower.set_grad_checkpointing(True)
    assert tower.backbone.grad_checkpointing
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name], rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------- Transformer

TEXT_CFG = dict(context_length=77, vocab_size=VOCAB, width=32, heads=2, layers=2)
VISION_CFG = dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16)


def open_clip_model(custom: bool = False, quick_gelu: bool = False):
    torch.manual_seed(6)
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    model = cls(embed_dim=24, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # move LayerNorm weights off ones / biases off zeros so every weight matters
        g = torch.Generator().manual_seed(7)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def transformer_tower(**kw) -> TransformerTextTower:
    return TransformerTextTower(TransformerTextConfig.from_dict({**TEXT_CFG, **kw}), embed_dim=24).eval()


@pytest.mark.parametrize("custom,quick_gelu", [(False, False), (False, True), (True, False)])
def test_transformer_tower_matches_open_clip_encode_text(custom, quick_gelu):
    ref = open_clip_model(custom, quick_gelu)
    tower = transformer_tower(quick_gelu=quick_gelu)
    load_open_clip_text_state_dict(tower, ref.state_dict())
    g = torch.Generator().manual_seed(8)
    captions = [caption(n, g) for n in (5, 12, 30)]
    with torch.no_grad():
        expected = ref.encode_text(pad_batch(captions, 77))  # open_clip's fixed 77-token layout
        full = tower(pad_batch(captions, 77))
        dynamic = tower(pad_batch(captions))  # padded to the longest caption only (30)
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dynamic, expected, rtol=1e-5, atol=1e-5)


def test_transformer_tower_keeps_open_clip_names():
    ref = open_clip.CustomTextCLIP(embed_dim=24, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG)
    expected = {k[len("text."):] for k in ref.state_dict() if k.startswith("text.")}
    assert set(transformer_tower().state_dict()) == expected


def test_transformer_tower_enforces_context_length():
    tower = transformer_tower(context_length=16)
    assert tower.context_length == 16 and tower.output_dim == 24
    ids = pad_batch([caption(17, torch.Generator().manual_seed(9))])
    with pytest.raises(ValueError, match="context_length is 16"):
        tower(ids)
    with pytest.raises(ValueError, match="only padding"):
        tower(torch.zeros(1, 4, dtype=torch.long))


def test_open_clip_loading_reports_key_problems():
    sd = open_clip_model().state_dict()
    del sd["ln_final.weight"]
    with pytest.raises(ValueError, match="ln_final.weight"):
        load_open_clip_text_state_dict(transformer_tower(), sd)
    with pytest.raises(ValueError, match="positional_embedding"):
        load_open_clip_text_state_dict(transformer_tower(context_length=32), open_clip_model().state_dict())
    with pytest.raises(ValueError, match="no open_clip text-tower keys"):
        load_open_clip_text_state_dict(transformer_tower(), {"visual.proj": torch.zeros(1)})


def test_transformer_config_validation():
    with pytest.raises(ValueError, match="pool_type"):
        TransformerTextConfig(pool_type="last")
    with pytest.raises(ValueError, match="divisible"):
        TransformerTextConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="widht"):
        TransformerTextConfig.from_dict({"widht": 3})


def test_transformer_eos_pooling_uses_eos_id():
    tower = transformer_tower(pool_type="eos", eos_id=5)
    argmax_tower = transformer_tower()
    argmax_tower.load_state_dict(tower.state_dict())
    ids = torch.tensor([[SOT, 7, 5, 9, EOT]])
    with torch.no_grad():
        pooled_at_eos = tower(ids)
        torch.testing.assert_close(pooled_at_eos, tower(ids[:, :3]), rtol=1e-5, atol=1e-5)  # causal prefix
        assert (argmax_tower(ids) - pooled_at_eos).abs().max() > 1e-3


def test_transformer_tower_grad_checkpointing_same_grads():
    tower = transformer_tower().train()
    ids = pad_batch([caption(10, torch.Generator().manual_seed(10))])

    def grads():
        tower.zero_grad()
        tower(ids).sum().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    plain = grads()
    tower.set_grad_checkpointing(True)
    checkpointed = grads()
    assert set(checkpointed) == set(plain) and len(plain) > 10
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-6, atol=1e-7, msg=name)
