"""Our ViT tower is open_clip's: same weights give the same features, at any resolution."""
import open_clip
import pytest
import torch

from climp.models.vit import ViTVisionConfig, ViTVisionTower, resize_grid_embedding

TINY = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32, mlp_ratio=2.0)


def open_clip_visual():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=48, vision_cfg=TINY, text_cfg=dict(width=32, heads=2, layers=1, context_length=16))
    return model.visual.eval()


def test_same_weights_same_features_as_open_clip():
    reference = open_clip_visual()
    ours = ViTVisionTower(ViTVisionConfig(**TINY), embed_dim=48).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(ours(images), reference(images), rtol=0, atol=1e-6)


def test_other_resolution_matches_open_clip_resized_checkpoint():
    """At 64px our on-the-fly resize equals open_clip built at 64px loading the resized embedding."""
    reference = open_clip_visual()
    ours = ViTVisionTower(ViTVisionConfig(**TINY), embed_dim=48).eval()
    ours.load_state_dict(reference.state_dict())
    big = open_clip.CLIP(embed_dim=48, vision_cfg={**TINY, "image_size": 64},
                         text_cfg=dict(width=32, heads=2, layers=1, context_length=16))
    state = {"visual." + k: v for k, v in reference.state_dict().items()}
    open_clip.model.resize_pos_embed(state, big)
    big.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items()})
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(images), big.visual.eval()(images), rtol=0, atol=1e-5)


def test_non_square_input_and_identity_resize():
    ours = ViTVisionTower(ViTVisionConfig(**TINY), embed_dim=48).eval()
    assert ours(torch.randn(1, 3, 32, 64)).shape == (1, 48)
    pos = ours.positional_embedding.detach()
    torch.testing.assert_close(resize_grid_embedding(pos, (4, 4), (4, 4)), pos, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(1, 3, 30, 32), "not divisible"),
        (torch.randn(1, 1, 32, 32), "1 channels"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float tensor"),
        (torch.randn(0, 3, 32, 32), "empty batch"),
        (torch.randn(3, 32, 32), "batch, channels"),
    ],
)
def test_bad_images_get_clear_errors(images, message):
    ours = ViTVisionTower(ViTVisionConfig(**TINY), embed_dim=48)
    with pytest.raises(ValueError, match=message):
        ours(images)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown ViTVisionConfig keys"):
        ViTVisionConfig.from_dict({"widht": 3})
