"""The embedded benchmark: datasets and zero-shot tasks over procedural shape scenes.

Nothing is stored on disk: every sample is sampled and rendered on the fly from a random
stream keyed by (seed, split, task stream, index), so a sample is the same on every machine
and worker, at any resolution. Splits are disjoint random streams (the split is part of the
key), not index ranges, so "train" index 7 and "test" index 7 are unrelated scenes.

Split rules (documented here because they are part of the benchmark's definition):
- spurious=True: the salient (first) object's background is SPURIOUS_BACKGROUND[shape] with
  probability `correlation` (0.95) in train and val, and with probability 1 - correlation
  in test (anti-correlated); otherwise a uniformly chosen other background.
- holdout_combos=True: train and val never show a (shape, colour) pair of HELDOUT_COMBOS;
  test shows only those pairs.
The training mixture (num_objects=None): 60% one salient object, 20% count scenes (2..6
identical objects), 20% multi-object scenes (2..8 distinct objects).
Hard negatives (hard_negatives=p): indices come in groups of HARD_NEGATIVE_GROUP; with
probability p a group is single-object scenes that share every attribute but one (shape,
colour, size, position or background), so a batch holding the group can only be matched to its
captions through that attribute; other groups are ordinary mixture samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .captions import CAPTION_STYLES, NUMBER_WORDS, make_caption, partial_caption
from .scenes import (BACKGROUNDS, COLOURS, HELDOUT_COMBOS, MAX_COUNT, MAX_OBJECTS,
                     POSITIONS, SHAPES, SIZES, SPURIOUS_BACKGROUND, Resolution, SamplingRules, Scene,
                     allowed_colours, as_hw, render_scene, sample_count, sample_cue_conflict,
                     sample_multi, sample_single)

SPLITS: Tuple[str, ...] = ("train", "val", "test")
DEFAULT_NUM_SAMPLES: Dict[str, int] = {"train": 50_000, "val": 2_000, "test": 2_000}
COUNT_CLASSNAMES: Tuple[str, ...] = tuple(
    f"{NUMBER_WORDS[k]} shape{'s' if k > 1 else ''}" for k in range(1, MAX_COUNT + 1))

TEMPLATES: Tuple[str, ...] = ("a photo of a {}.", "a {} shape.", "an image of a {} object.")
SHAPE_TEMPLATES: Tuple[str, ...] = ("a photo of a {}.", "a {} on a background.",
                                    "an image of a {}.", "a {} shape.")
COLOUR_TEMPLATES: Tuple[str, ...] = ("a photo of a {} object.", "a {} shape.",
                                     "an image of a {} object.", "something {}.")
COUNT_TEMPLATES: Tuple[str, ...] = ("a photo of {}.", "an image of {}.", "{} on a background.")
POSITION_TEMPLATES: Tuple[str, ...] = ("a shape at the {}.", "an object in the {} of the image.",
                                       "a photo of an object at the {}.")

# Random streams: one per kind of dataset, so tasks never replay the scenes of another.
_STREAMS = {"scenes": 0, "shape": 1, "colour": 2, "count": 3, "position": 4, "spurious": 5,
            "cue_conflict": 6, "hard_negatives": 7}
HARD_NEGATIVE_GROUP = 8  # scenes per hard-negative group (8 shapes, 8 colours, 8 backgrounds)
VARIED_ATTRIBUTES = ("shape", "colour", "size", "position", "background")
_SCENE, _CAPTION = 0, 1  # purposes within one sample's key; captions use _CAPTION + variant


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _rng(seed: int, split: str, stream: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, _split_id(split), _STREAMS[stream], index, purpose])


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _num_samples(split: str, num_samples: Optional[int]) -> int:
    _split_id(split)
    n = DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    return int(n)


def split_rules(split: str, spurious: bool = False, holdout_combos: bool = False,
                correlation: float = 0.95, object_scale: float = 1.0) -> SamplingRules:
    """The sampling constraints a split imposes (see the module docstring), with objects'
    radii scaled by `object_scale` (see SamplingRules)."""
    _split_id(split)
    aligned = None
    if spurious:
        aligned = correlation if split != "test" else 1.0 - correlation
    combos = "all" if not holdout_combos else ("only" if split == "test" else "exclude")
    return SamplingRules(aligned_prob=aligned, combos=combos, object_scale=object_scale)


class SceneDataset(Dataset):
    """Base of the scene datasets: subclasses define `scene(i)`; this renders it."""

    def __init__(self, length: int, resolution: Resolution, transform: Optional[Callable]):
        self.length = length
        self.resolution = as_hw(resolution)
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of {self.length} samples")
        return int(i)

    def render(self, i: int, resolution: Optional[Resolution] = None) -> Image.Image:
        """Scene i as a PIL image, at the dataset's resolution or another (int or (H, W))."""
        return render_scene(self.scene(i), resolution or self.resolution)

    def image(self, i: int):
        img = self.render(i)
        return self.transform(img) if self.transform is not None else img


class SyntheticScenes(SceneDataset):
    """Image-caption pairs: `ds[i] -> (image, caption)`; PIL RGB unless `transform` is given.

    caption_style: "short", "dense" (every object, relations; long for many objects) or
    "mixed" (dense for multi-object scenes, short otherwise). num_objects: None for the
    training mixture, an int or an inclusive (low, high) range for multi-object scenes only.
    partial_captions: probability that a caption names only some attributes of the salient
    object (`partial_caption`); a training option (0 keeps every caption complete).
    hard_negatives: probability that a group of HARD_NEGATIVE_GROUP consecutive indices is a
    hard-negative group (module docstring); then `group_size` tells samplers to keep groups
    together. hard_negative_attributes: the attributes a group may vary (one, drawn uniformly,
    per group; default all of VARIED_ATTRIBUTES). object_scale: factor on the objects' radii
    (SamplingRules; 1.0 is the benchmark)."""

    def __init__(self, split: str = "train", num_samples: Optional[int] = None,
                 resolution: Resolution = 64, seed: int = 0, caption_style: str = "short",
                 transform: Optional[Callable] = None, spurious: bool = False,
                 holdout_combos: bool = False, *,
                 num_objects: Union[None, int, Tuple[int, int]] = None,
                 correlation: float = 0.95, partial_captions: float = 0.0,
                 hard_negatives: float = 0.0, object_scale: float = 1.0,
                 hard_negative_attributes: Sequence[str] = VARIED_ATTRIBUTES):
        if caption_style not in CAPTION_STYLES:
            raise ValueError(f"caption_style must be one of {CAPTION_STYLES}, "
                             f"got {caption_style!r}")
        if not 0.0 <= partial_captions <= 1.0:
            raise ValueError(f"partial_captions must be a probability in [0, 1], "
                             f"got {partial_captions!r}")
        super().__init__(_num_samples(split, num_samples), resolution, transform)
        self.partial_captions = float(partial_captions)
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be a probability in [0, 1], got {hard_negatives!r}")
        if hard_negatives > 0.0 and num_objects is not None:
            raise ValueError("hard_negatives groups single-object scenes; it needs num_objects=None")
        unknown = sorted(set(hard_negative_attributes) - set(VARIED_ATTRIBUTES))
        if unknown or not hard_negative_attributes:
            raise ValueError(f"hard_negative_attributes must be a non-empty subset of {VARIED_ATTRIBUTES}, "
                             f"got {tuple(hard_negative_attributes)!r}")
        self.hard_negative_attributes = tuple(a for a in VARIED_ATTRIBUTES if a in hard_negative_attributes)
        self.hard_negatives = float(hard_negatives)
        self.group_size = HARD_NEGATIVE_GROUP if hard_negatives > 0.0 else 1
        self.split = split
        self.seed = _check_seed(seed)
        self.caption_style = caption_style
        self.rules = split_rules(split, spurious, holdout_combos, correlation, object_scale)
        if spurious and self.hard_negative_attributes == ("background",):
            raise ValueError("under spurious rules the background follows the shape; hard-negative "
                             "groups cannot vary only the background")
        self.num_objects = None if num_objects is None else _object_range(num_objects)

    def scene(self, i: int) -> Scene:
        rng = _rng(self.seed, self.split, "scenes", self._index(i), _SCENE)
        if self.hard_negatives > 0.0:
            group, member = divmod(i, HARD_NEGATIVE_GROUP)
            group_rng = _rng(self.seed, self.split, "hard_negatives", group, _SCENE)
            if group_rng.random() < self.hard_negatives:
                return self._group_member(group_rng, member, rng)
        if self.num_objects is not None:
            low, high = self.num_objects
            return sample_multi(rng, int(rng.integers(low, high + 1)), self.rules)
        u = rng.random()
        if u < 0.6:
            return sample_single(rng, self.rules)
        if u < 0.8:
            return sample_count(rng, int(rng.integers(2, MAX_COUNT + 1)), self.rules)
        return sample_multi(rng, int(rng.integers(2, 9)), self.rules)

    def _group_member(self, group_rng: np.random.Generator, member: int,
                      rng: np.random.Generator) -> Scene:
        """Member `member` of a hard-negative group: the group's shared attributes (drawn from
        group_rng) with the varied one set to the member's value; jitter from the member's rng.
        Under spurious rules the background follows the rule and is never the varied one."""
        spurious = self.rules.aligned_prob is not None
        candidates = [a for a in self.hard_negative_attributes if not (spurious and a == "background")]
        varied = candidates[int(group_rng.integers(len(candidates)))]
        options = {"shape": SHAPES, "colour": COLOURS, "size": SIZES,
                   "position": tuple(range(len(POSITIONS))), "background": BACKGROUNDS}
        shared = {name: values[int(group_rng.integers(len(values)))]
                  for name, values in options.items()}
        values = [options[varied][k] for k in group_rng.permutation(len(options[varied]))]
        shared[varied] = values[member % len(values)]
        allowed = allowed_colours(shared["shape"], self.rules)
        if shared["colour"] not in allowed:  # a held-out pair: keep the varied value, move the other
            if varied == "colour":
                shared["shape"] = next(s for s in SHAPES if shared["colour"] in allowed_colours(s, self.rules))
            else:
                shared["colour"] = allowed[int(group_rng.integers(len(allowed)))]
        return sample_single(rng, self.rules, shape=shared["shape"], colour=shared["colour"],
                             size=shared["size"], position=shared["position"],
                             background=None if spurious else shared["background"])

    def caption(self, i: int, variant: int = 0, scene: Optional[Scene] = None) -> str:
        """Caption of scene i (pass `scene` if already sampled); other `variant`s give other
        phrasings of the same scene."""
        rng = _rng(self.seed, self.split, "scenes", self._index(i), _CAPTION + variant)
        scene = scene or self.scene(i)
        if self.partial_captions > 0.0 and rng.random() < self.partial_captions:
            return partial_caption(scene, rng)
        return make_caption(scene, self.caption_style, rng)

    def __getitem__(self, i: int):
        scene = self.scene(i)
        image = render_scene(scene, self.resolution)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.caption(i, scene=scene)


def _object_range(num_objects: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    low, high = (num_objects, num_objects) if isinstance(num_objects, int) else num_objects
    if not 1 <= low <= high <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 1..{MAX_OBJECTS} (int or (low, high) with "
                         f"low <= high), got {num_objects!r}")
    return int(low), int(high)


class LabelledScenes(SceneDataset):
    """Pre-sampled scenes with integer labels: `ds[i] -> (image, label)`."""

    def __init__(self, scenes: List[Scene], labels: List[int], resolution: Resolution,
                 transform: Optional[Callable]):
        super().__init__(len(scenes), resolution, transform)
        self.scenes = scenes
        self.labels = labels

    def scene(self, i: int) -> Scene:
        return self.scenes[self._index(i)]

    def __getitem__(self, i: int):
        return self.image(i), self.labels[self._index(i)]


@dataclass
class ZeroShotTask:
    """A zero-shot classification task: prompts are template.format(classname).

    groups: per-sample group ids (e.g. (shape, background) pairs) for worst-group accuracy;
    group_names[g] describes group g.
    """

    name: str
    classnames: List[str]
    templates: List[str]
    dataset: Dataset
    groups: Optional[List[int]] = None
    group_names: Optional[List[str]] = None


def _labelled(stream: str, split: str, num_samples: int, seed: int,
              sample: Callable[[np.random.Generator, int], Scene], num_classes: int,
              resolution: Resolution, transform: Optional[Callable]) -> LabelledScenes:
    """Balanced labels (index mod num_classes), one scene per index from `sample(rng, label)`."""
    seed = _check_seed(seed)
    n = _num_samples(split, num_samples)
    labels = [i % num_classes for i in range(n)]
    scenes = [sample(_rng(seed, split, stream, i, _SCENE), labels[i]) for i in range(n)]
    return LabelledScenes(scenes, labels, resolution, transform)


def zero_shot_tasks(split: str = "test", num_samples: int = 500, resolution: Resolution = 64,
                    seed: int = 0, transform: Optional[Callable] = None, *,
                    holdout_combos: bool = False,
                    object_scale: float = 1.0) -> Dict[str, ZeroShotTask]:
    """Shape, colour and position tasks on single-object scenes; count on count scenes.

    holdout_combos=True samples the split's (shape, colour) pairs as SyntheticScenes does:
    on "test" only held-out pairs, so a model trained with holdout_combos meets unseen pairs.
    """
    rules = split_rules(split, holdout_combos=holdout_combos, object_scale=object_scale)

    def colour_scene(rng: np.random.Generator, label: int) -> Scene:
        colour = COLOURS[label]
        shapes = [s for s in SHAPES if colour in allowed_colours(s, rules)]
        return sample_single(rng, rules, shape=shapes[rng.integers(len(shapes))], colour=colour)

    samplers = {
        "shape": (lambda rng, k: sample_single(rng, rules, shape=SHAPES[k]), SHAPES,
                  SHAPE_TEMPLATES),
        "colour": (colour_scene, COLOURS, COLOUR_TEMPLATES),
        "count": (lambda rng, k: sample_count(rng, k + 1, rules), COUNT_CLASSNAMES,
                  COUNT_TEMPLATES),
        "position": (lambda rng, k: sample_single(rng, rules, position=k), POSITIONS,
                     POSITION_TEMPLATES),
    }
    return {name: ZeroShotTask(name=name, classnames=list(classes), templates=list(templates),
                               dataset=_labelled(name, split, num_samples, seed, sample,
                                                 len(classes), resolution, transform))
            for name, (sample, classes, templates) in samplers.items()}


def spurious_task(split: str = "test", num_samples: int = 500, resolution: Resolution = 64,
                  seed: int = 0, transform: Optional[Callable] = None,
                  correlation: float = 0.95) -> ZeroShotTask:
    """Shape classification where the background is tied to the shape with probability
    `correlation` in train/val and 1 - correlation in test; groups are (shape, background)."""
    rules = split_rules(split, spurious=True, correlation=correlation)
    dataset = _labelled("spurious", split, num_samples, seed,
                        lambda rng, k: sample_single(rng, rules, shape=SHAPES[k]), len(SHAPES),
                        resolution, transform)
    groups = [SHAPES.index(s.objects[0].shape) * len(BACKGROUNDS) + BACKGROUNDS.index(s.background)
              for s in dataset.scenes]
    return ZeroShotTask(name="spurious_shape", classnames=list(SHAPES),
                        templates=list(SHAPE_TEMPLATES), dataset=dataset, groups=groups,
                        group_names=[f"{s} on {b}" for s in SHAPES for b in BACKGROUNDS])


def is_aligned(scene: Scene) -> bool:
    """Whether the background is the one the first shape is tied to in the spurious split."""
    return scene.background == SPURIOUS_BACKGROUND[scene.objects[0].shape]


class RetrievalSet(SceneDataset):
    """`ds[i] -> (image, captions)`: several distinct phrasings of scene i."""

    def __init__(self, scenes: SyntheticScenes, captions_per_image: int):
        super().__init__(len(scenes), scenes.resolution, scenes.transform)
        self.scenes = scenes
        self.captions_per_image = captions_per_image

    def scene(self, i: int) -> Scene:
        return self.scenes.scene(i)

    def captions(self, i: int) -> List[str]:
        """captions_per_image phrasings, distinct where the scene allows (bounded retries)."""
        scene = self.scene(i)
        found: List[str] = []
        for variant in range(8 * self.captions_per_image):
            text = self.scenes.caption(i, variant, scene)
            if text not in found:
                found.append(text)
            if len(found) == self.captions_per_image:
                return found
        return [found[k % len(found)] for k in range(self.captions_per_image)]

    def __getitem__(self, i: int):
        return self.image(self._index(i)), self.captions(i)


def retrieval_set(split: str = "test", num_samples: int = 1000, resolution: Resolution = 64,
                  seed: int = 0, caption_style: str = "short", captions_per_image: int = 5,
                  transform: Optional[Callable] = None, object_scale: float = 1.0) -> RetrievalSet:
    """Image-text retrieval over SyntheticScenes(split, ...): short captions over the training
    mixture of scenes, or dense captions over scenes of 4..12 objects (most exceed 77 tokens)."""
    if caption_style not in ("short", "dense"):
        raise ValueError(f"caption_style must be 'short' or 'dense', got {caption_style!r}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    scenes = SyntheticScenes(split, num_samples, resolution, seed, caption_style, transform,
                             num_objects=(4, 12) if caption_style == "dense" else None,
                             object_scale=object_scale)
    return RetrievalSet(scenes, captions_per_image)


class CueConflictSet(SceneDataset):
    """`ds[i] -> (image, shape_label, texture_label)`: a large shape filled with small tiled
    copies of another shape. Labels index `classnames` (= SHAPES) for shape-bias measures."""

    classnames: List[str] = list(SHAPES)
    templates: List[str] = list(SHAPE_TEMPLATES)

    def __init__(self, num_samples: int, resolution: Resolution, seed: int,
                 transform: Optional[Callable]):
        seed = _check_seed(seed)
        n = _num_samples("test", num_samples)
        super().__init__(n, resolution, transform)
        self.shape_labels: List[int] = []
        self.texture_labels: List[int] = []
        self.scenes: List[Scene] = []
        for i in range(n):
            rng = _rng(seed, "test", "cue_conflict", i, _SCENE)
            shape = i % len(SHAPES)
            texture = (shape + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)
            self.shape_labels.append(shape)
            self.texture_labels.append(texture)
            self.scenes.append(sample_cue_conflict(rng, SHAPES[shape], SHAPES[texture]))

    def scene(self, i: int) -> Scene:
        return self.scenes[self._index(i)]

    def __getitem__(self, i: int):
        return self.image(i), self.shape_labels[self._index(i)], self.texture_labels[i]


def cue_conflict_set(num_samples: int = 400, resolution: Resolution = 64, seed: int = 0,
                     transform: Optional[Callable] = None) -> CueConflictSet:
    """Shape-vs-texture cue-conflict images (see CueConflictSet); `.classnames`, `.templates`."""
    return CueConflictSet(num_samples, resolution, seed, transform)


def multi_resolution(dataset: SceneDataset, index: int,
                     factors: Sequence[int] = (1, 2, 4)) -> List[Image.Image]:
    """The same scene rendered at the dataset's resolution times each factor (PIL images)."""
    height, width = dataset.resolution
    return [dataset.render(index, (height * f, width * f)) for f in factors]


__all__ = ["SPLITS", "SHAPES", "COLOURS", "POSITIONS", "BACKGROUNDS", "COUNT_CLASSNAMES",
           "HELDOUT_COMBOS", "SPURIOUS_BACKGROUND", "TEMPLATES", "SHAPE_TEMPLATES",
           "COLOUR_TEMPLATES", "COUNT_TEMPLATES", "POSITION_TEMPLATES", "SyntheticScenes",
           "ZeroShotTask", "zero_shot_tasks", "spurious_task", "retrieval_set",
           "cue_conflict_set", "multi_resolution", "is_aligned", "split_rules",
           "RetrievalSet", "CueConflictSet", "LabelledScenes", "SceneDataset"]
