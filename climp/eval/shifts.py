"""Parametric image shifts (Geirhos et al., model-vs-human) on float pixels in [0, 1].

Each shift maps (..., 3, H, W) pixels and a level to shifted pixels; its first level is the
identity. Filter widths are given for 224-pixel images and scaled to the actual size. They act
before CLIP normalisation, so they apply to any dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torchvision.transforms.v2 import functional as TF

REFERENCE_SIDE = 224


def greyscale(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Blend towards luminance; level 1 is fully grey (all channels equal)."""
    grey = TF.rgb_to_grayscale(x, num_output_channels=3)
    return torch.lerp(x, grey, level)


def contrast(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scale each image's deviation from its mean by `level` (1 = unchanged)."""
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return mean + level * (x - mean)


def gaussian_transfer(shape_hw, sigma: float, device) -> torch.Tensor:
    """Frequency response of a Gaussian blur with std sigma (pixels) on an H x W grid."""
    fy = torch.fft.fftfreq(shape_hw[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape_hw[1], device=device)[None, :]
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2))


def high_pass(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Remove a Gaussian low-pass of std 1/level (224-px units), keep the mean grey level.

    level = 1/sigma, so 0 removes only the constant term and leaves the image as it is."""
    if level == 0:
        return x.clone()
    sigma = (1.0 / level) * x.shape[-1] / REFERENCE_SIDE
    spectrum = torch.fft.fft2(x)
    low = torch.fft.ifft2(spectrum * gaussian_transfer(x.shape[-2:], sigma, x.device)).real
    return x - low + x.mean(dim=(-2, -1), keepdim=True)


def low_pass(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian blur with std `level` (224-px units) via torchvision; 0 is no blur."""
    if level == 0:
        return x.clone()
    sigma = level * x.shape[-1] / REFERENCE_SIDE
    limit = 2 * min(x.shape[-2:]) - 1  # reflect padding needs the kernel half-width below the side
    size = min(2 * math.ceil(3 * sigma) + 1, limit if limit % 2 else limit - 1)
    return TF.gaussian_blur(x, [size, size], [sigma, sigma])


def uniform_noise(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add i.i.d. uniform noise in [-level, level] to every pixel."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) * 2 - 1
    return x + level * noise


def hermitian_phase_noise(shape_hw, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Random phases in [-1, 1] with phi(-f) = -phi(f), zero where f = -f, so that adding them to a
    real image's spectrum keeps the image real."""
    h, w = shape_hw
    raw = torch.rand(h, w, generator=generator, device=device) * 2 - 1
    flipped = torch.roll(torch.flip(raw, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # raw at (-fy, -fx)
    return (raw - flipped) / 2


def phase_scramble(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add phase noise of width `level` degrees to every frequency (the same for all channels);
    the amplitude spectrum is unchanged."""
    if level == 0:
        return x.clone()
    spectrum = torch.fft.fft2(x.double())
    phase = hermitian_phase_noise(x.shape[-2:], generator, x.device).double() * math.radians(level)
    return torch.fft.ifft2(spectrum * torch.polar(torch.ones_like(phase), phase)).real.to(x.dtype)


def radial_mean_amplitude(amplitude: torch.Tensor) -> torch.Tensor:
    """Replace each frequency's amplitude by the mean over its ring of equal |f| (per channel)."""
    h, w = amplitude.shape[-2:]
    fy = torch.fft.fftfreq(h, device=amplitude.device)[:, None] * h
    fx = torch.fft.fftfreq(w, device=amplitude.device)[None, :] * w
    ring = torch.sqrt(fx ** 2 + fy ** 2).round().long().flatten()
    flat = amplitude.flatten(-2)
    sums = torch.zeros(*flat.shape[:-1], int(ring.max()) + 1, dtype=flat.dtype, device=flat.device)
    sums.index_add_(-1, ring, flat)
    counts = torch.bincount(ring).to(flat.dtype)
    return (sums / counts)[..., ring].view_as(amplitude)


def power_equalisation(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Blend the amplitude spectrum towards its rotational average (a 1/f-like power spectrum),
    keeping phases; level 1 fully equalises."""
    if level == 0:
        return x.clone()
    spectrum = torch.fft.fft2(x.double())
    amplitude = spectrum.abs()
    target = torch.lerp(amplitude, radial_mean_amplitude(amplitude), level)
    return torch.fft.ifft2(torch.polar(target, spectrum.angle())).real.to(x.dtype)


def false_colour(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Invert colours about each pixel's luminance (opponent colours, same luminance), blended by level."""
    grey = TF.rgb_to_grayscale(x, num_output_channels=3)
    return torch.lerp(x, 2 * grey - x, level)


def rotation(x: torch.Tensor, level: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rotate by `level` degrees (counter-clockwise) with torchvision."""
    if level % 360 == 0:
        return x.clone()
    return TF.rotate(x, level)


@dataclass(frozen=True)
class Shift:
    name: str
    fn: Callable[..., torch.Tensor]
    levels: Sequence[float]
    level_label: str


SHIFTS: Dict[str, Shift] = {s.name: s for s in [
    Shift("greyscale", greyscale, (0.0, 1.0), "grey fraction"),
    Shift("contrast", contrast, (1.0, 0.5, 0.3, 0.15, 0.1, 0.05, 0.03, 0.01), "contrast"),
    Shift("high_pass", high_pass, (0.0, 1 / 3.0, 1 / 1.5, 1.0, 1 / 0.7, 1 / 0.55, 1 / 0.45, 1 / 0.4),
          "1/sigma (224-px units)"),
    Shift("low_pass", low_pass, (0.0, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0, 40.0), "sigma (224-px units)"),
    Shift("uniform_noise", uniform_noise, (0.0, 0.03, 0.05, 0.1, 0.2, 0.35, 0.6, 0.9), "noise width"),
    Shift("phase_scrambling", phase_scramble, (0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0), "phase noise (deg)"),
    Shift("power_equalisation", power_equalisation, (0.0, 1.0), "equalised fraction"),
    Shift("false_colour", false_colour, (0.0, 1.0), "false-colour fraction"),
    Shift("rotation", rotation, (0.0, 90.0, 180.0, 270.0), "degrees"),
]}


def get_shift(name: str) -> Shift:
    if name not in SHIFTS:
        raise ValueError(f"unknown image shift {name!r}; available: {sorted(SHIFTS)}")
    return SHIFTS[name]


def shift_op(name: str, level: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixel op applying one shift at one level, clipped to [0, 1]; random shifts draw from a
    generator seeded once, so a pass over a dataset is reproducible."""
    shift = get_shift(name)
    generator = torch.Generator().manual_seed(seed)
    return lambda x: shift.fn(x, level, generator).clamp(0.0, 1.0)
