"""One image loader for every data source: any PIL mode to 8-bit RGB with the right values.

PIL's own `convert("RGB")` clips 16-bit and 32-bit pixels to 255 (a 16-bit grey PNG becomes
white) and drops transparency, showing whatever colour lies under transparent pixels. Here:

- 16-bit and 32-bit integer modes ('I;16*', 'I') are read as 16-bit values: v / 257, rounded.
- float mode 'F' is read as [0, 1] when its maximum is <= 1, else as [0, 255]; clipped.
- modes with transparency (RGBA, LA, PA, P with a transparency entry, RGBa) are composited
  over a white background: rgb * a + 255 * (1 - a).
- CMYK, L, 1, P, YCbCr and the rest go through PIL's conversion.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

BACKGROUND = 255  # white, for transparent pixels
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of `image`, whatever its mode (see the module docstring)."""
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return _grey_to_rgb(np.nan_to_num(values * scale))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + BACKGROUND * (1.0 - alpha)
        return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")
    return image.convert("RGB")


def load_image(source: Union[str, Path, bytes]) -> Image.Image:
    """Decode an image file (path) or encoded bytes to 8-bit RGB; raises what PIL raises."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as image:
        image.load()
        return to_rgb(image)
