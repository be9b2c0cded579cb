"""CLIMP's NoCaps retrieval protocol on a COCO-style caption file, with known recalls."""
import argparse
import json

import pytest
import torch
from PIL import Image

from climp.eval import command, evaluate
from climp.eval.datasets import CaptionDataset
from eval_fakes import ColourOracle, WordTokenizer

COLOURS = {"red": (230, 50, 50), "green": (50, 230, 50), "blue": (50, 50, 230)}


class MixedCaptionOracle(ColourOracle):
    """ColourOracle whose "square" captions embed as 0.6 red + 0.8 blue: close to blue, not a tie."""

    table = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0, 0.8]])

    def encode_text(self, ids, normalize=False):
        return self.table[ids[:, 0]]


class MixedTokenizer(WordTokenizer):
    def __call__(self, texts):
        return torch.tensor([[3] if "square" in t else [next(i for i, w in enumerate(self.words) if w in t)]
                             for t in texts])


@pytest.fixture
def nocaps_file(tmp_path):
    """Three one-colour images, two captions each; one caption of the red image says blue."""
    images, annotations = [], []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (40 + 10 * i, 30), rgb).save(tmp_path / f"{name}.png")
        images.append({"id": 100 + i, "file_name": f"{name}.png", "open_images_id": f"x{i}"})
        second = "a blue square" if name == "red" else f"the {name} one"
        annotations += [{"id": 2 * i, "image_id": 100 + i, "caption": f"a {name} image"},
                        {"id": 2 * i + 1, "image_id": 100 + i, "caption": second}]
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def test_nocaps_recalls_on_a_case_with_known_answers(nocaps_file):
    data = CaptionDataset(nocaps_file)
    assert [(f, len(c)) for f, c in data.items] == [("red.png", 2), ("green.png", 2), ("blue.png", 2)]
    r = evaluate(MixedCaptionOracle(), MixedTokenizer(), None, ["nocaps"], {"nocaps_file": str(nocaps_file),
                                                                        "resolution": 8})
    m = r["nocaps"][str(nocaps_file)]
    # 5 of 6 captions find their image first; "a blue square" finds the blue image first
    assert m["image_retrieval_R@1"] == pytest.approx(5 / 6)
    assert m["image_retrieval_R@5"] == m["image_retrieval_R@10"] == 1.0
    # every image ranks a caption of its own first (the red image: "a red image" 1 > "a blue square" 0.6)
    assert m["text_retrieval_R@1"] == 1.0
    assert (m["num_images"], m["num_captions"]) == (3, 6)


def test_nocaps_needs_its_file_and_well_formed_annotations(tmp_path, nocaps_file):
    with pytest.raises(ValueError, match="nocaps_file"):
        evaluate(ColourOracle(), WordTokenizer(), None, ["nocaps"], {"resolution": 8})
    data = json.loads(nocaps_file.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 101]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"green\.png \(id 101\) has no captions"):
        CaptionDataset(bad)


def test_climp_eval_runs_the_nocaps_task(tmp_path, nocaps_file):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "clip-vit-tiny", "--tasks", "nocaps", "--nocaps-file", str(nocaps_file),
                              "--out", str(tmp_path / "out"), "--batch-size", "4"])
    assert command.run(args) == 0
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["clip-vit-tiny"]["nocaps"]
    assert set(metrics[str(nocaps_file)]) >= {"image_retrieval_R@1", "text_retrieval_R@10"}
