"""Caption-format shifts (text-side robustness) and the caption normalisation of our own Mamba
text towers: the rewrites are exact no-ops for a normalising tokenizer and not for a plain one."""
import pytest
import torch
import torch.nn as nn

import climp
from climp.data import synthetic
from climp.eval import evaluate
from climp.eval.caption_shifts import CAPTION_SHIFTS, evaluate_caption_shifts, shift_caption
from climp.eval.features import image_pipeline
from climp.tokenizer import ClipBpeTokenizer, normalize_caption


class LastTokenClip(nn.Module):
    """Text feature = embedding of the last non-pad token (as last-token pooling reads the state
    after the final token); image feature = pooled pixels."""

    def __init__(self, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(49408, dim)
        self.visual = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images, normalize=False):
        return self.visual(images)

    def encode_text(self, ids, normalize=False):
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        last = torch.where(ids != 0, positions, -1).amax(1)
        before_eot = (last - 1).clamp(min=0)  # the token the end-of-text state follows
        return self.embed(ids[torch.arange(len(ids)), before_eot])


def test_shifts_rewrite_only_the_format():
    text = "A red circle on the left."
    assert shift_caption("no_full_stop", text) == "A red circle on the left"
    assert shift_caption("full_stop", "a b") == "a b."
    assert shift_caption("exclamation", text) == "A red circle on the left!"
    assert shift_caption("space_full_stop", text) == "A red circle on the left ."
    assert shift_caption("upper_case", text) == text.upper()
    assert shift_caption("extra_spaces", text).split() == text.split()
    with pytest.raises(ValueError, match="unknown caption shift"):
        shift_caption("emoji", text)


def test_normalize_caption():
    assert normalize_caption("  A Red  circle on the LEFT.  ") == "a red circle on the left"
    assert normalize_caption("a red circle !?") == "a red circle"
    assert normalize_caption("3.5 cm, wide") == "3.5 cm, wide"  # inner punctuation stays
    assert normalize_caption("...") == "..."  # nothing left: kept as written


def test_normalising_tokenizer_makes_every_shift_a_no_op():
    plain, norm = ClipBpeTokenizer(), ClipBpeTokenizer(normalize=True)
    text = "A blue square above a green star."
    variants = [shift_caption(name, text) for name in CAPTION_SHIFTS]
    assert len({tuple(norm.encode(v)) for v in variants}) == 1
    assert len({tuple(plain.encode(v)) for v in variants}) > 1  # BPE lower-cases, but keeps punctuation
    assert norm.num_tokens(text) == len(norm.encode(text))


def test_model_configs_choose_normalisation():
    assert climp.get_tokenizer("climp-tiny").normalize and climp.get_tokenizer("climp-tiny-paper").normalize
    assert not climp.get_tokenizer("clip-vit-tiny").normalize  # the baseline keeps CLIP's own rules


def test_caption_shift_evaluation_measures_the_last_token_hinge():
    data = synthetic.retrieval_set("test", 12, 16, 0, captions_per_image=2)
    model = LastTokenClip()
    plain = evaluate_caption_shifts(model, ClipBpeTokenizer(), data, image_pipeline(), batch_size=12)
    norm = evaluate_caption_shifts(model, ClipBpeTokenizer(normalize=True), data, image_pipeline(), batch_size=12)
    assert plain["num_captions"] == 24 and set(plain["shifts"]) == set(CAPTION_SHIFTS)
    assert plain["shifts"]["original"]["cosine_min"] == pytest.approx(1.0)
    assert plain["shifts"]["no_full_stop"]["cosine_min"] == pytest.approx(1.0)  # short captions have no "."
    assert plain["shifts"]["full_stop"]["cosine_mean"] < 0.9  # the feature moved to another token
    for row in norm["shifts"].values():
        assert row["cosine_min"] == pytest.approx(1.0)
        assert row["text_to_image_R@1"] == norm["shifts"]["original"]["text_to_image_R@1"]
        assert row["text_to_image_R@1_vs_original"] == pytest.approx(1.0)


def test_caption_shifts_task_in_the_runner():
    r = evaluate(LastTokenClip(), ClipBpeTokenizer(), None, ["caption_shifts"],
                 dict(num_samples=6, batch_size=6, resolution=16, captions_per_image=2))
    assert set(r["caption_shifts"]["embedded/short"]["shifts"]) == set(CAPTION_SHIFTS)
