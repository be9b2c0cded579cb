"""Procedural scenes of coloured shapes: vocabulary, scene sampling and anti-aliased rendering.

A scene is plain data (`Scene`, `SceneObject`, `BackgroundStyle`) in resolution-free units:
object centres are fractions of the image width/height, radii fractions of the shorter side.
`render_scene` draws it with PIL on a canvas `supersample` times larger and box-downsamples,
so the same scene renders anti-aliased at any (height, width) in about a millisecond at 64x64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

RGB = Tuple[int, int, int]
Resolution = Union[int, Tuple[int, int]]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross",
                           "heart")
COLOUR_RGB: Dict[str, RGB] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 84, 220),
    "yellow": (245, 205, 30),
    "purple": (135, 55, 190),
    "orange": (245, 125, 20),
    "cyan": (30, 195, 210),
    "pink": (245, 110, 175),
}
COLOURS: Tuple[str, ...] = tuple(COLOUR_RGB)  # colour names; RGB in COLOUR_RGB
SIZES: Tuple[str, ...] = ("small", "large")
SIZE_RADIUS: Dict[str, float] = {"small": 0.09, "large": 0.14}
# 3x3 grid cells, row-major: index = row * 3 + col.
POSITIONS: Tuple[str, ...] = ("top left", "top middle", "top right",
                              "middle left", "center", "middle right",
                              "bottom left", "bottom middle", "bottom right")
PLAIN_BACKGROUNDS: Dict[str, RGB] = {"white": (242, 242, 242), "black": (22, 22, 22),
                                     "grey": (128, 128, 128)}
TEXTURES: Tuple[str, ...] = ("stripes", "checker", "dots", "noise", "grid")
BACKGROUNDS: Tuple[str, ...] = tuple(PLAIN_BACKGROUNDS) + TEXTURES
# Two neutral tones per textured background, so object colours stay salient.
TEXTURE_TONES: Tuple[Tuple[RGB, RGB], ...] = (
    ((205, 205, 205), (245, 245, 245)),
    ((40, 40, 40), (100, 100, 100)),
    ((120, 120, 120), (185, 185, 185)),
    ((70, 70, 70), (160, 160, 160)),
)
MAX_COUNT = 6            # count scenes hold 1..MAX_COUNT identical objects
MAX_OBJECTS = 16         # multi-object scenes: up to 9 on a 3x3 grid, up to 16 on a 4x4 grid
# Spurious split: in training the background is mostly the one paired with the shape here.
SPURIOUS_BACKGROUND: Dict[str, str] = dict(zip(SHAPES, BACKGROUNDS))
# Held-out (shape, colour) pairs: two colours per shape, each colour held out for two shapes.
HELDOUT_COMBOS: Tuple[Tuple[str, str], ...] = tuple(
    (shape, COLOURS[(i + k) % len(COLOURS)])
    for i, shape in enumerate(SHAPES) for k in (1, 4))


@dataclass(frozen=True)
class SceneObject:
    """One shape. x, y: centre as fractions of width/height; radius: fraction of shorter side.

    `fill` names a shape whose small tiled copies texture the object (cue-conflict images);
    None means a solid fill in `colour`.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    x: float
    y: float
    radius: float
    rotation: float = 0.0
    fill: Optional[str] = None

    @property
    def position(self) -> str:
        return POSITIONS[self.row * 3 + self.col]


@dataclass(frozen=True)
class BackgroundStyle:
    """How a background kind is drawn: two tones, pattern period (fraction of shorter side),
    pattern angle in degrees, and a seed for the noise texture."""

    tones: Tuple[RGB, RGB]
    period: float = 0.2
    angle: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """A rendered-on-demand scene. kind: "single", "count" (identical objects) or "multi"."""

    objects: List[SceneObject]
    background: str
    style: BackgroundStyle
    kind: str = "single"
    fill_base: Optional[RGB] = None


# ----------------------------------------------------------------------------- geometry

def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    outer = _regular(points)
    inner_pts = _regular(points, inner, -90.0 + 180.0 / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(half_width: float = 0.3, arm: float = 0.95) -> np.ndarray:
    w, a = half_width, arm
    return np.array([(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a),
                     (-w, w), (-a, w), (-a, -w), (-w, -w)])


def _heart(n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2.0
    return pts / np.abs(pts).max()


# Unit outlines (radius 1, y pointing down); None = drawn as an ellipse.
SHAPE_OUTLINES: Dict[str, Optional[np.ndarray]] = {
    "circle": None,
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    "triangle": _regular(3, 1.15) + np.array([0.0, 0.29]),
    "star": _star(),
    "hexagon": _regular(6, 1.0, 0.0),
    "diamond": np.array([(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]),
    "cross": _cross(),
    "heart": _heart(),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                rotation: float, fill) -> None:
    outline = SHAPE_OUTLINES[shape]
    if outline is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    theta = math.radians(rotation)
    c, s = math.cos(theta), math.sin(theta)
    pts = outline @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
    draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


# ----------------------------------------------------------------------------- rendering

def as_hw(resolution: Resolution) -> Tuple[int, int]:
    """int -> (n, n); (height, width) -> itself; rejects non-positive sizes."""
    hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(hw) != 2 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in hw):
        raise ValueError(f"resolution must be a positive int or (height, width), "
                         f"got {resolution!r}")
    return int(hw[0]), int(hw[1])


def default_supersample(hw: Tuple[int, int]) -> int:
    """Supersampling factor: 4x for small images, fewer for large ones (cost grows with area)."""
    short = min(hw)
    return 4 if short <= 96 else 3 if short <= 160 else 2


_THRESHOLD = [0] * 128 + [255] * 128  # PIL point() table: binarise a grey level at 128


def _stripe_bands(width: int, height: int, period: float, angle_deg: float):
    """Polygons of the dark half of each stripe period, for stripes normal to angle_deg."""
    a = math.radians(angle_deg)
    normal, tangent = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    corners = np.array([(0, 0), (width, 0), (0, height), (width, height)], dtype=np.float64)
    u, t = corners @ normal, corners @ tangent
    for k in range(math.floor(u.min() / period), math.ceil(u.max() / period) + 1):
        u0, u1 = k * period, k * period + period / 2.0
        quad = [normal * u0 + tangent * t.min(), normal * u0 + tangent * t.max(),
                normal * u1 + tangent * t.max(), normal * u1 + tangent * t.min()]
        yield [tuple(p) for p in quad]


def _background(scene: Scene, width: int, height: int) -> Image.Image:
    """Background canvas: a plain tone, or two tones in a pattern drawn with PIL (fast C)."""
    style, kind = scene.style, scene.background
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    canvas = Image.new("RGB", (width, height), style.tones[0])
    if kind in PLAIN_BACKGROUNDS:
        return canvas
    period = max(4.0, style.period * min(width, height))
    draw, ink = ImageDraw.Draw(canvas), style.tones[1]
    if kind == "stripes":
        for band in _stripe_bands(width, height, period, style.angle):
            draw.polygon(band, fill=ink)
    elif kind == "checker":
        half = period / 2.0
        for j in range(math.ceil(height / half)):
            for i in range(j % 2, math.ceil(width / half), 2):
                draw.rectangle((i * half, j * half, (i + 1) * half - 1, (j + 1) * half - 1),
                               fill=ink)
    elif kind == "dots":
        r = 0.28 * period
        for cy in np.arange(period / 2.0, height + r, period):
            for cx in np.arange(period / 2.0, width + r, period):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    elif kind == "grid":
        line = max(1.0, 0.14 * period)
        for x in np.arange(0.0, width, period):
            draw.rectangle((x, 0, x + line - 1, height), fill=ink)
        for y in np.arange(0.0, height, period):
            draw.rectangle((0, y, width, y + line - 1), fill=ink)
    else:  # noise: thresholded, bilinearly upsampled random cells (blotches)
        rng = np.random.default_rng(style.seed)
        cells = rng.integers(0, 256, (max(2, round(2 * height / period)),
                                      max(2, round(2 * width / period))), dtype=np.uint8)
        level = Image.fromarray(cells, "L").resize((width, height), Image.BILINEAR)
        canvas.paste(ink, (0, 0, width, height), level.point(_THRESHOLD))
    return canvas


def _motif_texture(shape: str, colour: RGB, base: RGB, width: int, height: int,
                   motif_radius: float) -> Image.Image:
    """A canvas tiled with small copies of `shape` (the texture of a cue-conflict image)."""
    tex = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(tex)
    period = 2.7 * motif_radius
    for j, cy in enumerate(np.arange(period / 2.0, height + period, period)):
        offset = period / 2.0 if j % 2 else 0.0
        for cx in np.arange(offset, width + period, period):
            _draw_shape(draw, shape, float(cx), float(cy), motif_radius, 0.0, colour)
    return tex


def render_scene(scene: Scene, resolution: Resolution = 64,
                 supersample: Optional[int] = None) -> Image.Image:
    """Render `scene` to an RGB PIL image of size (height, width) = resolution, anti-aliased."""
    height, width = as_hw(resolution)
    ss = supersample or default_supersample((height, width))
    if ss < 1:
        raise ValueError(f"supersample must be >= 1, got {ss}")
    cw, ch = width * ss, height * ss
    canvas = _background(scene, cw, ch)
    draw = ImageDraw.Draw(canvas)
    short = min(cw, ch)
    for obj in scene.objects:
        cx, cy, r = obj.x * cw, obj.y * ch, obj.radius * short
        if obj.fill is None:
            _draw_shape(draw, obj.shape, cx, cy, r, obj.rotation, COLOUR_RGB[obj.colour])
            continue
        mask = Image.new("L", (cw, ch), 0)
        _draw_shape(ImageDraw.Draw(mask), obj.shape, cx, cy, r, obj.rotation, 255)
        texture = _motif_texture(obj.fill, COLOUR_RGB[obj.colour], scene.fill_base or (40, 40, 40),
                                 cw, ch, 0.055 * short)
        canvas.paste(texture, (0, 0), mask)
    return canvas.reduce(ss) if ss > 1 else canvas


# ----------------------------------------------------------------------------- sampling

def _randint(rng: np.random.Generator, n: int) -> int:
    """Uniform int in [0, n): rng.random() is several times faster than rng.integers()."""
    return min(n - 1, int(rng.random() * n))


def _choice(rng: np.random.Generator, options: Sequence):
    return options[_randint(rng, len(options))]


@dataclass(frozen=True)
class SamplingRules:
    """Constraints on sampled scenes.

    aligned_prob: if set, the background is SPURIOUS_BACKGROUND[shape] of the first object with
    this probability and a uniformly chosen other background otherwise.
    combos: "all", "exclude" (never a HELDOUT_COMBOS pair) or "only" (only held-out pairs).
    object_scale: factor on every SIZE_RADIUS; a radius is capped at half a grid cell, so an
    object never leaves its cell (nor overlaps a neighbour) and large objects stop growing
    first (at 1/6 of the side on the 3x3 grid, reached at scale 1.19).
    """

    aligned_prob: Optional[float] = None
    combos: str = "all"
    object_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.combos not in ("all", "exclude", "only"):
            raise ValueError(f"combos must be 'all', 'exclude' or 'only', got {self.combos!r}")
        if self.aligned_prob is not None and not 0.0 <= self.aligned_prob <= 1.0:
            raise ValueError(f"aligned_prob must be in [0, 1], got {self.aligned_prob}")
        if not (isinstance(self.object_scale, (int, float)) and 0.0 < self.object_scale < math.inf):
            raise ValueError(f"object_scale must be a positive finite number, got {self.object_scale!r}")


_HELDOUT_BY_SHAPE: Dict[str, Tuple[str, ...]] = {
    s: tuple(c for (t, c) in HELDOUT_COMBOS if t == s) for s in SHAPES}


def allowed_colours(shape: str, rules: SamplingRules) -> Tuple[str, ...]:
    if rules.combos == "only":
        return _HELDOUT_BY_SHAPE[shape]
    if rules.combos == "exclude":
        return tuple(c for c in COLOURS if c not in _HELDOUT_BY_SHAPE[shape])
    return COLOURS


def sample_background(rng: np.random.Generator, shape: str, rules: SamplingRules,
                      kind: Optional[str] = None) -> Tuple[str, BackgroundStyle]:
    """Pick a background kind (honouring the spurious rule unless `kind` is given) and style."""
    if kind is None:
        if rules.aligned_prob is None:
            kind = _choice(rng, BACKGROUNDS)
        elif rng.random() < rules.aligned_prob:
            kind = SPURIOUS_BACKGROUND[shape]
        else:
            others = [b for b in BACKGROUNDS if b != SPURIOUS_BACKGROUND[shape]]
            kind = _choice(rng, others)
    if kind in PLAIN_BACKGROUNDS:
        jitter = _randint(rng, 17) - 8
        tone = tuple(min(255, max(0, v + jitter)) for v in PLAIN_BACKGROUNDS[kind])
        return kind, BackgroundStyle(tones=(tone, tone))
    tones = _choice(rng, TEXTURE_TONES)
    if rng.random() < 0.5:
        tones = (tones[1], tones[0])
    return kind, BackgroundStyle(tones=tones, period=float(rng.uniform(0.12, 0.25)),
                                 angle=45.0 * _randint(rng, 4), seed=_randint(rng, 2**31))


def _place(rng: np.random.Generator, grid: int, cell: int, radius: float) -> Tuple[float, float]:
    """Centre jittered inside cell `cell` of a grid x grid layout, keeping the object inside."""
    r, c = divmod(cell, grid)
    half = 0.5 / grid
    slack = max(0.0, half - radius - 0.01)
    return (float((c + 0.5) / grid + rng.uniform(-slack, slack)),
            float((r + 0.5) / grid + rng.uniform(-slack, slack)))


def object_radius(size: str, grid: int, scale: float = 1.0) -> float:
    """Radius (fraction of the shorter side) of a `size` object on a grid x grid layout:
    SIZE_RADIUS[size] times `scale`, capped at half a cell."""
    return min(SIZE_RADIUS[size] * scale, 0.5 / grid)


def _make_object(rng: np.random.Generator, shape: str, colour: str, size: str, grid: int,
                 cell: int, scale: float = 1.0) -> SceneObject:
    radius = object_radius(size, grid, scale)
    x, y = _place(rng, grid, cell, radius)
    rotation = 0.0 if shape == "circle" else float(rng.uniform(-10.0, 10.0))
    return SceneObject(shape=shape, colour=colour, size=size, row=min(2, int(y * 3)),
                       col=min(2, int(x * 3)), x=x, y=y, radius=radius, rotation=rotation)


def sample_single(rng: np.random.Generator, rules: SamplingRules = SamplingRules(), *,
                  shape: Optional[str] = None, colour: Optional[str] = None,
                  position: Optional[int] = None, background: Optional[str] = None,
                  size: Optional[str] = None) -> Scene:
    """One salient object in a 3x3 grid cell; any attribute can be fixed by the caller."""
    shape = shape or _choice(rng, SHAPES)
    if colour is None:
        colour = _choice(rng, allowed_colours(shape, rules))
    if position is None:
        position = _randint(rng, 9)
    size = size or _choice(rng, SIZES)
    obj = _make_object(rng, shape, colour, size, 3, position, rules.object_scale)
    kind, style = sample_background(rng, shape, rules, background)
    return Scene(objects=[obj], background=kind, style=style, kind="single")


def sample_count(rng: np.random.Generator, count: int,
                 rules: SamplingRules = SamplingRules()) -> Scene:
    """`count` identical objects (same shape, colour, size) in distinct 3x3 cells."""
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be in 1..{MAX_COUNT}, got {count}")
    shape = _choice(rng, SHAPES)
    colour = _choice(rng, allowed_colours(shape, rules))
    size = _choice(rng, SIZES)
    cells = rng.choice(9, size=count, replace=False)
    objects = [_make_object(rng, shape, colour, size, 3, int(c), rules.object_scale) for c in cells]
    kind, style = sample_background(rng, shape, rules)
    return Scene(objects=objects, background=kind, style=style, kind="count")


def sample_multi(rng: np.random.Generator, num_objects: int,
                 rules: SamplingRules = SamplingRules()) -> Scene:
    """`num_objects` objects with distinct (shape, colour) pairs, one per grid cell
    (3x3 grid up to 9 objects, 4x4 grid with small objects beyond)."""
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS}, got {num_objects}")
    grid = 3 if num_objects <= 9 else 4
    cells = rng.choice(grid * grid, size=num_objects, replace=False)
    used = set()
    objects = []
    for cell in cells:
        while True:
            shape = _choice(rng, SHAPES)
            colour = _choice(rng, allowed_colours(shape, rules))
            if (shape, colour) not in used:
                break
        used.add((shape, colour))
        size = "small" if grid == 4 else _choice(rng, SIZES)
        objects.append(_make_object(rng, shape, colour, size, grid, int(cell), rules.object_scale))
    kind, style = sample_background(rng, objects[0].shape, rules)
    return Scene(objects=objects, background=kind,
                 style=style, kind="single" if num_objects == 1 else "multi")


def sample_cue_conflict(rng: np.random.Generator, shape: str, texture: str) -> Scene:
    """A large centred `shape` whose interior is tiled with small copies of `texture`."""
    colour = _choice(rng, COLOURS)
    obj = SceneObject(shape=shape, colour=colour, size="large", row=1, col=1,
                      x=float(0.5 + rng.uniform(-0.03, 0.03)),
                      y=float(0.5 + rng.uniform(-0.03, 0.03)), radius=0.4,
                      rotation=0.0, fill=texture)
    tone = PLAIN_BACKGROUNDS["white"]
    return Scene(objects=[obj], background="white", style=BackgroundStyle(tones=(tone, tone)),
                 kind="single", fill_base=(40, 40, 40))

