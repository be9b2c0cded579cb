"""Every PIL mode loads as 8-bit RGB with the right values, checked against numpy arithmetic on
the raw pixels, through the one loader every data source uses."""
import numpy as np
import pytest
from PIL import Image

from climp.data.images import load_image, to_rgb
from climp.data.sources import CsvDataset
from climp.eval.datasets import CaptionDataset, ImageOnlyFolder, load_classification_set

RNG = np.random.default_rng(0)
H, W = 5, 7


def roundtrip(tmp_path, image: Image.Image, fmt: str = "PNG", **save) -> np.ndarray:
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt, **save)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (W, H)
    return np.asarray(out).astype(int)


def grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(values)[..., None], 3, axis=2).astype(int)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] / 255.0
    return np.rint(rgb * a + 255 * (1 - a)).astype(int)


def test_16bit_png_keeps_its_grey_level(tmp_path):
    raw = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
    raw[0, 0] = 30000
    got = roundtrip(tmp_path, Image.fromarray(raw))
    np.testing.assert_array_equal(got, grey3(raw / 257.0))
    assert got[0, 0, 0] == 117  # 30000 / 65535 of full scale, not white


def test_mode_i_32bit(tmp_path):
    raw = RNG.integers(0, 65536, (H, W)).astype(np.int32)
    image = Image.fromarray(raw)
    assert image.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_rgb(image)).astype(int), grey3(raw / 257.0))
    np.testing.assert_array_equal(roundtrip(tmp_path, image, "TIFF"), grey3(raw / 257.0))


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_mode_f(tmp_path, scale):
    raw = (RNG.random((H, W)) * scale).astype(np.float32)
    raw[0, 0] = scale  # the maximum decides the range
    image = Image.fromarray(raw)
    assert image.mode == "F"
    expected = grey3(raw.astype(np.float64) * (255.0 / scale))
    np.testing.assert_array_equal(roundtrip(tmp_path, image, "TIFF"), expected)


def test_cmyk(tmp_path):
    raw = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    got = roundtrip(tmp_path, Image.fromarray(raw, "CMYK"), "TIFF")
    c, k = raw[..., :3].astype(float), raw[..., 3:].astype(float)
    expected = (255 - c) * (255 - k) / 255
    assert np.abs(got - expected).max() <= 1


def test_la_composited_over_white(tmp_path):
    raw = RNG.integers(0, 256, (H, W, 2)).astype(np.uint8)
    got = roundtrip(tmp_path, Image.fromarray(raw, "LA"))
    grey = np.repeat(raw[..., :1].astype(float), 3, axis=2)
    np.testing.assert_array_equal(got, over_white(grey, raw[..., 1].astype(float)))


def test_rgba_composited_over_white(tmp_path):
    raw = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    raw[0, 0] = (0, 0, 0, 0)  # fully transparent black shows as white
    got = roundtrip(tmp_path, Image.fromarray(raw, "RGBA"))
    np.testing.assert_array_equal(got, over_white(raw[..., :3].astype(float), raw[..., 3].astype(float)))
    assert got[0, 0].tolist() == [255, 255, 255]


def test_palette_with_transparent_index(tmp_path):
    palette = RNG.integers(0, 256, (4, 3)).astype(np.uint8)
    indices = RNG.integers(0, 4, (H, W)).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.flatten().tolist())
    got = roundtrip(tmp_path, image, transparency=2)
    expected = palette[indices].astype(int)
    expected[indices == 2] = 255
    np.testing.assert_array_equal(got, expected)


def test_palette_greyscale_and_bilevel(tmp_path):
    palette = RNG.integers(0, 256, (4, 3)).astype(np.uint8)
    indices = RNG.integers(0, 4, (H, W)).astype(np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.flatten().tolist())
    np.testing.assert_array_equal(roundtrip(tmp_path, image), palette[indices])
    grey = RNG.integers(0, 256, (H, W)).astype(np.uint8)
    np.testing.assert_array_equal(roundtrip(tmp_path, Image.fromarray(grey)), grey3(grey))
    bits = RNG.integers(0, 2, (H, W)).astype(bool)
    np.testing.assert_array_equal(roundtrip(tmp_path, Image.fromarray(bits)), grey3(bits * 255.0))


def test_every_source_uses_the_loader(tmp_path):
    raw = np.full((H, W), 30000, np.uint16)
    (tmp_path / "cls" / "a").mkdir(parents=True)
    (tmp_path / "cls" / "b").mkdir(parents=True)
    for where in ("img.png", "cls/a/x.png", "cls/b/y.png"):
        Image.fromarray(raw).save(tmp_path / where)
    (tmp_path / "data.csv").write_text("image,caption\nimg.png,grey\n")
    expected = 117
    assert np.asarray(CsvDataset(tmp_path / "data.csv")[0][0])[0, 0, 0] == expected
    assert np.asarray(CaptionDataset(tmp_path / "data.csv")[0][0])[0, 0, 0] == expected
    assert np.asarray(ImageOnlyFolder(tmp_path / "cls")[0][0])[0, 0, 0] == expected
    data = load_classification_set("cls", tmp_path)
    assert np.asarray(data.dataset[0][0])[0, 0, 0] == expected
