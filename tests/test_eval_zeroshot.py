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


def _colour_folders(root, names):
    for name, rgb in zip(names, [(230, 40, 40), (40, 230, 40), (40, 40, 230)]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), rgb).save(root / name / f"{i}.png")


def test_image_folder_classnames_matched_by_name(tmp_path):
    root = tmp_path / "colours"
    _colour_folders(root, ["Red", "green", "dark_blue"])  # sorted: Red, dark_blue, green
    (root / "classnames.json").write_text(json.dumps({"colours": ["red", "green", "dark blue"]}))
    data = load_classification_set("colours", tmp_path)
    assert data.classnames == ["red", "dark blue", "green"]  # by name, in folder order
    oracle = ColourOracle()
    r = evaluate_zero_shot(oracle, WordTokenizer(), data, image_pipeline(), batch_size=4)
    assert r["top1"] == 1.0  # the oracle reads colour words, so each folder must get its own name
    (root / "classnames.json").write_text(json.dumps(["red", "green", "teal"]))
    with pytest.raises(ValueError, match=r"never by position.*mapping"):
        load_classification_set("colours", tmp_path)


def test_image_folder_explicit_mapping(tmp_path):
    root = tmp_path / "colours"
    _colour_folders(root, ["c0", "c1", "c2"])
    (root / "classnames.json").write_text(json.dumps({"c2": "blue", "c0": "red", "c1": "green"}))
    data = load_classification_set("colours", tmp_path)
    assert data.classnames == ["red", "green", "blue"]
    r = evaluate_zero_shot(ColourOracle(), WordTokenizer(), data, image_pipeline(), batch_size=4)
    assert r["top1"] == 1.0
    (root / "classnames.json").write_text(json.dumps({"c0": "red"}))
    with pytest.raises(ValueError, match=r"no class name for folder\(s\) \['c1', 'c2'\]"):
        load_classification_set("colours", tmp_path)


def test_numeric_class_folders_not_mislabelled(tmp_path):
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = tmp_path / "digits" / "test"
    for w in words:
        (root / w).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / w / "x.png")
    (root / "classnames.json").write_text(json.dumps(words))  # numeric order, folders sort otherwise
    data = load_classification_set("digits", tmp_path)
    for image_path, label in data.dataset.samples:
        assert data.classnames[label] == image_path.split("/")[-2]


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
    (tmp_path / "caps.tsv").write_text("filepath\ttitle\na.png\tone\n")  # the training layout
    assert CaptionDataset(tmp_path / "caps.tsv")[0][1] == ["one"]
    (tmp_path / "bad.csv").write_text("picture,words\na.png,x\n")
    with pytest.raises(ValueError, match="image column"):
        CaptionDataset(tmp_path / "bad.csv")
