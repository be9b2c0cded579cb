"""Shared fixtures: one-thread torch for tiny models, tiny image-caption datasets written as PNG
files and caption tables."""
import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


@pytest.fixture
def single_thread():
    """Tiny models run fastest (and least disturbed by busy cores) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_png(path, rgb, side=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), rgb, np.uint8)).save(path)


@pytest.fixture
def own_data(tmp_path):
    """train.csv (16 rows, one missing image, one 16-bit PNG, one very long caption), val.csv
    (8 images with distinct captions) and classes/<colour>/ (a zero-shot layout)."""
    rows = ["image,caption"]
    for i in range(16):
        name = list(COLOURS)[i % 4]
        write_png(tmp_path / "images" / f"train{i}.png", COLOURS[name])
        rows.append(f"images/train{i}.png,a {name} square number {i}")
    Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(tmp_path / "images" / "grey16.png")
    rows.append("images/grey16.png,a grey square")
    rows.append("images/missing.png,an image that is not there")
    rows.append("images/train0.png," + "a very long red caption " * 200)
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    val = ["image,caption"]
    for i in range(8):
        name = list(COLOURS)[i % 4]
        write_png(tmp_path / "val_images" / f"val{i}.png", COLOURS[name])
        val.append(f"val_images/val{i}.png,a {name} picture {i}")
    (tmp_path / "val.csv").write_text("\n".join(val) + "\n")
    for name, rgb in COLOURS.items():
        for i in range(2):
            write_png(tmp_path / "classes" / name / f"{i}.png", rgb)
    return tmp_path
