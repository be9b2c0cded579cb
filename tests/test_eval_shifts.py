import pytest
import torch

from climp.eval.shifts import (SHIFTS, contrast, greyscale, phase_scramble, power_equalisation, rotation, shift_op)


@pytest.fixture
def image():
    return torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_first_level_is_identity_and_others_change_the_image(name, image):
    shift = SHIFTS[name]
    same = shift.fn(image, shift.levels[0], torch.Generator().manual_seed(0))
    assert torch.allclose(same, image, atol=1e-5)
    changed = shift_op(name, shift.levels[-1])(image)
    assert changed.shape == image.shape and changed.min() >= 0 and changed.max() <= 1
    assert not torch.allclose(changed, image, atol=1e-3)


def test_phase_scrambling_keeps_the_amplitude_spectrum(image):
    out = phase_scramble(image, 90.0, torch.Generator().manual_seed(3))
    assert torch.allclose(torch.fft.fft2(out.double()).abs(), torch.fft.fft2(image.double()).abs(), atol=1e-4)
    assert (out - image).abs().mean() > 0.05


def test_contrast_scales_deviation_from_the_mean(image):
    out = contrast(image, 0.3)
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out - mean, 0.3 * (image - mean), atol=1e-6)


def test_greyscale_channels_are_equal_and_luminance_weighted(image):
    out = greyscale(image, 1.0)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    lum = 0.2989 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    assert torch.allclose(out[:, 0], lum, atol=1e-3)


def test_power_equalisation_makes_amplitude_rotationally_symmetric():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    amp = torch.fft.fft2(power_equalisation(x, 1.0).double()).abs()
    # (0, 3) and (3, 0) lie on the same ring |f| = 3
    assert torch.allclose(amp[..., 0, 3], amp[..., 3, 0], atol=1e-6)
    assert torch.allclose(amp[..., 0, 0], torch.fft.fft2(x.double()).abs()[..., 0, 0])  # mean kept


def test_four_quarter_rotations_are_identity():
    x = torch.rand(3, 8, 8)
    y = x
    for _ in range(4):
        y = rotation(y, 90.0)
    assert torch.allclose(y, x)
    assert torch.allclose(rotation(x, 90.0), torch.rot90(x, 1, dims=(1, 2)))
