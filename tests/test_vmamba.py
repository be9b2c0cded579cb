"""VMamba tower: shapes at several resolutions, input errors, SS2D against a per-direction loop,
gradients, batch independence, and the paper-size parameter counts."""
import math

import pytest
import torch
import torch.nn.functional as F

from climp.models.vmamba import (
    SS2D,
    VMambaConfig,
    VMambaVisionTower,
    spatial_max,
    vmamba_checkpoint_to_tower,
)
from climp.models.factory import get_model_config
from climp.ops import selective_scan_reference


def tiny_config(**overrides) -> VMambaConfig:
    base = dict(dims=16, depths=[1, 1, 1, 1], d_state=2, drop_path_rate=0.1)
    base.update(overrides)
    return VMambaConfig.from_dict(base)


@pytest.fixture(scope="module")
def tower() -> VMambaVisionTower:
    torch.manual_seed(0)
    return VMambaVisionTower(tiny_config(), embed_dim=24).eval()


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (64, 96), (128, 128)])
def test_forward_shapes_any_divisible_size(tower, size):
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        pooled = tower.forward_features(images)
        out = tower.head(pooled)
    assert out.shape == (2, 24)
    assert pooled.shape == (2, tower.num_features) == (2, 128)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(30, 30), (32, 40), (48, 32), (16, 16)])
def test_indivisible_size_is_rejected(tower, size):
    with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*stride 32"):
        tower(torch.randn(1, 3, *size))


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(3, 32, 32), "batch, channels"),
        (torch.randn(1, 1, 32, 32), "1 channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.randn(0, 3, 32, 32), "empty"),
    ],
)
def test_bad_inputs_raise(tower, images, message):
    with pytest.raises(ValueError, match=message):
        tower(images)


def test_config_from_dict_rejects_unknown_keys_and_expands_dims():
    cfg = VMambaConfig.from_dict({"dims": 24, "depths": [1, 2, 3]})
    assert cfg.dims == (24, 48, 96) and cfg.total_stride == 16
    with pytest.raises(ValueError, match="embed_dimm"):
        VMambaConfig.from_dict({"embed_dimm": 96})
    with pytest.raises(ValueError, match="forward_type"):
        VMambaConfig(forward_type="v9")
    with pytest.raises(ValueError, match="same length"):
        VMambaConfig(dims=[8, 16], depths=[1, 1, 1])


def traversal_orders(height: int, width: int):
    """Flat row-major positions visited by SS2D's four scans, built by explicit loops."""
    rows = [h * width + w for h in range(height) for w in range(width)]
    cols = [h * width + w for w in range(width) for h in range(height)]
    return [rows, cols, rows[::-1], cols[::-1]]


def ss2d_slow(op: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D computed one direction at a time with the sequential reference scan, ungrouped B/C."""
    batch, height, width, _ = x.shape
    d_inner, state, rank = op.d_inner, op.d_state, op.dt_rank
    proj = F.linear(x, op.in_proj.weight)
    u, z = (proj[..., :d_inner], proj[..., d_inner:]) if op.gated else (proj, None)
    u = u.permute(0, 3, 1, 2)
    if op.conv2d is not None:
        u = op.conv2d(u)
    u = F.silu(u).reshape(batch, d_inner, height * width)
    merged = torch.zeros_like(u)
    for k, order in enumerate(traversal_orders(height, width)):
        seq = u[:, :, order]
        dbl = torch.einsum("cd,bdl->bcl", op.x_proj_weight[k], seq)
        dt = torch.einsum("dr,brl->bdl", op.dt_projs_weight[k], dbl[:, :rank])
        channels = slice(k * d_inner, (k + 1) * d_inner)
        y = selective_scan_reference(
            seq, dt, -torch.exp(op.A_logs[channels]), dbl[:, rank:rank + state], dbl[:, rank + state:],
            D=op.Ds[channels], delta_bias=op.dt_projs_bias[k], delta_softplus=True,
        )
        merged[:, :, order] += y
    y = F.layer_norm(merged.transpose(1, 2), (d_inner,), op.out_norm.weight, op.out_norm.bias, op.out_norm.eps)
    y = y.reshape(batch, height, width, d_inner)
    if z is not None:
        y = y * F.silu(z)
    return F.linear(y, op.out_proj.weight)


@pytest.mark.parametrize("forward_type", ["v2", "v05_noz"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
def test_ss2d_matches_per_direction_loop(forward_type, dtype, tol):
    torch.manual_seed(1)
    op = SS2D(12, d_state=3, ssm_ratio=2.0, forward_type=forward_type).to(dtype)
    with torch.no_grad():  # break the init symmetry so every parameter matters
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 7, 12, dtype=dtype)
    fast, slow = op(x), ss2d_slow(op, x)
    assert fast.shape == (2, 5, 7, 12)
    assert (fast - slow).abs().max().item() <= tol


def test_forward_types_differ_in_gating_width():
    gated, plain = SS2D(16, forward_type="v2"), SS2D(16, forward_type="v05_noz")
    assert gated.in_proj.out_features == 2 * plain.in_proj.out_features == 64


def test_dt_bias_init_inverts_softplus_into_range():
    op = SS2D(32, ssm_ratio=2.0)
    dt = F.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert torch.equal(op.A_logs[:, 0], torch.zeros(4 * 64))
    assert op.x_proj_weight.shape == (4, 2 + 2 * 1, 64) and op.dt_projs_weight.shape == (4, 64, 2)


@pytest.mark.parametrize("forward_type", ["v2", "v05_noz"])
def test_backward_reaches_every_parameter(forward_type):
    torch.manual_seed(2)
    tower = VMambaVisionTower(tiny_config(forward_type=forward_type, gmlp=True), embed_dim=8).train()
    tower(torch.randn(1, 3, 32, 64)).pow(2).sum().backward()
    for name, p in tower.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(3)
    tower = VMambaVisionTower(tiny_config(drop_path_rate=0.0), embed_dim=8)
    images = torch.randn(1, 3, 32, 32)
    tower(images).sum().backward()
    plain = {n: p.grad.clone() for n, p in tower.named_parameters()}
    tower.zero_grad()
    tower.set_grad_checkpointing(True)
    tower(images).sum().backward()
    for name, p in tower.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


def test_batch_independence_in_eval(tower):
    torch.manual_seed(4)
    a, b, c = torch.randn(3, 1, 3, 32, 32).unbind(0)
    with torch.no_grad():
        alone = tower(a)
        with_b = tower(torch.cat([a, b]))[:1]
        with_c = tower(torch.cat([c, a]))[1:]
    torch.testing.assert_close(with_b, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_c, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, millions", [("climp-vmamba-t", 30), ("climp-vmamba-s", 50), ("climp-vmamba-b", 89)])
def test_preset_parameter_counts(name, millions):
    with torch.device("meta"):
        vision_cfg = {k: v for k, v in get_model_config(name)["vision_cfg"].items() if k != "type"}
        tower = VMambaVisionTower(VMambaConfig.from_dict(vision_cfg), embed_dim=512)
    count = sum(p.numel() for n, p in tower.named_parameters() if not n.startswith("head."))
    assert math.isclose(count / 1e6, millions, rel_tol=0.05), count


def test_vmamba_checkpoint_names_load():
    tower = VMambaVisionTower(tiny_config(), embed_dim=8)
    official = {("classifier.norm." + k[5:] if k.startswith("norm.") else k): v
                for k, v in tower.state_dict().items() if not k.startswith("head.")}
    official["classifier.head.weight"] = torch.zeros(1000, 128)
    assert "patch_embed.0.weight" in official and "layers.0.downsample.1.weight" in official
    assert "layers.0.blocks.0.op.x_proj_weight" in official
    missing, unexpected = tower.load_state_dict(vmamba_checkpoint_to_tower(official), strict=False)
    assert missing == ["head.weight", "head.bias"] and unexpected == []


def test_attention_pool_is_a_softmax_weighted_mean_of_the_final_map():
    """pool="attn": one learned query attends over the final map; checked against attention
    written out by hand (softmax of q.k over positions, weighted sum of values, out_proj)."""
    torch.manual_seed(5)
    tower = VMambaVisionTower(tiny_config(pool="attn", attn_pool_heads=4), embed_dim=8).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        x = tower.patch_embed(images)
        for stage in tower.layers:
            x = stage(x)
        tokens = tower.norm(x).flatten(1, 2)  # (batch, positions, channels)
        pool = tower.attn_pool
        attn = pool.attn
        width, heads = tokens.shape[-1], attn.num_heads
        q = F.linear(pool.ln_q(pool.query), *_proj(attn, 0, width))
        k = F.linear(pool.ln_k(tokens), *_proj(attn, 1, width))
        v = F.linear(pool.ln_k(tokens), *_proj(attn, 2, width))
        split = lambda t: t.unflatten(-1, (heads, width // heads)).transpose(-2, -3)
        weights = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)).softmax(-1)
        pooled = attn.out_proj((weights @ split(v)).transpose(-2, -3).flatten(-2))[:, 0]
        torch.testing.assert_close(tower.forward_features(images), pooled, atol=1e-5, rtol=1e-5)
    assert tower(torch.randn(1, 3, 32, 32)).shape == (1, 8)  # any divisible size, no pos. embedding


def _proj(attn, index, width):
    rows = slice(index * width, (index + 1) * width)
    return attn.in_proj_weight[rows], attn.in_proj_bias[rows]


def pooled_and_normed_stage_maps(tower, images):
    """(tower.forward_features(images), each stage's last-block map (captured by hooks)
    layer-normed with that stage's pooling norm), channel-last maps in stage order."""
    maps = []
    hooks = [stage.blocks[-1].register_forward_hook(lambda module, args, out: maps.append(out))
             for stage in tower.layers]
    with torch.no_grad():
        pooled = tower.forward_features(images)
    for hook in hooks:
        hook.remove()
    norms = list(tower.stage_norms) + [tower.norm]
    return pooled, [F.layer_norm(m, m.shape[-1:], n.weight, n.bias, n.eps) for m, n in zip(maps, norms)]


def test_pyramid_pool_concatenates_each_stage_max_of_its_normed_map():
    """pool="pyramid": the maps after each stage's blocks (captured by hooks), layer-normed with
    that stage's norm and max-pooled over locations, concatenated in stage order."""
    torch.manual_seed(6)
    tower = VMambaVisionTower(tiny_config(pool="pyramid"), embed_dim=8).eval()
    assert tower.num_features == 16 + 32 + 64 + 128 == tower.head.in_features
    images = torch.randn(2, 3, 64, 96)
    pooled, normed = pooled_and_normed_stage_maps(tower, images)
    expected = torch.cat([m.flatten(1, 2).max(dim=1).values for m in normed], dim=-1)
    assert [m.shape[1:3] for m in normed] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    torch.testing.assert_close(pooled, expected)
    # A bright patch at another place moves the maxima with it, not the pooled average.
    images2 = images.clone()
    images2[:, :, :16, :16] = images[:, :, 48:, 80:]
    with torch.no_grad():
        assert not torch.allclose(tower.forward_features(images2), pooled)
    assert tower(torch.randn(1, 3, 32, 32)).shape == (1, 8)  # any divisible size


def test_pyramid_avg_pool_is_each_stage_mean_of_its_normed_map():
    """pool="pyramid_avg": as "pyramid" with the mean over locations instead of the maximum, so
    a map repeated 2x2 (as a scene seen at twice the side, at the level of the maps) pools the
    same."""
    torch.manual_seed(7)
    tower = VMambaVisionTower(tiny_config(pool="pyramid_avg"), embed_dim=8).eval()
    assert tower.num_features == 16 + 32 + 64 + 128 == tower.head.in_features
    pooled, normed = pooled_and_normed_stage_maps(tower, torch.randn(2, 3, 64, 96))
    torch.testing.assert_close(pooled, torch.cat([m.mean(dim=(1, 2)) for m in normed], dim=-1))
    tiled = [m.repeat(1, 2, 2, 1) for m in normed]
    torch.testing.assert_close(torch.cat([t.mean(dim=(1, 2)) for t in tiled], -1), pooled)


def test_pyramid_grid_pool_maxes_over_the_training_grid():
    """pool="pyramid_grid": identical to "pyramid" at image_size; at twice the side each stage's
    normed map is average-pooled back to its size at image_size before the maximum."""
    torch.manual_seed(8)
    grid = VMambaVisionTower(tiny_config(pool="pyramid_grid", image_size=32), embed_dim=8).eval()
    plain = VMambaVisionTower(tiny_config(pool="pyramid", image_size=32), embed_dim=8).eval()
    plain.load_state_dict(grid.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grid.forward_features(images), plain.forward_features(images))
    pooled, normed = pooled_and_normed_stage_maps(grid, torch.randn(2, 3, 64, 64))
    expected = []
    for m in normed:  # maps 16, 8, 4, 2 wide at 64 px; 8, 4, 2, 1 at 32 px
        expected.append(F.avg_pool2d(m.permute(0, 3, 1, 2), 2).flatten(2).max(dim=2).values)
    torch.testing.assert_close(pooled, torch.cat(expected, dim=-1))


def test_spatial_max_matches_amax_and_routes_a_tied_gradient_to_one_maximum():
    """The pyramid pools' maximum over locations: amax's value and, where the maximum is unique,
    its gradient; on a tie the whole gradient goes to one of the tied maxima."""
    x = torch.randn(3, 5, 4, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(spatial_max(x), x, grad)
    (want,) = torch.autograd.grad(x.amax(dim=(2, 3)), x, grad)
    torch.testing.assert_close(spatial_max(x), x.amax(dim=(2, 3)))
    torch.testing.assert_close(got, want)
    tied = torch.zeros(1, 2, 3, 3, requires_grad=True)
    (g,) = torch.autograd.grad(spatial_max(tied), tied, torch.tensor([[2.0, 3.0]]))
    assert g.flatten(2).count_nonzero(dim=2).tolist() == [[1, 1]]
    torch.testing.assert_close(g.sum(dim=(2, 3)), torch.tensor([[2.0, 3.0]]))


def test_pool_options_are_validated():
    with pytest.raises(ValueError, match="pool"):
        tiny_config(pool="max")
    with pytest.raises(ValueError, match="attn_pool_heads"):
        tiny_config(pool="attn", attn_pool_heads=5)


def test_ss2d_marks_its_ssm_parameters_free_of_weight_decay():
    ss2d_module = next(m for m in VMambaVisionTower(tiny_config(), embed_dim=8).modules() if isinstance(m, SS2D))
    for param in (ss2d_module.A_logs, ss2d_module.Ds, ss2d_module.dt_projs_bias):
        assert getattr(param, "_no_weight_decay", False)
