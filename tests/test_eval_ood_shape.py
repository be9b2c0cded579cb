import pytest
import torch
from PIL import Image

from climp.eval.ood_detection import max_softmax_probability, ood_metrics
from climp.eval.shape_bias import CueConflictFolder, parse_cue_conflict_name, shape_bias


def test_ood_metrics_use_negative_msp_with_ood_as_positive():
    in_msp = torch.tensor([0.9, 0.8, 0.95, 0.4])
    ood_msp = torch.tensor([0.3, 0.5, 0.85])
    m = ood_metrics(in_msp, ood_msp)
    # pairs (ood, in) where ood has lower MSP: 0.3 < all 4; 0.5 < 3; 0.85 < 2 -> 9 / 12
    assert m["auroc"] == pytest.approx(9 / 12)
    # ranking by -MSP: .3(o) .4(i) .5(o) .8(i) .85(o) .9 .95 -> AP = (1/3)(1 + 2/3 + 3/5)
    assert m["aupr"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_msp():
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    assert torch.allclose(max_softmax_probability(logits), torch.tensor([0.5, 1 / (1 + torch.exp(torch.tensor(-10.0)))]))


def test_shape_bias_counts_only_conflicting_images():
    preds = torch.tensor([0, 1, 2, 0, 3])
    shape = torch.tensor([0, 0, 2, 1, 3])
    texture = torch.tensor([1, 1, 0, 2, 3])  # last image is not a conflict
    r = shape_bias(preds, shape, texture)
    assert r["num_conflict_images"] == 4
    assert r["shape_bias"] == pytest.approx(2 / 3)  # shape hits: 0, 2; texture hit: 1


def test_cue_conflict_folder(tmp_path):
    assert parse_cue_conflict_name("airplane1-bicycle2.png") == ("airplane", "bicycle")
    with pytest.raises(ValueError, match="shape1-texture2"):
        parse_cue_conflict_name("airplane.png")
    for rel in ["airplane/airplane1-cat3.png", "cat/cat2-airplane1.png"]:
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    folder = CueConflictFolder(tmp_path)
    assert folder.classnames == ["airplane", "cat"]
    assert [s[1:] for s in folder.samples] == [(0, 1), (1, 0)]
    assert folder[0][0].size == (8, 8)
