"""Tokenizer (dynamic padding, truncation keeping EOT) and transforms at any resolution."""

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from climp.tokenizer import ClipBpeTokenizer, HFTokenizer
from climp.transforms import CLIP_MEAN, CLIP_STD, image_transform


def test_pads_to_longest_and_matches_open_clip_ids():
    tok = ClipBpeTokenizer()
    texts = ["a red star", "two small blue circles at the top left of a striped background"]
    ids = tok(texts)
    reference = SimpleTokenizer()(texts, context_length=77)
    longest = int((reference != 0).sum(1).max())
    assert ids.shape == (2, longest)
    assert torch.equal(ids, reference[:, :longest])
    assert ids[0, -1] == 0 and ids[1, -1] == tok.eot_id


def test_long_caption_is_not_truncated_unless_asked():
    text = " ".join(["a large red star to the left of a small blue circle"] * 40)
    assert ClipBpeTokenizer()(text).shape[1] == ClipBpeTokenizer().num_tokens(text) > 400
    short = ClipBpeTokenizer(max_length=77)(text)
    assert short.shape == (1, 77) and short[0, -1] == 49407 and short[0, 0] == 49406


@pytest.mark.parametrize("texts", [[], [""], ["ok", "   "]])
def test_empty_caption_is_an_error(texts):
    with pytest.raises(ValueError, match="empty"):
        ClipBpeTokenizer()(texts)


def test_decode_round_trip():
    tok = ClipBpeTokenizer()
    assert tok.decode(tok("a red star")[0].tolist()) == "a red star"


def test_hf_tokenizer_from_local_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|padding|>": 1, "a": 2, "red": 3, "star": 4, "[UNK]": 5}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path)
    ids = tok(["a red star", "star"])
    assert ids.tolist() == [[2, 3, 4, 0], [4, 0, 1, 1]]
    assert tok.pad_id == 1 and tok.eot_id == 0
    with pytest.raises(FileNotFoundError):
        HFTokenizer(tmp_path / "missing")


@pytest.mark.parametrize("size", [32, 64, (48, 96)])
@pytest.mark.parametrize("is_train", [True, False])
def test_transform_output_shape_and_normalisation(size, is_train):
    image = Image.new("RGB", (100, 80), color=(255, 0, 0))
    out = image_transform(size, is_train=is_train)(image)
    hw = (size, size) if isinstance(size, int) else size
    assert out.shape == (3, *hw) and out.dtype == torch.float32
    expected_red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert out[0].mean().item() == pytest.approx(expected_red, abs=1e-4)
