"""The resolution task on real image files: a caption CSV (retrieval) and an ImageFolder
(zero-shot), each image resized from the file to every side; checked with an oracle model on a
tiny generated dataset, where the answers are known."""
import argparse
import json

import torch
import torch.nn as nn
from PIL import Image

from climp.eval import evaluate
from climp.eval.runner import pixels_at_side
from eval_fakes import ColourOracle

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class SizedColourOracle(ColourOracle):
    """ColourOracle with a real (1x1 conv) image tower, so FLOPs and memory can be measured;
    it records the sides it is given."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Conv2d(3, 3, 1)
        self.sides = []

    def encode_image(self, images, normalize=False):
        self.sides.append(images.shape[-1])
        return super().encode_image(images)


class ColourWords:
    """'red'/'green'/'blue' in a caption -> token 0/1/2; any other caption -> 0."""

    def __call__(self, texts):
        return torch.tensor([[next((i for i, w in enumerate(COLOURS) if w in t), 0)] for t in texts])


def make_files(root):
    """ImageFolder (2 non-square images per colour) and a caption CSV of 3 images."""
    folder = root / "colours"
    rows = ["image,caption"]
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (100 + 20 * k, 80), rgb).save(folder / name / f"{k}.png")
        Image.new("RGB", (90, 70), rgb).save(root / f"{name}.png")
        rows += [f"{name}.png,a {name} square", f"{name}.png,something {name}"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder, root / "captions.csv"


SETTINGS = dict(num_samples=4, batch_size=4, resolution=16, resolution_scales=[1, 2, 4], captions_per_image=2)


def test_resolution_on_a_caption_csv_and_an_image_folder(tmp_path):
    folder, csv = make_files(tmp_path)
    model = SizedColourOracle()
    for data in (csv, folder):
        result = evaluate(model, ColourWords(), None, ["resolution"], {**SETTINGS, "resolution_data": str(data)})
        rows = result["resolution"][str(data)]["sides"]
        # named data alone: the embedded benchmark only when asked (settings.embedded)
        assert set(rows) == {"16", "32", "64"} and "embedded" not in result["resolution"]
        for side, row in rows.items():
            assert row["flops_per_image"] > 0
            if data == csv:
                assert row["image_to_text_R@1"] == row["text_to_image_R@1"] == 1.0
                assert row["image_to_text_R@1_vs_1x"] == 1.0 and "zero_shot_top1" not in row
            else:
                assert row["zero_shot_top1"] == 1.0 and "image_to_text_R@1" not in row
    assert {16, 32, 64} <= set(model.sides)


def test_real_images_are_resized_from_the_file_not_upsampled():
    cells = torch.arange(128)[:, None] // 2 + torch.arange(128)[None, :] // 2
    board = ((cells % 2) * 255).to(torch.uint8)
    image = Image.fromarray(board.numpy()).convert("RGB")
    full = pixels_at_side(128)(image)
    torch.testing.assert_close(full[0], board.float() / 255)  # the file's own pixels at its side
    assert full.std() > 0.45  # a 2-px checkerboard survives; an upsampled 32-px copy would be flat grey
    assert pixels_at_side(32)(image).std() < 0.05
    wide = pixels_at_side(16)(Image.new("RGB", (40, 20), (255, 0, 0)))
    assert wide.shape == (3, 16, 16)


def test_climp_eval_resolution_data_flag(tmp_path):
    from climp.eval import command

    _, csv = make_files(tmp_path)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "clip-vit-tiny", "--tasks", "resolution", "--out", str(tmp_path / "out"),
                              "--num-samples", "4", "--batch-size", "4", "--resolution-scales", "1,2",
                              "--resolution-data", str(csv)])
    assert command.run(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["clip-vit-tiny"]
    assert set(results["resolution"][str(csv)]["sides"]) == {"64", "128"}
    assert (tmp_path / "out" / "resolution.png").stat().st_size > 0
