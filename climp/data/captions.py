"""Captions for synthetic scenes: short ones and dense ones, in several phrasings.

Every choice of wording (template, synonym, object order, number style) is drawn from the
numpy Generator the caller passes, so a caption is deterministic per scene index while a
model cannot succeed by matching one template. Canonical attribute words (the class names of
the zero-shot tasks) are used most of the time; synonyms appear occasionally.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .scenes import MAX_OBJECTS, Scene, SceneObject

CAPTION_STYLES = ("short", "dense", "mixed")
CANONICAL_PROB = 0.8  # probability of the canonical word when synonyms exist

SHAPE_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "circle": ("disc",), "square": ("box",), "triangle": (), "star": ("five-pointed star",),
    "hexagon": ("six-sided shape",), "diamond": ("rhombus",), "cross": ("plus sign",),
    "heart": ("heart shape",),
}
PLURALS: Dict[str, str] = {"cross": "crosses", "box": "boxes", "rhombus": "rhombuses",
                           "plus sign": "plus signs"}
COLOUR_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "red": (), "green": (), "blue": (), "yellow": (), "purple": ("violet",), "orange": (),
    "cyan": ("turquoise",), "pink": (),
}
SIZE_WORDS: Dict[str, Tuple[str, ...]] = {"small": ("little", "tiny"), "large": ("big",)}
POSITION_PHRASES: Dict[str, Tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top middle": ("at the top middle", "at the top", "in the upper middle"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "middle left": ("at the middle left", "on the left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "middle right": ("at the middle right", "on the right", "on the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom middle": ("at the bottom middle", "at the bottom", "in the lower middle"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
BACKGROUND_WORDS: Dict[str, Tuple[str, ...]] = {
    "white": ("white", "plain white"), "black": ("black", "plain black"),
    "grey": ("grey", "gray", "plain grey"), "stripes": ("striped", "stripy"),
    "checker": ("checkered", "checkerboard"), "dots": ("dotted", "polka dot"),
    "noise": ("noisy", "blotchy"), "grid": ("grid", "grid-patterned"),
}
NUMBER_WORDS: Tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine", "ten", "eleven", "twelve", "thirteen",
                                 "fourteen", "fifteen", "sixteen")
assert len(NUMBER_WORDS) > MAX_OBJECTS


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _word(rng: np.random.Generator, canonical: str, synonyms: Sequence[str]) -> str:
    if not synonyms or rng.random() < CANONICAL_PROB:
        return canonical
    return _pick(rng, synonyms)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


def _number(rng: np.random.Generator, n: int) -> str:
    return str(n) if rng.random() < 0.15 else NUMBER_WORDS[n]


def _join(parts: List[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


class _Words:
    """The words for one object, drawn once so that a caption names it consistently."""

    def __init__(self, obj: SceneObject, rng: np.random.Generator):
        self.shape = _word(rng, obj.shape, SHAPE_SYNONYMS[obj.shape])
        self.colour = _word(rng, obj.colour, COLOUR_SYNONYMS[obj.colour])
        self.size = _word(rng, obj.size, SIZE_WORDS[obj.size])
        self.position = _pick(rng, POSITION_PHRASES[obj.position])

    def noun_phrase(self, rng: np.random.Generator, with_size: bool = True) -> str:
        if not with_size:
            return f"{_article(self.colour)} {self.colour} {self.shape}"
        if rng.random() < 0.85:
            return f"{_article(self.size)} {self.size} {self.colour} {self.shape}"
        return f"{_article(self.colour)} {self.colour} {self.shape} of {self.size} size"

    def reference(self) -> str:
        return f"the {self.colour} {self.shape}"


def _background(scene: Scene, rng: np.random.Generator) -> str:
    canonical, *synonyms = BACKGROUND_WORDS[scene.background]
    return _word(rng, canonical, synonyms)


# ----------------------------------------------------------------------------- short

_SINGLE_TEMPLATES = (
    "{obj} {pos} on {bga} {bg} background",
    "{obj} {pos}, {bg} background",
    "{bga} {bg} background with {obj} {pos}",
    "{pos} there is {obj} on {bga} {bg} background",
    "an image of {obj} {pos} against {bga} {bg} background",
    "{obj} on {bga} {bg} background, {pos}",
)
_COUNT_TEMPLATES = (
    "{num} {size} {colour} {shapes} on {bga} {bg} background",
    "{bga} {bg} background with {num} {size} {colour} {shapes}",
    "{num} {colour} {shapes}, {size}, on {bga} {bg} background",
    "there {verb} {num} {size} {colour} {shapes} on {bga} {bg} background",
)


def short_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One phrase: the single object with all its attributes, the count of identical objects,
    or up to three objects of a multi-object scene; always with the background."""
    bg = _background(scene, rng)
    fields = {"bg": bg, "bga": _article(bg)}
    if scene.kind == "count":
        words = _Words(scene.objects[0], rng)
        n = len(scene.objects)
        return _pick(rng, _COUNT_TEMPLATES).format(
            num=_number(rng, n), size=words.size, colour=words.colour,
            shapes=words.shape if n == 1 else _plural(words.shape),
            verb="is" if n == 1 else "are", **fields)
    if len(scene.objects) == 1:
        words = _Words(scene.objects[0], rng)
        return _pick(rng, _SINGLE_TEMPLATES).format(obj=words.noun_phrase(rng),
                                                   pos=words.position, **fields)
    order = rng.permutation(len(scene.objects))
    named = [_Words(scene.objects[k], rng).noun_phrase(rng, with_size=False) for k in order[:3]]
    rest = len(scene.objects) - len(named)
    if rest:
        named.append(f"{_number(rng, rest)} other shape{'s' if rest > 1 else ''}")
    listing = _join(named)
    if rng.random() < 0.5:
        return f"{listing} on {fields['bga']} {bg} background"
    return f"{fields['bga']} {bg} background with {listing}"


# ----------------------------------------------------------------------------- partial

PARTIAL_ATTRIBUTES = ("shape", "colour", "size", "position", "background")
_PARTIAL_OPENINGS = ("", "", "a photo of ", "an image of ")


def partial_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A phrase naming a random non-empty strict subset of the salient object's attributes
    (shape, colour, size, position, background; count scenes name their number or not).

    Training on these forces every attribute to be learned on its own: with full captions a
    small model matches captions by the easiest attributes (e.g. position and background) and
    never learns the rest, which is contrastive learning's feature suppression. Multi-object
    scenes get their short caption.
    """
    if scene.kind == "multi":
        return short_caption(scene, rng)
    k = 1 + int(rng.integers(len(PARTIAL_ATTRIBUTES) - 1))
    named = {PARTIAL_ATTRIBUTES[i] for i in rng.choice(len(PARTIAL_ATTRIBUTES), k, replace=False)}
    words = _Words(scene.objects[0], rng)
    n = len(scene.objects)
    noun = words.shape if "shape" in named else _pick(rng, ("shape", "object"))
    adjectives = [w for a, w in (("size", words.size), ("colour", words.colour)) if a in named]
    if scene.kind == "count":
        number = _number(rng, n) if rng.random() < 0.5 else _pick(rng, ("several", "some"))
        phrase = " ".join([number] + adjectives + [_plural(noun)])
    else:
        phrase = " ".join(adjectives + [noun])
        phrase = f"{_article(phrase)} {phrase}"
        if "position" in named:
            phrase += f" {words.position}"
    if "background" in named:
        bg = _background(scene, rng)
        phrase += f" on {_article(bg)} {bg} background"
    return _pick(rng, _PARTIAL_OPENINGS) + phrase


# ----------------------------------------------------------------------------- dense

_OPENINGS = (
    "{num} {things} on {bga} {bg} background",
    "{bga} {bg} background with {num} {things}",
    "there {verb} {num} {things} on {bga} {bg} background",
    "an image with {bga} {bg} background and {num} {things}",
)
_CONNECTORS = ("", "there is also ", "next, ", "we also see ")


def _relation(obj: SceneObject, ref: SceneObject, rng: np.random.Generator) -> str:
    dx, dy = obj.x - ref.x, obj.y - ref.y
    if abs(dx) >= abs(dy):
        return _pick(rng, ("to the left of", "left of") if dx < 0 else
                     ("to the right of", "right of"))
    return _pick(rng, ("above",) if dy < 0 else ("below", "beneath"))


def _order(scene: Scene, rng: np.random.Generator) -> List[int]:
    """Objects listed in random, left-to-right or top-to-bottom order."""
    n = len(scene.objects)
    mode = rng.integers(3)
    if mode == 0:
        return [int(k) for k in rng.permutation(n)]
    key = (lambda k: (scene.objects[k].x, scene.objects[k].y)) if mode == 1 else \
        (lambda k: (scene.objects[k].y, scene.objects[k].x))
    return sorted(range(n), key=key)


def dense_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Every object with size, colour, shape and position, each related to the previously
    named object (left of / right of / above / below), plus the background and the count."""
    n = len(scene.objects)
    bg = _background(scene, rng)
    words = [_Words(obj, rng) for obj in scene.objects]
    if scene.kind == "count":
        first = words[0]
        things = f"{first.size} {first.colour} {first.shape if n == 1 else _plural(first.shape)}"
    else:
        things = "object" if n == 1 else _pick(rng, ("objects", "shapes"))
    sentences = [_sentence(_pick(rng, _OPENINGS).format(
        num=_number(rng, n), things=things, bg=bg, bga=_article(bg),
        verb="is" if n == 1 else "are"))]
    order = _order(scene, rng)
    for rank, k in enumerate(order):
        obj = scene.objects[k]
        if scene.kind == "count":
            text = f"one is {words[k].position}"
        else:
            connector = _pick(rng, _CONNECTORS) if rank > 0 else ""
            text = connector + f"{words[k].noun_phrase(rng)} {words[k].position}"
        if rank > 0:
            prev = order[rank - 1]
            ref = "the previous one" if scene.kind == "count" else words[prev].reference()
            text += f", {_relation(obj, scene.objects[prev], rng)} {ref}"
        sentences.append(_sentence(text))
    return " ".join(sentences)


def make_caption(scene: Scene, style: str, rng: np.random.Generator) -> str:
    """Caption in `style`: "short", "dense", or "mixed" (dense for multi-object scenes)."""
    if style == "short":
        return short_caption(scene, rng)
    if style == "dense":
        return dense_caption(scene, rng)
    if style == "mixed":
        return dense_caption(scene, rng) if scene.kind == "multi" else short_caption(scene, rng)
    raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, got {style!r}")
