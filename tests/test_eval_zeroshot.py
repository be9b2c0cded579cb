import json

import pytest
import torch
from PIL import Image

from climp.eval.datasets import CaptionDataset, load_classification_set
from climp.eval.features import class_embeddings, image_pipeline
from climp.eval.zeroshot import evaluate_zero_shot
from eval_fakes import ColourOracle, TinyClip, WordTokenizer, colour_images


class Task:
    name = "colours"
    classnames = ["red", "green", "blue"]
    templates = ["a {c} thing", lambda c: f"the colour {c}"]

    def __init__(self, labels):
        self.dataset = list(zip(colour_images(labels), labels))


def test_oracle_gets_every_image_right():
    labels = [0, 1, 2, 2, 1, 0, 2]
    r = evaluate_zero_shot(ColourOracle(), WordTokenizer(), Task(labels), image_pipeline(), batch_size=3)
    assert r["top1"] == 1.0 and r["mean_per_class_recall"] == 1.0 and r["num_samples"] == 7


def test_class_embeddings_average_normalised_prompts_then_renormalise():
    model, tok = TinyClip(), lambda texts: torch.tensor([[len(t) % 50 + 1, 7] for t in texts])
    templates = ["a {c}", "the big {c} here"]
    w = class_embeddings(model, tok, ["x", "yy"], templates)
    for i, c in enumerate(["x", "yy"]):
        per = torch.nn.functional.normalize(model.encode_text(tok([t.format(c=c) for t in templates])), dim=-1)
        assert torch.allclose(w[i], torch.nn.functional.normalize(per.mean(0), dim=0), atol=1e-6)


def test_image_folder_with_classnames_json(tmp_path):
    root = tmp_path / "colours"
    for name, rgb in [("c_red", (230, 40, 40)), ("c_green", (40, 230, 40)), ("c_blue", (40, 40, 230))]:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), rgb).save(root / name / f"{i}.png")
    (root / "classnames.json").write_text(json.dumps({"colours": ["blue", "green", "red"]}))
    data = load_classification_set("colours", tmp_path)
    assert data.classnames == ["blue", "green", "red"]  # folders sort c_blue, c_green, c_red
    r = evaluate_zero_shot(ColourOracle(), WordTokenizer(), data, image_pipeline(), batch_size=4)
    assert r["top1"] == 1.0  # the oracle reads colour words, so the names must follow folder order
    (root / "classnames.json").write_text(json.dumps(["red", "green", "blue"]))  # wrong order
    r = evaluate_zero_shot(ColourOracle(), WordTokenizer(), load_classification_set("colours", tmp_path),
                           image_pipeline(), batch_size=4)
    assert r["top1"] == pytest.approx(1 / 3)  # only green is still right
    (root / "classnames.json").write_text(json.dumps(["only one"]))
    with pytest.raises(ValueError, match="class names"):
        load_classification_set("colours", tmp_path)


def test_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_classification_set("cifar10", tmp_path / "absent")


def test_clip_benchmark_builder_without_download(tmp_path):
    data = load_classification_set("dummy", tmp_path)  # CLIP_benchmark's built-in dummy set
    assert data.classnames == ["blank image", "noisy image"] and data.templates


def test_caption_files_json_and_csv(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "caps.json").write_text(json.dumps([{"image": "a.png", "caption": "one"},
                                                     {"image": "a.png", "captions": ["two", "three"]}]))
    (tmp_path / "caps.csv").write_text("image,caption\na.png,one\na.png,two\n")
    assert CaptionDataset(tmp_path / "caps.json")[0][1] == ["one", "two", "three"]
    assert CaptionDataset(tmp_path / "caps.csv")[0][1] == ["one", "two"]
    (tmp_path / "bad.csv").write_text("img,text\na.png,x\n")
    with pytest.raises(ValueError, match="columns"):
        CaptionDataset(tmp_path / "bad.csv")
