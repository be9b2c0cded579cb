"""Starting towers and whole models from released-weight layouts written by the tests."""
import pytest
import torch
import open_clip
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM

import climp
from climp.models.factory import get_model_config


def write_word_tokenizer(directory, words):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))


def test_text_tower_from_transformers_language_model(tmp_path):
    torch.manual_seed(0)
    hf = MambaForCausalLM(HFMambaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, state_size=8,
                                        expand=2, conv_kernel=4)).eval()
    hf.save_pretrained(tmp_path)
    write_word_tokenizer(tmp_path, ["a", "red", "star", "blue", "circle"])
    model = climp.create_model("climp-tiny", text_pretrained=tmp_path).eval()
    assert model.text.cfg.d_model == 32 and model.text.cfg.n_layer == 2
    tokenizer = climp.get_tokenizer(model)
    ids = tokenizer(["a red star", "blue circle"])
    assert model.text.cfg.pad_id == tokenizer.pad_id == 1
    with torch.no_grad():
        ours = model.text.backbone(ids)
        theirs = hf.backbone(ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert model.encode_text(ids).shape == (2, model.embed_dim)


def test_text_pretrained_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        climp.create_model("climp-tiny", text_pretrained=tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        climp.create_model("clip-vit-tiny", text_pretrained=tmp_path)


def open_clip_twin(name):
    """An open_clip CLIP with the same shapes as our named ViT/Transformer config."""
    cfg = get_model_config(name)
    vision = {k: v for k, v in cfg["vision_cfg"].items() if k != "type"}
    text = {k: v for k, v in cfg["text_cfg"].items() if k != "type"}
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision, text_cfg=text)


def test_open_clip_checkpoint_gives_open_clip_features(tmp_path):
    torch.manual_seed(0)
    reference = open_clip_twin("clip-vit-tiny").eval()
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    ours = climp.create_model("clip-vit-tiny", pretrained=tmp_path / "open_clip_pytorch_model.bin").eval()
    images = torch.randn(2, 3, 64, 64)
    texts = ["a red star at the top left", "two blue circles"]
    ids_ours = climp.get_tokenizer("clip-vit-tiny")(texts)
    ids_ref = open_clip.get_tokenizer("ViT-B-16")(texts)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(ids_ours), reference.encode_text(ids_ref), rtol=0, atol=1e-5)
    assert ours.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_image_tower_from_vmamba_imagenet_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = climp.create_model("climp-tiny").visual.eval()
    # An ImageNet checkpoint has no CLIP pooling head (stage_norms of the pyramid pool).
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("head.", "norm.", "stage_norms."))}
    state.update({"classifier.norm." + k[len("norm."):]: v for k, v in source.state_dict().items() if k.startswith("norm.")})
    state["classifier.head.weight"] = torch.randn(1000, source.norm.weight.shape[0])
    state["classifier.head.bias"] = torch.zeros(1000)
    torch.save({"model": state}, tmp_path / "vssm_tiny.pth")
    model = climp.create_model("climp-tiny", image_pretrained=tmp_path / "vssm_tiny.pth").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.visual.forward_features(images), source.forward_features(images))
    state.pop("patch_embed.0.weight")
    torch.save({"model": state}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): patch_embed.0.weight"):
        climp.create_model("climp-tiny", image_pretrained=tmp_path / "broken.pth")


def test_mamba2_text_tower_from_transformers_language_model(tmp_path):
    from transformers import Mamba2Config as HFMamba2Config
    from transformers import Mamba2ForCausalLM

    torch.manual_seed(0)
    hf = Mamba2ForCausalLM(HFMamba2Config(vocab_size=40, hidden_size=32, num_hidden_layers=2, state_size=8,
                                          num_heads=4, head_dim=16, n_groups=1, expand=2, chunk_size=8)).eval()
    hf.save_pretrained(tmp_path)
    write_word_tokenizer(tmp_path, ["a", "red", "star", "blue", "circle"])
    model = climp.create_model("climp-tiny", text_cfg={"type": "mamba2", "headdim": 16, "d_state": 8},
                               text_pretrained=tmp_path).eval()
    assert type(model.text).__name__ == "Mamba2TextTower"
    ids = climp.get_tokenizer(model)(["a red star blue circle a red", "blue"])
    with torch.no_grad():
        torch.testing.assert_close(model.text.backbone(ids), hf.backbone(ids).last_hidden_state, rtol=0, atol=1e-4)
    short = model.encode_text(ids[1:, :2])
    torch.testing.assert_close(model.encode_text(ids)[1:], short, rtol=0, atol=1e-5)  # padding changes nothing
