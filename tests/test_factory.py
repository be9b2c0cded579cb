"""Registry, model construction, forward/backward of the tiny models, checkpoint loading."""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import climp
from climp.models.factory import get_model_config, model_from_config

TINY_MODELS = ["climp-tiny", "clip-vit-tiny", "climp-mamba1d-tiny"]


def tiny_batch(model_name, batch=2):
    tokenizer = climp.get_tokenizer(model_name)
    images = torch.randn(batch, 3, 64, 64)
    texts = ["a large red star at the top left", "two blue circles"][:batch]
    return images, tokenizer(texts)


def test_registry_lists_the_papers_models():
    names = climp.list_models()
    for name in TINY_MODELS + ["climp-vmamba-t", "climp-vmamba-s", "climp-vmamba-b", "clip-vit-b-16"]:
        assert name in names


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_forward_and_backward_on_cpu(name):
    torch.manual_seed(0)
    model = climp.create_model(name)
    images, ids = tiny_batch(name)
    out = model(images, ids)
    assert out["image_features"].shape == out["text_features"].shape == (2, model.embed_dim)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # The token embedding rows of unused tokens get zero grads, but every tensor gets one.
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_tiny_models_have_about_the_same_size():
    counts = {}
    for name in ["climp-tiny", "clip-vit-tiny"]:
        with torch.device("meta"):
            model = climp.create_model(name)
        counts[name] = sum(p.numel() for p in model.parameters())
    ratio = counts["climp-tiny"] / counts["clip-vit-tiny"]
    assert 0.85 < ratio < 1.15, counts


@pytest.mark.parametrize(
    "name, image_millions",
    [("climp-vmamba-t", 30), ("climp-vmamba-s", 50), ("climp-vmamba-b", 89), ("clip-vit-b-16", 86)],
)
def test_paper_sizes_on_meta_device(name, image_millions):
    with torch.device("meta"):
        model = climp.create_model(name)
    backbone = sum(p.numel() for n, p in model.visual.named_parameters() if not n.startswith(("head", "proj")))
    assert backbone / 1e6 == pytest.approx(image_millions, rel=0.06)


def test_text_shapes_of_paper_models():
    assert get_model_config("climp-vmamba-b")["text_cfg"]["d_model"] == 768  # Mamba-130m
    assert get_model_config("climp-vmamba-b")["text_cfg"]["n_layer"] == 24
    big = get_model_config("climp-vmamba-b-mamba-1.4b")["text_cfg"]
    assert (big["d_model"], big["n_layer"]) == (2048, 48)  # Mamba-1.4B


def test_transformer_tokenizer_truncates_mamba_tokenizer_does_not():
    long_text = "a red star " * 60
    assert climp.get_tokenizer("clip-vit-tiny")(long_text).shape[1] == 77
    assert climp.get_tokenizer("climp-tiny")(long_text).shape[1] > 77


def test_create_model_and_transforms_any_resolution():
    model, train_tf, val_tf = climp.create_model_and_transforms("climp-tiny", image_size=96)
    from PIL import Image

    image = val_tf(Image.new("RGB", (120, 100)))
    assert image.shape == (3, 96, 96)
    assert model.encode_image(image[None]).shape == (1, model.embed_dim)


def test_overrides_and_logit_bias():
    model = climp.create_model("clip-vit-tiny", init_logit_bias=-10.0, init_logit_scale=math.log(10))
    images, ids = tiny_batch("clip-vit-tiny")
    out = model(images, ids)
    assert out["logit_bias"].item() == -10.0 and out["logit_scale"].item() == pytest.approx(10.0)


def test_unknown_model_and_unknown_keys():
    with pytest.raises(ValueError, match="unknown model"):
        climp.create_model("no-such-model")
    cfg = get_model_config("clip-vit-tiny")
    cfg["vision_cfg"]["type"] = "resnet"
    with pytest.raises(ValueError, match="'type' must be one of"):
        model_from_config(cfg)
    with pytest.raises(ValueError, match="unknown model config keys"):
        model_from_config({**get_model_config("clip-vit-tiny"), "colour": 1})


def test_pretrained_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = climp.create_model("clip-vit-tiny").eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "clip-vit-tiny", "model_cfg": model.config}))
    images, ids = tiny_batch("clip-vit-tiny")
    expected = model(images, ids)["image_features"]
    for loaded in (climp.create_model("clip-vit-tiny", pretrained=tmp_path), climp.load_checkpoint(tmp_path)):
        torch.testing.assert_close(loaded.eval()(images, ids)["image_features"], expected)

    state = model.state_dict()
    state.pop("logit_scale")
    state["visual.extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): logit_scale[\s\S]*unexpected keys \(1\): visual.extra"):
        climp.create_model("clip-vit-tiny", pretrained=tmp_path / "bad.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        climp.create_model("clip-vit-tiny", pretrained=tmp_path / "corrupt.safetensors")
    with pytest.raises(FileNotFoundError):
        climp.create_model("clip-vit-tiny", pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="does not match the model"):
        climp.create_model("climp-tiny", pretrained=tmp_path / "model.safetensors")


def test_cli_models_lists_everything(capsys):
    from climp.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in rows} == set(climp.list_models())
