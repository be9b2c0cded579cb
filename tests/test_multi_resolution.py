"""Multi-resolution training (`--train-sides`): config parsing, the collate's per-batch side, and
the training components preparing images at the largest side."""
import pytest
import torch
import torch.nn.functional as F

from climp.data.collate import ImageTextCollate
from climp.train.config import TrainConfig


def tokenize(texts):
    return torch.tensor([[1, len(t), 2] for t in texts])


def test_train_sides_parse_from_flags_and_lists():
    assert TrainConfig(train_sides="64, 96,128").sides == (64, 96, 128)
    assert TrainConfig.from_dict({"train_sides": [32, 64]}).sides == (32, 64)
    assert TrainConfig().sides is None
    with pytest.raises(ValueError, match="train_sides"):
        TrainConfig(train_sides="64,big")
    with pytest.raises(ValueError, match="train_sides"):
        TrainConfig(train_sides="0,64")


def test_collate_resizes_each_batch_to_one_drawn_side():
    collate = ImageTextCollate(tokenize, sides=(32, 64, 96))
    images = [torch.rand(3, 96, 96) for _ in range(4)]
    torch.manual_seed(0)
    seen = {}
    for _ in range(40):
        batch, tokens = collate([(im, "a red circle") for im in images])
        assert batch.shape[0] == 4 and batch.shape[-1] == batch.shape[-2] and tokens.shape == (4, 3)
        seen[batch.shape[-1]] = batch
    assert set(seen) == {32, 64, 96}
    torch.testing.assert_close(seen[96], torch.stack(images))  # the largest side is left as it is
    expected = F.interpolate(torch.stack(images), size=(32, 32), mode="bilinear", antialias=True,
                             align_corners=False)
    torch.testing.assert_close(seen[32], expected)
    # A constant image stays constant at every side (antialiased resizing keeps the mean).
    flat = collate([(torch.full((3, 96, 96), 0.3), "x")])[0]
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


def test_collate_draws_follow_the_global_generator():
    collate = ImageTextCollate(tokenize, sides=(32, 64, 96))
    sample = [(torch.rand(3, 96, 96), "a")]
    torch.manual_seed(5)
    first = [collate(sample)[0].shape[-1] for _ in range(12)]
    torch.manual_seed(5)
    assert [collate(sample)[0].shape[-1] for _ in range(12)] == first
    assert ImageTextCollate(tokenize)(sample)[0].shape[-1] == 96  # no sides: unchanged
    with pytest.raises(ValueError, match="sides"):
        ImageTextCollate(tokenize, sides=(0, 64))


def test_components_render_at_the_largest_side():
    from climp.train.trainer import build_components

    config = TrainConfig(model="clip-vit-tiny", train_sides="32,64", resolution=32, train_samples=4,
                         eval_samples=2, retrieval_samples=2)
    parts = build_components(config)
    image, caption = parts.train_dataset[0]
    assert image.shape == (3, 64, 64) and isinstance(caption, str)
    assert parts.collate_fn.sides == (32, 64)
    assert parts.zero_shot_tasks["shape"].dataset[0][0].shape[-1] == 32  # evaluation at `resolution`


@pytest.mark.parametrize("model", ["climp-tiny", "clip-vit-tiny"])
def test_model_records_the_side_it_is_trained_at(model):
    from climp.train.trainer import build_components

    config = TrainConfig(model=model, train_sides="32,64", resolution=32, train_samples=4,
                         eval_samples=2, retrieval_samples=2)
    parts = build_components(config)
    assert parts.model.config["vision_cfg"]["image_size"] == 32
    images = torch.zeros(1, 3, 32, 32)
    assert parts.model.encode_image(images).shape[0] == 1
