"""The train tests' stand-ins follow the model and tokenizer contracts."""
import torch

from train_standins import IMAGE_SIDE, TinyClip, tokenize


def test_standin_follows_model_contract():
    model = TinyClip(init_logit_bias=-10.0)
    images = torch.randn(3, 3, IMAGE_SIDE, IMAGE_SIDE)
    ids = tokenize(["a red star", "blue", "a green circle thing"])
    out = model(images, ids)
    assert out["image_features"].shape == out["text_features"].shape == (3, 8)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["logit_scale"], model.logit_scale.exp())
    assert ids[1, 1:].eq(0).all() and ids[:, 0].ne(0).all()


def test_standin_text_features_ignore_padding():
    model = TinyClip()
    short = model.encode_text(tokenize(["red star"]))
    padded = model.encode_text(tokenize(["red star", "a much longer caption here"]))[:1]
    torch.testing.assert_close(short, padded)
