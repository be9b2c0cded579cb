"""Loading CLIMP's and CLIP-Mamba's checkpoints as published, with their preprocessing and
tokenization, checked against files written in the official layouts from small random weights."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from safetensors.torch import save_file

import climp
from climp.models import get_model_config
from climp.models.released import CLIP_MAMBA, read_released, infer_model_name
from climp.models.vmamba import VMambaConfig, VMambaVisionTower

from released_layouts import (
    clip_mamba_state,
    clip_text_shapes,
    last_one,
    official_clip_text_features,
    official_clip_text_ids,
    official_vmamba_features,
    official_vmamba_shapes,
    random_tensor,
    save_clip_mamba_checkpoint,
)

SMALL_VISION = {"image_size": 64, "depths": [1, 1, 1, 1], "dims": 8}
EMBED = 24
CAPTIONS = ["a red star above a blue circle", "two small green squares",
            " ".join(["a long caption that runs past the context length"] * 12)]


def small_t220(**extra):
    return dict(embed_dim=EMBED, vision_cfg=SMALL_VISION, text_cfg={"width": 32, "heads": 2, "layers": 2}, **extra)


@pytest.fixture(scope="module")
def clip_mamba_file(tmp_path_factory):
    state = clip_mamba_state(official_vmamba_shapes([1, 1, 1, 1], 8, gated=True), 64,
                             clip_text_shapes(32, 2, EMBED), EMBED)
    path = tmp_path_factory.mktemp("clip_mamba") / "checkpoint_best.pt"
    save_clip_mamba_checkpoint(state, path, "CLIP_VMamba_T220")
    return path, state


def hand_placed_image_features(state, prefix, projection, images, gated=True, bias=None, check_official=True):
    """Our VMamba tower with the official vision weights copied in by name, times the projection;
    checked against VMamba's own forward written out from its code."""
    cfg = VMambaConfig.from_dict({**SMALL_VISION, "forward_type": "v2" if gated else "v05_noz", "conv_bias": False,
                                  "drop_path_rate": 0.0})
    tower = VMambaVisionTower(cfg, EMBED).eval()
    own = {k[len(prefix):].replace("classifier.norm.", "norm."): v for k, v in state.items() if k.startswith(prefix)}
    result = tower.load_state_dict(own, strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["head.bias", "head.weight"]
    with torch.no_grad():
        pooled = tower.forward_features(images)
    if check_official:
        official = official_vmamba_features(state, prefix, images, SMALL_VISION["depths"], gated)
        torch.testing.assert_close(pooled, official, rtol=1e-4, atol=1e-5)
    return F.linear(pooled, projection, bias)


def test_clip_mamba_checkpoint_loads_ema_weights_by_default(clip_mamba_file):
    path, state = clip_mamba_file
    model = climp.create_model("clip-mamba-vmamba-t220", pretrained=path, **small_t220()).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.encode_image(images)
    want = hand_placed_image_features(state, "visual_e.", state["image_projection_e"].T, images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    online = hand_placed_image_features(state, "visual.", state["image_projection"].T, images, check_official=False)
    assert not torch.allclose(got, online, atol=1e-3)  # the twins differ, so the choice is visible

    bpe = SimpleTokenizer()
    tokenizer = climp.get_tokenizer(model)
    ids = tokenizer(CAPTIONS)
    official_ids = official_clip_text_ids(bpe, CAPTIONS)
    assert ids.shape[1] == 77 and torch.equal(ids, official_ids[:, : ids.shape[1]])
    assert int(ids[2, -1]) != bpe.eot_token_id  # tokens[:77]: the long caption loses its end token
    with torch.no_grad():
        got_text = model.encode_text(ids)
    want_text = official_clip_text_features(state, official_ids, "_e", heads=2, layers=2)
    torch.testing.assert_close(got_text, want_text, rtol=1e-5, atol=1e-5)
    assert model.logit_scale.item() == pytest.approx(float(state["logit_scale"]))


def test_clip_mamba_online_weights_on_request(clip_mamba_file):
    path, state = clip_mamba_file
    model = climp.create_model("clip-mamba-vmamba-t220", pretrained=path, pretrained_weights="online",
                               **small_t220()).eval()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.encode_image(images)
        got_text = model.encode_text(climp.get_tokenizer(model)(CAPTIONS[:1]))
    torch.testing.assert_close(got, hand_placed_image_features(state, "visual.", state["image_projection"].T, images),
                               rtol=1e-5, atol=1e-5)
    want_text = official_clip_text_features(state, official_clip_text_ids(SimpleTokenizer(), CAPTIONS[:1]), "",
                                            heads=2, layers=2)
    torch.testing.assert_close(got_text, want_text, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pretrained_weights"):
        climp.create_model("clip-mamba-vmamba-t220", pretrained=path, pretrained_weights="best", **small_t220())


def test_clip_mamba_args_namespace_is_read_and_names_the_model(clip_mamba_file):
    path, _ = clip_mamba_file
    state, fmt, meta = read_released(path.parent)  # the directory finds checkpoint_best.pt
    assert fmt == CLIP_MAMBA and meta["args"]["model"] == "CLIP_VMamba_T220" and meta["epoch"] == 25
    assert not any(k.startswith("module.") for k in state)
    assert infer_model_name(state, fmt, meta) == "clip-mamba-vmamba-t220"


def test_json_config_derived_from_a_named_config_loads_the_file(clip_mamba_file, tmp_path):
    path, _ = clip_mamba_file
    cfg = get_model_config("clip-mamba-vmamba-t220")
    cfg["embed_dim"] = EMBED
    cfg["vision_cfg"].update(SMALL_VISION)
    cfg["text_cfg"].update(width=32, heads=2, layers=2)
    (tmp_path / "small.json").write_text(json.dumps(cfg))
    a = climp.create_model(tmp_path / "small.json", pretrained=path).eval()
    b = climp.create_model("clip-mamba-vmamba-t220", pretrained=path, **small_t220()).eval()
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


def test_mismatches_name_the_keys(clip_mamba_file, tmp_path):
    path, state = clip_mamba_file
    # the ungated VMamba-B/S layout has half-width in_proj: the gated T220 file does not fit it
    with pytest.raises(ValueError, match=r"visual\.layers\.0\.blocks\.0\.op\.in_proj\.weight"):
        climp.create_model("clip-mamba-vmamba-b", pretrained=path, **small_t220())
    extra = dict(state, stray_buffer=torch.zeros(1))
    extra.pop("ln_final_e.bias")
    save_clip_mamba_checkpoint(extra, tmp_path / "checkpoint.pt", "CLIP_VMamba_T220")
    with pytest.raises(ValueError) as err:
        climp.create_model("clip-mamba-vmamba-t220", pretrained=tmp_path / "checkpoint.pt", **small_t220())
    assert "stray_buffer" in str(err.value) and "text.ln_final.bias" in str(err.value)


class Payload:
    """Pickles as a call that creates a file: evidence of code run by unpickling."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(clip_mamba_file, tmp_path):
    _, state = clip_mamba_file
    marker = tmp_path / "ran"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in list(state.items())[:3]},
                "args": Payload(marker)}, bad)
    with pytest.raises(ValueError, match=r"refusing to load .*references io\.open\)"):
        climp.create_model("clip-mamba-vmamba-t220", pretrained=bad, **small_t220())
    assert not marker.exists()


# ----------------------------------------------------------------------------- CLIMP

WORDS = ["a", "red", "star", "above", "blue", "circle", "two", "small", "green", "squares"]


@pytest.fixture(scope="module")
def gpt_neox_like_tokenizer(tmp_path_factory):
    """A tokenizer.json with GPT-NeoX's special tokens (<|endoftext|> 0, <|padding|> 1) and no
    post-processor, so like GPT-NeoX's it adds no special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}, "[UNK]": 12}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path_factory.mktemp("tok")
    tk.save(str(folder / "tokenizer.json"))
    return folder


def climp_release(kind, seed=0):
    """(file state dict, transformers text backbone) of a small CLIMP release of `kind`."""
    from transformers import Mamba2Config, Mamba2Model, MambaConfig, MambaModel

    torch.manual_seed(seed)
    if kind == "climp-mamba1":
        backbone = MambaModel(MambaConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, state_size=4,
                                          expand=2, conv_kernel=4))
    else:
        backbone = Mamba2Model(Mamba2Config(vocab_size=16, hidden_size=32, num_hidden_layers=2, state_size=8,
                                            expand=2, head_dim=16, num_heads=4, n_groups=1, chunk_size=8,
                                            conv_kernel=4))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    width = backbone.config.hidden_size
    state = {"vision_encoder." + k: random_tensor(k, shape, gen)
             for k, shape in official_vmamba_shapes([1, 1, 1, 1], 8, gated=False).items()}
    state.update({"vision_projection.weight": torch.randn(EMBED, 64, generator=gen) / 8,
                  "vision_projection.bias": torch.randn(EMBED, generator=gen),
                  "text_projection.weight": torch.randn(EMBED, width, generator=gen) / width ** 0.5,
                  "text_projection.bias": torch.randn(EMBED, generator=gen),
                  "logit_scale": torch.tensor(3.5)})
    state.update({"text_encoder." + k: v.detach().clone() for k, v in backbone.state_dict().items()})
    return state, backbone.eval()


def small_climp(kind):
    text = {"vocab_size": 16, "d_model": 16, "n_layer": 2, "d_state": 4} if kind == "climp-mamba1" else \
        {"vocab_size": 16, "d_model": 32, "n_layer": 2, "d_state": 8, "headdim": 16, "chunk_size": 8}
    return dict(embed_dim=EMBED, vision_cfg=SMALL_VISION, text_cfg=text)


@pytest.mark.parametrize("kind", ["climp-mamba1", "climp-mamba2"])
def test_climp_release_loads_with_its_tokenization(kind, tmp_path, gpt_neox_like_tokenizer):
    from transformers import PreTrainedTokenizerFast

    state, backbone = climp_release(kind)
    save_file(state, str(tmp_path / "model.safetensors"))
    model = climp.create_model(kind, pretrained=tmp_path, tokenizer=str(gpt_neox_like_tokenizer),
                               **small_climp(kind)).eval()

    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.encode_image(images)
    want = hand_placed_image_features(state, "vision_encoder.", state["vision_projection.weight"], images,
                                      gated=False, bias=state["vision_projection.bias"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    captions = ["a red star above a blue circle", "two small green squares", "star"]
    official_tok = PreTrainedTokenizerFast(tokenizer_file=str(gpt_neox_like_tokenizer / "tokenizer.json"),
                                           pad_token="<|padding|>", eos_token="<|endoftext|>")
    inputs = official_tok(captions, max_length=max(len(t) for t in captions), padding="max_length",
                          truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])[0]
        pooled = hidden[torch.arange(len(captions)), last_one(inputs["attention_mask"])]
        want_text = F.linear(pooled, state["text_projection.weight"], state["text_projection.bias"])
        ids = climp.get_tokenizer(model)(captions)
        got_text = model.encode_text(ids)
    lengths = inputs["attention_mask"].sum(1)
    for row, n in enumerate(lengths.tolist()):  # the same ids per caption, no end token appended
        assert ids[row, :n].tolist() == inputs["input_ids"][row, :n].tolist()
        assert (ids[row, n:] == 1).all()
    torch.testing.assert_close(got_text, want_text, rtol=1e-4, atol=1e-5)


def test_climp_release_mismatch_names_keys(tmp_path):
    state, _ = climp_release("climp-mamba1")
    save_file(state, str(tmp_path / "model.safetensors"))
    # a text tower without the release's projection bias
    no_bias = small_climp("climp-mamba1")
    no_bias["text_cfg"]["proj_bias"] = False
    with pytest.raises(ValueError, match=r"text\.proj\.bias"):
        climp.create_model("climp-mamba1", pretrained=tmp_path, **no_bias)
    # a Mamba-1 release into the Mamba-2 model
    with pytest.raises(ValueError, match=r"text\.backbone\.layers\.0\.mixer\.(dt_bias|x_proj\.weight)"):
        climp.create_model("climp-mamba2", pretrained=tmp_path, **small_climp("climp-mamba2"))
    assert infer_model_name(state, "climp-release", {}) == "climp-mamba1"
    assert infer_model_name(climp_release("climp-mamba2")[0], "climp-release", {}) == "climp-mamba2"


def test_climp_tokenizer_needs_the_language_models_tokenizer_json():
    with pytest.raises(ValueError, match="state-spaces/mamba-1.4b-hf"):
        climp.get_tokenizer("climp-mamba1")


# ----------------------------------------------------------------------------- preprocessing


def official_transform(name):
    from torchvision import transforms as T

    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if name.startswith("climp-"):  # CLIMP's data/utils.py transform_image(224)
        return T.Compose([T.Resize((224, 224)), T.ToTensor(), normalize])
    return T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), normalize])  # CLIP-Mamba's val_transform


@pytest.mark.parametrize("name", ["climp-mamba1", "climp-mamba2", "clip-mamba-vmamba-b", "clip-mamba-vmamba-s",
                                  "clip-mamba-vmamba-t220", "clip-mamba-vit-b-16"])
def test_preprocessing_equals_the_official_transform(name):
    small = small_climp(name) if name.startswith("climp-") else {"embed_dim": EMBED}
    if name == "clip-mamba-vit-b-16":
        small["vision_cfg"] = {"width": 64, "layers": 1}
    elif not name.startswith("climp-"):
        small["vision_cfg"] = {"depths": [1, 1, 1, 1], "dims": 8}
    small["vision_cfg"] = {**small.get("vision_cfg", {}), "image_size": 224}
    small["text_cfg"] = {**small.get("text_cfg", {}), **({} if name.startswith("climp-") else
                                                          {"width": 32, "heads": 2, "layers": 1})}
    _, _, preprocess = climp.create_model_and_transforms(name, **small)
    gen = torch.Generator().manual_seed(0)
    for size in [(300, 200), (180, 410)]:
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy()
        image = Image.fromarray(pixels)
        torch.testing.assert_close(preprocess(image), official_transform(name)(image), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- convert


def test_convert_clip_mamba_writes_our_layout(clip_mamba_file, tmp_path, capsys):
    from climp.cli import main

    path, _ = clip_mamba_file
    cfg = get_model_config("clip-mamba-vmamba-t220")
    cfg["embed_dim"] = EMBED
    cfg["vision_cfg"].update(SMALL_VISION)
    cfg["text_cfg"].update(width=32, heads=2, layers=2)
    (tmp_path / "small.json").write_text(json.dumps(cfg))
    assert main(["convert", str(path), str(tmp_path / "out"), "--model", str(tmp_path / "small.json")]) == 0
    sidecar = json.loads((tmp_path / "out" / "config.json").read_text())
    assert sidecar["converted_from"]["weights"] == "ema" and sidecar["converted_from"]["args"]["model"] == \
        "CLIP_VMamba_T220"
    converted = climp.load_checkpoint(tmp_path / "out").eval()
    direct = climp.create_model("clip-mamba-vmamba-t220", pretrained=path, **small_t220()).eval()
    images = torch.randn(1, 3, 64, 64)
    ids = climp.get_tokenizer(tmp_path / "out")(CAPTIONS)
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_image(images), direct.encode_image(images), rtol=0, atol=0)
        torch.testing.assert_close(converted.encode_text(ids), direct.encode_text(ids), rtol=0, atol=0)
    # the full-size model inferred from args.model does not fit the small file: the keys are named
    assert main(["convert", str(path), str(tmp_path / "out2")]) == 2
    assert re.search(r"(?s)climp: error: .*for clip-mamba-vmamba-t220 does not match.*"
                     r"text\.ln_final\.weight: \(32,\) vs model \(512,\)", capsys.readouterr().err)


def test_convert_climp_release_copies_the_tokenizer(tmp_path, gpt_neox_like_tokenizer):
    from climp.models.convert import convert_released

    state, _ = climp_release("climp-mamba2")
    save_file(state, str(tmp_path / "model.safetensors"))
    out = convert_released(tmp_path / "model.safetensors", tmp_path / "out", tokenizer=gpt_neox_like_tokenizer,
                           **small_climp("climp-mamba2"))
    assert json.loads((out / "config.json").read_text())["model_name"] == "climp-mamba2"
    model = climp.create_model("climp-mamba2", pretrained=out).eval()
    direct = climp.create_model("climp-mamba2", pretrained=tmp_path, **small_climp("climp-mamba2")).eval()
    ids = climp.get_tokenizer(out)(["two small green squares"])
    assert ids.tolist() == [[8, 9, 10, 11]]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), direct.encode_text(ids), rtol=0, atol=0)


# ----------------------------------------------------------------------------- A-CLIP ViT-B/16 baseline


def aclip_state(seed=0):
    """An A-CLIP ViT checkpoint's state dict: timm ViTs `visual` / `visual_ema`, text twins
    `transformer_e`, `*_projection_e`, shared embeddings, and the self-supervised heads."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    towers = [VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)
              for _ in range(2)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tower in towers:
            for p in tower.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    state = {}
    for name, tower in zip(("visual", "visual_ema"), towers):
        state.update({f"{name}.{k}": v.detach().clone() for k, v in tower.state_dict().items()})
    for key, shape in clip_text_shapes(32, 2, EMBED).items():
        module, _, rest = key.partition(".")
        value = random_tensor(key, shape, gen)
        state[key] = value
        if module in ("transformer", "text_projection"):
            state[".".join(filter(None, [module + "_e", rest]))] = random_tensor(key, shape, gen)
    for name in ("image_projection", "image_projection_e"):
        state[name] = torch.randn(32, EMBED, generator=gen) / 32 ** 0.5
    state.update({"image_mlp.layer1.weight": torch.randn(16, 32), "image_mlp.bn1.running_mean": torch.zeros(16),
                  "im_proj_byol.0.weight": torch.randn(16, 32), "im_pred_byol.0.weight": torch.randn(16, 8),
                  "im_proj_byol_e.0.weight": torch.randn(16, 32), "logit_scale": torch.tensor(4.0)})
    return state, towers


def test_aclip_vit_baseline_loads_with_timm_features(tmp_path):
    state, (online, ema) = aclip_state()
    save_clip_mamba_checkpoint(state, tmp_path / "checkpoint_best.pt", "ACLIP_VITB16")
    small = dict(embed_dim=EMBED, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                              "head_width": 16},
                 text_cfg={"width": 32, "heads": 2, "layers": 2})
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = official_clip_text_ids(SimpleTokenizer(), CAPTIONS)
    shared = {k: v for k, v in state.items() if k.split(".")[0] in ("token_embedding", "positional_embedding",
                                                                   "ln_final")}
    for weights, tower, suffix in (("ema", ema, "_e"), ("online", online, "")):
        model = climp.create_model("clip-mamba-vit-b-16", pretrained=tmp_path, pretrained_weights=weights,
                                   **small).eval()
        with torch.no_grad():
            want = tower.eval().forward_features(images)[:, 0] @ state["image_projection" + suffix]
            torch.testing.assert_close(model.encode_image(images), want, rtol=1e-5, atol=1e-5)
            view = dict(shared, text_projection=state["text_projection" + suffix])
            view.update({"transformer." + k.partition(".")[2]: v for k, v in state.items()
                         if k.startswith(f"transformer{suffix}.")})
            want_text = official_clip_text_features(view, ids, "", heads=2, layers=2)
            got_text = model.encode_text(climp.get_tokenizer(model)(CAPTIONS))
            torch.testing.assert_close(got_text, want_text, rtol=1e-5, atol=1e-5)
    _, fmt, meta = read_released(tmp_path)
    assert infer_model_name({}, fmt, meta) == "clip-mamba-vit-b-16"


# ----------------------------------------------------------------------------- tokenization rules


def test_truncation_rules_and_end_token(gpt_neox_like_tokenizer):
    from climp.tokenizer import ClipBpeTokenizer, HFTokenizer, tokenizer_from_config

    long = CAPTIONS[2]
    keep, cut = ClipBpeTokenizer(77), ClipBpeTokenizer(77, truncate="cut")
    assert keep.encode(long)[-1] == keep.eot_id and cut.encode(long)[-1] != cut.eot_id
    assert keep.encode(long)[:76] == cut.encode(long)[:76] and len(cut.encode(long)) == 77
    assert keep.encode("a red star") == cut.encode("a red star")  # short captions: no difference
    with pytest.raises(ValueError, match="truncate"):
        ClipBpeTokenizer(77, truncate="drop")
    plain = HFTokenizer(gpt_neox_like_tokenizer, append_eot=False)
    assert plain(["a red star", "star"]).tolist() == [[2, 3, 4], [4, 1, 1]]
    assert HFTokenizer(gpt_neox_like_tokenizer)(["star"]).tolist() == [[4, 0]]
    with pytest.raises(ValueError, match="always appends"):
        tokenizer_from_config({"append_eot": False})
    with pytest.raises(ValueError, match="unknown tokenizer_cfg keys"):
        climp.create_model("clip-mamba-vmamba-t220", tokenizer_cfg={"pad_side": "left"}, **small_t220())
    with pytest.raises(ValueError, match="padding_side must be 'right'"):
        climp.create_model("clip-mamba-vmamba-t220", tokenizer_cfg={"padding_side": "left"}, **small_t220())


# ----------------------------------------------------------------------------- full-size shapes


def meta_state(shapes):
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


@pytest.mark.parametrize("name,depths,dim,gated", [("clip-mamba-vmamba-b", [2, 2, 15, 2], 128, False),
                                                   ("clip-mamba-vmamba-s", [2, 2, 15, 2], 96, False),
                                                   ("clip-mamba-vmamba-t220", [2, 2, 4, 2], 96, True)])
def test_named_clip_mamba_models_have_the_released_shapes(name, depths, dim, gated):
    from climp.models.released import to_climp_state_dict
    from climp.models.weights import check_state_dict

    vision = official_vmamba_shapes(depths, dim, gated)
    text = clip_text_shapes(512, 12, 512)
    official = {}
    for suffix in ("", "_e"):
        official.update({f"visual{suffix}.{k}": v for k, v in vision.items()})
        official.update({".".join(filter(None, [k.partition(".")[0] + suffix, k.partition(".")[2]])): v
                         for k, v in text.items()})
        official[f"image_projection{suffix}"] = (dim * 8, 512)
    official["logit_scale"] = ()
    with torch.device("meta"):
        model = climp.create_model(name)
    check_state_dict(model.state_dict(), to_climp_state_dict(meta_state(official), CLIP_MAMBA, "vmamba"))


@pytest.mark.parametrize("name", ["climp-mamba1", "climp-mamba2"])
def test_named_climp_models_have_the_released_shapes(name):
    from transformers import Mamba2Config, Mamba2Model, MambaConfig, MambaModel

    from climp.models.released import CLIMP_RELEASE, to_climp_state_dict
    from climp.models.weights import check_state_dict

    with torch.device("meta"):
        if name == "climp-mamba1":  # state-spaces/mamba-1.4b-hf
            text = MambaModel(MambaConfig(vocab_size=50280, hidden_size=2048, num_hidden_layers=48, state_size=16,
                                          expand=2, conv_kernel=4, time_step_rank=128))
        else:  # AntonV/mamba2-1.3b-hf
            text = Mamba2Model(Mamba2Config(vocab_size=50288, hidden_size=2048, num_hidden_layers=48, state_size=128,
                                            expand=2, head_dim=64, num_heads=64, n_groups=1, conv_kernel=4))
        model = climp.create_model(name)
    official = {"vision_encoder." + k: v for k, v in official_vmamba_shapes([2, 2, 15, 2], 128, False).items()}
    official.update({"vision_projection.weight": (768, 1024), "vision_projection.bias": (768,),
                     "text_projection.weight": (768, 2048), "text_projection.bias": (768,), "logit_scale": ()})
    state = meta_state(official)
    state.update({"text_encoder." + k: v for k, v in text.state_dict().items()})
    check_state_dict(model.state_dict(), to_climp_state_dict(state, CLIMP_RELEASE, "vmamba"))


def test_named_aclip_vit_has_the_released_shapes():
    from timm.models.vision_transformer import VisionTransformer

    from climp.models.released import to_climp_state_dict
    from climp.models.weights import check_state_dict

    with torch.device("meta"):
        towers = [VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)
                  for _ in range(2)]
        model = climp.create_model("clip-mamba-vit-b-16")
    official = {}
    for name, tower in zip(("visual", "visual_ema"), towers):
        official.update({f"{name}.{k}": v for k, v in tower.state_dict().items()})
    text = meta_state(clip_text_shapes(512, 12, 512))
    official.update(text)
    official.update({k.replace("transformer.", "transformer_e.", 1): v for k, v in text.items()
                     if k.startswith("transformer.")})
    official.update(meta_state({"text_projection_e": (512, 512), "image_projection": (768, 512),
                                "image_projection_e": (768, 512), "logit_scale": ()}))
    check_state_dict(model.state_dict(), to_climp_state_dict(official, CLIP_MAMBA, "vit"))


def test_clip_mamba_simba_checkpoint_loads_ema_tower_with_its_own_buffers(tmp_path):
    """A CLIP-Mamba SiMBA file (official names: SiMBA's keys under visual/visual_e, the stem's
    BatchNorm buffers included) loads into clip-mamba-simba-s; features equal the EMA tower
    placed by hand with the projection P applied as x @ P."""
    from climp.models.simba import SiMBAConfig, SiMBAVisionTower

    vision = dict(stem_hidden_dim=8, embed_dims=[8, 16, 16, 24], mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 1, 1],
                  d_state=4, drop_path_rate=0.0, image_size=64)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in SiMBAVisionTower(SiMBAConfig.from_dict(vision), EMBED)
                  .state_dict().items() if k != "head.weight"}
    state = clip_mamba_state(shapes, 24, clip_text_shapes(32, 2, EMBED), EMBED)
    for key in [k for k in state if k.endswith("running_var")]:
        state[key] = state[key].abs() + 0.5  # a variance is positive
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        state[key] = torch.tensor(7)
    path = tmp_path / "checkpoint_best.pt"
    save_clip_mamba_checkpoint(state, path, "CLIP_Simba_S")
    model = climp.create_model("clip-mamba-simba-s", pretrained=path, embed_dim=EMBED, vision_cfg=vision,
                               text_cfg={"width": 32, "heads": 2, "layers": 2}).eval()

    tower = SiMBAVisionTower(SiMBAConfig.from_dict(vision), EMBED).eval()
    own = {k[len("visual_e."):]: v for k, v in state.items() if k.startswith("visual_e.")}
    tower.load_state_dict({**own, "head.weight": state["image_projection_e"].T})
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = model.encode_image(images), tower(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bn = "patch_embed1.conv.1.running_var"
    torch.testing.assert_close(model.visual.state_dict()[bn], state["visual_e." + bn])
    assert not torch.allclose(model.visual.state_dict()[bn], state["visual." + bn])
