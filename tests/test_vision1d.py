"""1D Mamba image tower: shapes, errors, row-major tokens, (bi)directional causality, gradients,
batch independence."""
import pytest
import torch

from climp.models.vision1d import Mamba1DVisionConfig, Mamba1DVisionTower

# Vim-Ti / Vim-S sizes (d_model 192 / 384, 24 layers, 16-pixel patches).
VIM_SIZES = {"vim-ti": 192, "vim-s": 384}


def tiny_config(**overrides) -> Mamba1DVisionConfig:
    base = dict(image_size=32, patch_size=8, d_model=16, n_layer=2, d_state=4, drop_path_rate=0.1)
    base.update(overrides)
    return Mamba1DVisionConfig.from_dict(base)


@pytest.fixture(scope="module")
def tower() -> Mamba1DVisionTower:
    torch.manual_seed(0)
    return Mamba1DVisionTower(tiny_config(), embed_dim=12).eval()


def token_outputs(tower: Mamba1DVisionTower, images: torch.Tensor) -> torch.Tensor:
    """Per-token features after all blocks (before pooling)."""
    x = tower.tokens(images)
    for layer in tower.layers:
        x = layer(x)
    return x


@pytest.mark.parametrize("size", [(32, 32), (16, 48), (64, 40)])
def test_forward_shapes(tower, size):
    with torch.no_grad():
        pooled = tower.forward_features(torch.randn(2, 3, *size))
        out = tower.head(pooled)
    assert out.shape == (2, 12) and pooled.shape == (2, tower.num_features) == (2, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 32, 32), "batch, channels"),
        (torch.randn(1, 4, 32, 32), "4 channels"),
        (torch.ones(1, 3, 32, 32, dtype=torch.int64), "float"),
        (torch.randn(0, 3, 32, 32), "empty"),
        (torch.randn(1, 3, 30, 32), "30x32.*patch_size 8"),
        (torch.randn(1, 3, 32, 20), "32x20"),
    ],
)
def test_bad_inputs_raise(tower, images, message):
    with pytest.raises(ValueError, match=message):
        tower(images)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="depth"):
        Mamba1DVisionConfig.from_dict({"depth": 12})
    with pytest.raises(ValueError, match="d_model"):
        Mamba1DVisionConfig(d_model=0)


def test_tokens_are_patches_in_row_major_order(tower):
    images = torch.randn(1, 3, 16, 24)
    p = tower.cfg.patch_size
    weight, bias = tower.patch_embed.weight, tower.patch_embed.bias
    expected = [
        torch.einsum("dchw,chw->d", weight, images[0, :, i * p:(i + 1) * p, j * p:(j + 1) * p]) + bias
        for i in range(16 // p) for j in range(24 // p)
    ]
    torch.testing.assert_close(tower.tokens(images)[0], torch.stack(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_direction_sets_which_tokens_see_a_change(bidirectional):
    torch.manual_seed(1)
    tower = Mamba1DVisionTower(tiny_config(bidirectional=bidirectional), embed_dim=4).eval()
    images = torch.randn(1, 3, 32, 32)
    changed = images.clone()
    changed[:, :, 8:16, 8:16] += 1.0  # patch (1, 1): token 5 of 16
    with torch.no_grad():
        diff = (token_outputs(tower, images) - token_outputs(tower, changed)).abs().amax(-1)[0]
    assert (diff[5:] > 1e-6).all()
    if bidirectional:
        assert (diff[:5] > 1e-6).all()
    else:
        assert (diff[:5] == 0).all()


def test_bidirectional_has_a_mixer_per_direction():
    uni = Mamba1DVisionTower(tiny_config(bidirectional=False), embed_dim=4)
    bi = Mamba1DVisionTower(tiny_config(bidirectional=True), embed_dim=4)
    mixer_params = sum(p.numel() for n, p in uni.named_parameters() if ".mixer." in n)
    assert sum(p.numel() for n, p in bi.named_parameters() if ".mixer." in n) == 2 * mixer_params


def test_position_embedding_is_resized_to_the_grid():
    torch.manual_seed(2)
    tower = Mamba1DVisionTower(tiny_config(pos_embed=True), embed_dim=4).eval()
    images = torch.randn(1, 3, 32, 32)
    no_pos = tower.patch_embed(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tower.tokens(images) - no_pos, tower.pos_embed.flatten(2).transpose(1, 2))
    assert tower.tokens(torch.randn(1, 3, 48, 16)).shape == (1, 6 * 2, 16)


@pytest.mark.parametrize("bidirectional, pos_embed", [(True, True), (False, False)])
def test_backward_reaches_every_parameter(bidirectional, pos_embed):
    torch.manual_seed(3)
    tower = Mamba1DVisionTower(tiny_config(bidirectional=bidirectional, pos_embed=pos_embed), embed_dim=4).train()
    tower(torch.randn(2, 3, 24, 40)).pow(2).sum().backward()
    for name, p in tower.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(4)
    tower = Mamba1DVisionTower(tiny_config(drop_path_rate=0.0), embed_dim=4)
    images = torch.randn(2, 3, 32, 32)
    tower(images).sum().backward()
    plain = {n: p.grad.clone() for n, p in tower.named_parameters()}
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    tower(images).sum().backward()
    for name, p in tower.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


def test_batch_independence_in_eval(tower):
    torch.manual_seed(5)
    a, b = torch.randn(2, 1, 3, 32, 48).unbind(0)
    with torch.no_grad():
        alone = tower(a)
        first = tower(torch.cat([a, b]))[:1]
        second = tower(torch.cat([b, a]))[1:]
    torch.testing.assert_close(first, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, millions", [("vim-ti", 12.2), ("vim-s", 46.6)])
def test_preset_parameter_counts(name, millions):
    with torch.device("meta"):
        cfg = Mamba1DVisionConfig(patch_size=16, d_model=VIM_SIZES[name], n_layer=24, d_state=16, expand=2)
        tower = Mamba1DVisionTower(cfg, embed_dim=512)
    count = sum(p.numel() for n, p in tower.named_parameters() if not n.startswith("head."))
    assert abs(count / 1e6 - millions) < 0.1, count
