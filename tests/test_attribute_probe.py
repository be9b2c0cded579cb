"""The attribute probe (benchmarks/attribute_probe.py) on towers whose invariances are known."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attribute_probe.py"
spec = importlib.util.spec_from_file_location("attribute_probe", SCRIPT)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


class MeanColourTower(torch.nn.Module):
    """Embeds an image as its mean RGB plus a constant: blind to where things are."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([pixels.mean(dim=(2, 3)), torch.full((pixels.shape[0], 1), 3.0)], dim=1)


class CentreOfMassTower(torch.nn.Module):
    """Embeds an image by where its pixels differ from the corner's: blind to colour identity."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixels.shape
        diff = (pixels - pixels[:, :, :1, :1]).abs().sum(1)
        weights = diff / diff.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        ys = torch.linspace(-1, 1, h)[None, :, None]
        xs = torch.linspace(-1, 1, w)[None, None, :]
        return torch.stack([(weights * ys).sum((1, 2)), (weights * xs).sum((1, 2)), torch.ones(n)], dim=1)


def test_mean_pairwise_cosine_exact():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    expected = (0.0 + 2 ** -0.5 + 2 ** -0.5) / 3
    assert abs(probe.mean_pairwise_cosine(e) - expected) < 1e-6


def test_mean_colour_tower_sees_colour_not_position():
    cos = probe.attribute_cosines(MeanColourTower(), side=32, num_scenes=2)
    assert cos["position"] > 0.9999
    assert cos["colour"] < cos["position"] - 1e-4
    assert cos["background"] < cos["colour"]


def test_position_tower_sees_position_more_than_colour():
    cos = probe.attribute_cosines(CentreOfMassTower(), side=32, num_scenes=2)
    assert cos["position"] < cos["colour"]
