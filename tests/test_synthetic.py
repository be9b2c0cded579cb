"""The embedded synthetic-scenes benchmark: determinism, splits, captions, tasks, rendering."""
import hashlib
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from scipy import ndimage
from torchvision.transforms import v2

from climp.data import captions as cap
from climp.data.scenes import (BACKGROUNDS, COLOUR_RGB, COLOURS, HELDOUT_COMBOS, POSITIONS,
                               SHAPE_OUTLINES, SHAPES, SIZE_RADIUS, SPURIOUS_BACKGROUND, BackgroundStyle,
                               SamplingRules, render_scene, sample_count, sample_single)
from climp.data.synthetic import (COUNT_CLASSNAMES, SyntheticScenes, cue_conflict_set,
                                  is_aligned, multi_resolution, retrieval_set, spurious_task,
                                  zero_shot_tasks)

BPE = SimpleTokenizer()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def colour_mask(image: Image.Image, colour: str, tol: int = 40) -> np.ndarray:
    diff = np.abs(pixels(image) - np.array(COLOUR_RGB[colour])).max(axis=-1)
    return diff <= tol


# ----------------------------------------------------------------------------- determinism

def test_same_seed_split_index_gives_same_sample():
    a = SyntheticScenes("train", num_samples=20, seed=3, caption_style="mixed")
    b = SyntheticScenes("train", num_samples=20, seed=3, caption_style="mixed")
    for i in (0, 7, 19):
        (img_a, cap_a), (img_b, cap_b) = a[i], b[i]
        assert cap_a == cap_b and cap_a.strip()
        assert np.array_equal(pixels(img_a), pixels(img_b))
        assert a.scene(i) == b.scene(i)


def test_seeds_and_splits_differ():
    base = SyntheticScenes("train", num_samples=30, seed=0)
    others = [SyntheticScenes("test", num_samples=30, seed=0),
              SyntheticScenes("val", num_samples=30, seed=0),
              SyntheticScenes("train", num_samples=30, seed=1)]
    for other in others:
        same = sum(np.array_equal(pixels(base.render(i)), pixels(other.render(i)))
                   for i in range(30))
        assert same == 0
        assert sum(base.scene(i) == other.scene(i) for i in range(30)) == 0


# ----------------------------------------------------------------------------- rendering

@pytest.mark.parametrize("resolution", [17, 64, (48, 80), (100, 36)])
def test_any_resolution_including_non_square(resolution):
    ds = SyntheticScenes("val", num_samples=4, resolution=resolution)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    img, _ = ds[1]
    assert img.mode == "RGB" and img.size == (w, h)


def test_multi_resolution_is_the_same_scene():
    ds = SyntheticScenes("test", num_samples=8, resolution=32, seed=5)
    for i in range(8):
        small, mid, big = multi_resolution(ds, i, (1, 2, 4))
        assert small.size == (32, 32) and mid.size == (64, 64) and big.size == (128, 128)
        # Box-downsampling the 4x render must give (nearly) the 1x render.
        down = pixels(big.reduce(4))
        assert np.abs(down - pixels(small)).mean() < 6.0


def test_rendering_is_antialiased():
    scene = sample_single(np.random.default_rng(0), shape="circle", colour="red",
                          background="white")
    arr = pixels(render_scene(scene, 64))
    colours = {tuple(p) for p in arr.reshape(-1, 3)}
    assert len(colours) > 10  # edge pixels blend object and background


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def _polygon_centroid(points: np.ndarray) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (3 * cross.sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_object_area_and_colour_match_geometry(shape):
    """Count object-coloured pixels at 256x256 and compare with the outline's area."""
    rng = np.random.default_rng(SHAPES.index(shape))
    scene = sample_single(rng, shape=shape, colour="blue", background="white")
    obj = scene.objects[0]
    img = render_scene(scene, 256)
    mask = colour_mask(img, "blue", tol=60)
    outline = SHAPE_OUTLINES[shape]
    unit_area = math.pi if outline is None else _polygon_area(outline)
    expected = unit_area * (obj.radius * 256) ** 2
    assert abs(mask.sum() - expected) / expected < 0.06
    # The object's colour is at its centre, and its pixels sit around the centre.
    cy, cx = int(obj.y * 256), int(obj.x * 256)
    assert mask[cy - 1:cy + 2, cx - 1:cx + 2].all()
    # The pixels' centroid is as far from the centre as the outline's area centroid is.
    ys, xs = np.nonzero(mask)
    offset = 0.0 if outline is None else np.hypot(*_polygon_centroid(outline))
    distance = np.hypot(xs.mean() + 0.5 - obj.x * 256, ys.mean() + 0.5 - obj.y * 256)
    assert abs(distance - offset * obj.radius * 256) < 0.05 * obj.radius * 256


def test_transform_is_applied():
    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    img, caption = SyntheticScenes("train", num_samples=3, resolution=(24, 40),
                                   transform=transform)[2]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 24, 40) and isinstance(caption, str)


# ----------------------------------------------------------------------------- captions

def _mentions(text: str, canonical: str, table) -> bool:
    return any(word in text for word in (canonical, *table.get(canonical, ())))


def test_short_single_object_caption_names_every_attribute():
    ds = SyntheticScenes("train", num_samples=300, caption_style="short")
    checked = 0
    for i in range(300):
        scene = ds.scene(i)
        if scene.kind != "single":
            continue
        obj, text = scene.objects[0], ds.caption(i)
        assert _mentions(text, obj.shape, cap.SHAPE_SYNONYMS)
        assert _mentions(text, obj.colour, cap.COLOUR_SYNONYMS)
        assert _mentions(text, obj.size, cap.SIZE_WORDS)
        assert any(p in text for p in cap.POSITION_PHRASES[obj.position])
        assert any(b in text for b in cap.BACKGROUND_WORDS[scene.background])
        checked += 1
    assert checked > 120  # most training scenes have a single salient object


def test_several_phrasings():
    ds = SyntheticScenes("train", num_samples=200, caption_style="short")
    first_words = {ds.caption(i).split()[0] for i in range(200)}
    assert len(first_words) >= 5
    variants = {ds.caption(0, v) for v in range(20)}
    assert len(variants) >= 8


def test_count_caption_uses_number_and_plural():
    scene = sample_count(np.random.default_rng(1), 3)
    for v in range(10):
        text = cap.short_caption(scene, np.random.default_rng(v))
        assert "three" in text or "3" in text


@pytest.mark.parametrize("style", ["short", "dense", "mixed"])
def test_captions_never_empty(style):
    ds = SyntheticScenes("val", num_samples=300, caption_style=style, num_objects=None)
    assert all(ds.caption(i).strip() for i in range(300))
    multi = SyntheticScenes("val", num_samples=50, caption_style=style, num_objects=(1, 16))
    assert all(multi.caption(i).strip() for i in range(50))


def _named_attributes(text: str, scene) -> set:
    obj = scene.objects[0]
    found = {"shape": _mentions(text, obj.shape, cap.SHAPE_SYNONYMS),
             "colour": _mentions(text, obj.colour, cap.COLOUR_SYNONYMS),
             "size": _mentions(text, obj.size, cap.SIZE_WORDS),
             "position": any(p in text for p in cap.POSITION_PHRASES[obj.position]),
             "background": any(b in text for b in cap.BACKGROUND_WORDS[scene.background])}
    return {name for name, hit in found.items() if hit}


def test_partial_captions_name_true_strict_subsets_of_attributes():
    ds = SyntheticScenes("train", num_samples=400, caption_style="short", partial_captions=1.0)
    seen_alone = set()
    for i in range(400):
        scene = ds.scene(i)
        if scene.kind != "single":
            continue
        text = ds.caption(i)
        named = _named_attributes(text, scene)
        assert 1 <= len(named) < len(cap.PARTIAL_ATTRIBUTES), text
        for other_shape in set(cap.SHAPE_SYNONYMS) - {scene.objects[0].shape}:
            # never a wrong shape word (synonyms like "heart shape" contain "shape", not a name)
            assert not any(w in text.split() for w in (other_shape,)), text
        if len(named) == 1:
            seen_alone |= named
    assert seen_alone == set(cap.PARTIAL_ATTRIBUTES)  # every attribute is sometimes the only cue


def test_partial_caption_share():
    ds = SyntheticScenes("train", num_samples=300, caption_style="short", partial_captions=0.5)
    singles = [i for i in range(300) if ds.scene(i).kind == "single"]
    partial = [i for i in singles if len(_named_attributes(ds.caption(i), ds.scene(i))) < 5]
    assert 0.35 < len(partial) / len(singles) < 0.65
    complete = SyntheticScenes("train", num_samples=300, caption_style="short")
    assert all(len(_named_attributes(complete.caption(i), complete.scene(i))) == 5 for i in singles)


def test_partial_count_captions_keep_the_plural():
    scene = sample_count(np.random.default_rng(1), 3)
    texts = {cap.partial_caption(scene, np.random.default_rng(v)) for v in range(40)}
    assert any("three" in t or "3" in t for t in texts)
    assert any("several" in t or "some" in t for t in texts)
    assert all(("shapes" in t or "objects" in t or _plural_shape_named(t, scene)) for t in texts)


def _plural_shape_named(text: str, scene) -> bool:
    obj = scene.objects[0]
    return any(cap._plural(w) in text for w in (obj.shape, *cap.SHAPE_SYNONYMS[obj.shape]))


def _attributes(scene):
    obj = scene.objects[0]
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.position,
            "background": scene.background}


def test_hard_negative_groups_differ_in_exactly_one_attribute():
    ds = SyntheticScenes("train", num_samples=8 * 40, hard_negatives=1.0)
    assert ds.group_size == 8
    varied_seen = set()
    for g in range(40):
        members = [_attributes(ds.scene(8 * g + m)) for m in range(8)]
        assert all(ds.scene(8 * g + m).kind == "single" for m in range(8))
        varying = {k for k in members[0] if len({m[k] for m in members}) > 1}
        assert len(varying) == 1, members
        (name,) = varying
        distinct = len({m[name] for m in members})
        assert distinct == (2 if name == "size" else 8), (name, members)
        varied_seen.add(name)
    assert varied_seen == {"shape", "colour", "size", "position", "background"}


def test_hard_negative_share_and_rules():
    ds = SyntheticScenes("train", num_samples=8 * 200, hard_negatives=0.5)
    hard = sum(len({tuple(_attributes(ds.scene(8 * g + m)).values()) for m in range(8)}) > 1
               and all(ds.scene(8 * g + m).kind == "single" for m in range(8))
               and sum(len({_attributes(ds.scene(8 * g + m))[k] for m in range(8)}) > 1
                       for k in ("shape", "colour", "size", "position", "background")) == 1
               for g in range(200))
    assert 75 < hard < 125
    assert SyntheticScenes("train", num_samples=16).group_size == 1
    held = set(HELDOUT_COMBOS)
    excl = SyntheticScenes("train", num_samples=8 * 30, holdout_combos=True, hard_negatives=1.0)
    assert all((excl.scene(i).objects[0].shape, excl.scene(i).objects[0].colour) not in held
               for i in range(8 * 30))
    spur = SyntheticScenes("train", num_samples=8 * 30, spurious=True, hard_negatives=1.0)
    aligned = [is_aligned(spur.scene(i)) for i in range(8 * 30)]
    assert sum(aligned) / len(aligned) > 0.85  # the spurious rule still decides the background


def test_dense_captions_of_many_objects_exceed_77_tokens():
    ds = SyntheticScenes("test", num_samples=30, caption_style="dense", num_objects=(10, 16))
    for i in range(30):
        scene, text = ds.scene(i), ds.caption(i)
        assert len(scene.objects) >= 10
        assert len(BPE.encode(text)) + 2 > 77
        # One sentence for the background and count, then one per object.
        assert text.count(". ") + 1 == len(scene.objects) + 1
        for obj in scene.objects:
            assert _mentions(text, obj.colour, cap.COLOUR_SYNONYMS)


def test_dense_relations_agree_with_geometry():
    ds = SyntheticScenes("test", num_samples=20, caption_style="dense", num_objects=(3, 6))
    words = {"left of": lambda o, r: o.x < r.x, "right of": lambda o, r: o.x > r.x,
             "above": lambda o, r: o.y < r.y, "below": lambda o, r: o.y > r.y,
             "beneath": lambda o, r: o.y > r.y}
    checked = 0
    for i in range(20):
        scene = ds.scene(i)
        by_name = {(o.colour, o.shape): o for o in scene.objects}
        for sentence in ds.caption(i).split(". ")[1:]:
            for phrase, holds in words.items():
                if f"{phrase} the " not in sentence:
                    continue
                subject = [o for o in scene.objects
                           if f" {o.colour} {o.shape} " in sentence.split(phrase)[0] + " "]
                ref = [o for key, o in by_name.items()
                       if sentence.rstrip(".").endswith(f"{phrase} the {key[0]} {key[1]}")]
                if len(subject) == 1 and len(ref) == 1:
                    assert holds(subject[0], ref[0]), sentence
                    checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------- splits

def test_spurious_correlation_rates():
    train = SyntheticScenes("train", num_samples=2000, spurious=True)
    test = SyntheticScenes("test", num_samples=2000, spurious=True)
    train_rate = np.mean([is_aligned(train.scene(i)) for i in range(2000)])
    test_rate = np.mean([is_aligned(test.scene(i)) for i in range(2000)])
    assert 0.93 <= train_rate <= 0.97
    assert test_rate <= 0.08
    plain = SyntheticScenes("train", num_samples=2000)
    assert np.mean([is_aligned(plain.scene(i)) for i in range(2000)]) < 0.2


def test_spurious_task_groups():
    task = spurious_task("test", num_samples=400, resolution=32)
    assert len(task.groups) == 400 and task.classnames == list(SHAPES)
    for i in range(0, 400, 37):
        scene = task.dataset.scene(i)
        shape, background = divmod(task.groups[i], len(BACKGROUNDS))
        _, label = task.dataset[i]
        assert SHAPES[label] == scene.objects[0].shape == SHAPES[shape]
        assert BACKGROUNDS[background] == scene.background
        assert task.group_names[task.groups[i]] == f"{SHAPES[shape]} on {scene.background}"
    aligned = [g for g in task.groups if BACKGROUNDS[g % len(BACKGROUNDS)]
               == SPURIOUS_BACKGROUND[SHAPES[g // len(BACKGROUNDS)]]]
    assert len(aligned) / 400 <= 0.1
    train_task = spurious_task("train", num_samples=400, resolution=32, correlation=0.9)
    rate = np.mean([is_aligned(s) for s in train_task.dataset.scenes])
    assert 0.85 <= rate <= 0.95


def test_heldout_combos_absent_from_train_only_in_test():
    heldout = set(HELDOUT_COMBOS)
    assert len(heldout) == 16
    train = SyntheticScenes("train", num_samples=1500, holdout_combos=True)
    test = SyntheticScenes("test", num_samples=300, holdout_combos=True)
    train_pairs = {(o.shape, o.colour) for i in range(1500) for o in train.scene(i).objects}
    test_pairs = {(o.shape, o.colour) for i in range(300) for o in test.scene(i).objects}
    assert not train_pairs & heldout
    assert len(train_pairs) == len(SHAPES) * len(COLOURS) - len(heldout)
    assert test_pairs == heldout
    tasks = zero_shot_tasks("test", num_samples=80, holdout_combos=True)
    for name in ("shape", "colour"):
        pairs = {(s.objects[0].shape, s.objects[0].colour) for s in tasks[name].dataset.scenes}
        assert pairs <= heldout


# ----------------------------------------------------------------------------- tasks

def test_zero_shot_labels_match_scene_metadata():
    tasks = zero_shot_tasks("test", num_samples=90, resolution=48)
    assert set(tasks) == {"shape", "colour", "count", "position"}
    for name, task in tasks.items():
        assert all("{}" in t for t in task.templates)
        labels = task.dataset.labels
        assert set(labels) == set(range(len(task.classnames)))
        for i, scene in enumerate(task.dataset.scenes):
            obj = scene.objects[0]
            truth = {"shape": SHAPES.index(obj.shape), "colour": COLOURS.index(obj.colour),
                     "count": len(scene.objects) - 1,
                     "position": POSITIONS.index(obj.position)}[name]
            assert labels[i] == truth
            if name != "count":
                assert len(scene.objects) == 1
        assert task.dataset[5][1] == labels[5]
    assert tasks["count"].classnames == list(COUNT_CLASSNAMES)


def test_colour_and_position_task_images_show_the_label():
    tasks = zero_shot_tasks("test", num_samples=40, resolution=64)
    for i in range(40):
        img, label = tasks["colour"].dataset[i]
        scene = tasks["colour"].dataset.scene(i)
        obj = scene.objects[0]
        mask = colour_mask(img, COLOURS[label])
        assert mask[int(obj.y * 64), int(obj.x * 64)]
        img, label = tasks["position"].dataset[i]
        obj = tasks["position"].dataset.scene(i).objects[0]
        ys, xs = np.nonzero(colour_mask(img, obj.colour))
        row, col = int(ys.mean() / 64 * 3), int(xs.mean() / 64 * 3)
        assert POSITIONS[row * 3 + col] == POSITIONS[label]


def test_count_task_images_have_that_many_blobs():
    white = BackgroundStyle(tones=((242,) * 3, (242,) * 3))
    for k in range(1, 7):
        for seed in range(3):
            scene = sample_count(np.random.default_rng([k, seed]), k, SamplingRules())
            scene = replace(scene, background="white", style=white)
            img = render_scene(scene, 96)
            foreground = np.abs(pixels(img) - 242).max(-1) > 30
            assert ndimage.label(foreground)[1] == k
            assert colour_mask(img, scene.objects[0].colour).sum() > 0.5 * foreground.sum()


def test_retrieval_set():
    ds = retrieval_set("test", num_samples=12, resolution=32, captions_per_image=5)
    img, texts = ds[3]
    assert img.size == (32, 32) and len(texts) == 5 and len(set(texts)) == 5
    dense = retrieval_set("test", num_samples=6, caption_style="dense", captions_per_image=2)
    lengths = [len(BPE.encode(t)) for i in range(6) for t in dense[i][1]]
    assert np.median(lengths) > 77
    with pytest.raises(ValueError):
        retrieval_set(caption_style="mixed")


def test_cue_conflict_set():
    ds = cue_conflict_set(num_samples=16, resolution=128, seed=0)
    assert ds.classnames == list(SHAPES)
    for i in range(16):
        img, shape, texture = ds[i]
        assert shape != texture and shape == i % len(SHAPES)
        scene = ds.scene(i)
        obj = scene.objects[0]
        assert obj.shape == SHAPES[shape] and obj.fill == SHAPES[texture]
        # Silhouette: everything that is not the white background covers the big shape.
        arr = pixels(img)
        foreground = np.abs(arr - 242).max(-1) > 40
        outline = SHAPE_OUTLINES[obj.shape]
        unit = math.pi if outline is None else _polygon_area(outline)
        expected = unit * (obj.radius * 128) ** 2
        assert abs(foreground.sum() - expected) / expected < 0.1
        # Texture: the motif colour fills part of the shape, not the background.
        motif = colour_mask(img, obj.colour, tol=60)
        assert 0.1 < motif[foreground].mean() < 0.9 and motif[~foreground].mean() < 0.01


# ----------------------------------------------------------------------------- bad input

def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes("training")
    with pytest.raises(ValueError, match="caption_style"):
        SyntheticScenes(caption_style="long")
    with pytest.raises(ValueError, match="resolution"):
        SyntheticScenes(resolution=0)
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticScenes(num_objects=(0, 3))
    with pytest.raises(ValueError, match="seed"):
        SyntheticScenes(seed=-1)
    with pytest.raises(ValueError, match="partial_captions"):
        SyntheticScenes(partial_captions=1.5)
    with pytest.raises(ValueError, match="hard_negatives"):
        SyntheticScenes(hard_negatives=-0.1)
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticScenes(hard_negatives=0.5, num_objects=3)
    with pytest.raises(IndexError):
        SyntheticScenes(num_samples=5)[5]


# ----------------------------------------------------------------------------- object scale

def _scene_digest(datasets) -> str:
    h = hashlib.sha256()
    for ds in datasets:
        for i in range(len(ds)):
            h.update(repr(ds.scene(i)).encode())
    return h.hexdigest()


def test_default_object_scale_keeps_the_benchmark_scenes():
    """Pinned digest of the scenes the benchmark sampled before `object_scale` existed (the
    renderer is unchanged, so equal scenes are equal images); explicit 1.0 renders the same."""
    default = [SyntheticScenes("train", num_samples=60, seed=0),
               SyntheticScenes("val", num_samples=8, num_objects=(10, 16))]
    assert _scene_digest(default) == "1b9b846ae41277cfd5e421e74e4aa4ac75f7cf8571aa5165756a7d4b05bbf158"
    explicit = SyntheticScenes("train", num_samples=10, seed=0, object_scale=1.0)
    for i in range(10):
        assert np.array_equal(pixels(default[0][i][0]), pixels(explicit[i][0]))
        assert default[0].caption(i) == explicit.caption(i)


def test_object_scale_scales_radii_and_keeps_scenes_valid():
    base = SyntheticScenes("train", num_samples=200, seed=1)
    for scale in (0.5, 1.1, 1.6):
        scaled = SyntheticScenes("train", num_samples=200, seed=1, object_scale=scale)
        for i in range(200):
            a, b = base.scene(i), scaled.scene(i)
            assert b.background == a.background and b.kind == a.kind
            grid = 4 if len(a.objects) > 9 else 3
            half = 0.5 / grid
            for oa, ob in zip(a.objects, b.objects, strict=True):
                # Same attributes and cell; radius scaled, capped at half a cell.
                assert (ob.shape, ob.colour, ob.size, ob.position) == (oa.shape, oa.colour, oa.size, oa.position)
                assert ob.radius == pytest.approx(min(SIZE_RADIUS[ob.size] * scale, half))
                col, row = int(ob.x * grid), int(ob.y * grid)
                # Inside its own cell, so inside the image and clear of every other object.
                assert col * 1 / grid - 1e-9 <= ob.x - ob.radius and ob.x + ob.radius <= (col + 1) / grid + 1e-9
                assert row * 1 / grid - 1e-9 <= ob.y - ob.radius and ob.y + ob.radius <= (row + 1) / grid + 1e-9


def test_object_scale_grows_the_drawn_object():
    """Rendered object pixels grow with the radius squared (until the cap)."""
    white = BackgroundStyle(tones=((242,) * 3, (242,) * 3))
    areas = {}
    for scale in (1.0, 1.6):
        rules = SamplingRules(object_scale=scale)
        scene = sample_single(np.random.default_rng(5), rules, shape="circle", colour="blue", size="small")
        scene = replace(scene, background="white", style=white)
        areas[scale] = colour_mask(render_scene(scene, 128), "blue").sum()
    assert areas[1.6] / areas[1.0] == pytest.approx(1.6 ** 2, rel=0.08)


def test_object_scale_reaches_tasks_and_rejects_bad_values():
    tasks = zero_shot_tasks("test", num_samples=16, object_scale=1.5)
    assert all(o.radius > 0.13 for o in tasks["shape"].dataset.scenes[0].objects)
    assert retrieval_set("test", num_samples=4, object_scale=1.5).scenes.rules.object_scale == 1.5
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="object_scale"):
            SyntheticScenes(object_scale=bad)


def test_hard_negative_groups_vary_only_the_chosen_attributes():
    ds = SyntheticScenes("train", num_samples=8 * 20, hard_negatives=1.0, hard_negative_attributes=("shape",))
    for g in range(20):
        members = [_attributes(ds.scene(8 * g + m)) for m in range(8)]
        assert {k for k in members[0] if len({m[k] for m in members}) > 1} == {"shape"}
        assert len({m["shape"] for m in members}) == 8
    default = SyntheticScenes("train", num_samples=8 * 20, hard_negatives=0.5)
    explicit = SyntheticScenes("train", num_samples=8 * 20, hard_negatives=0.5,
                               hard_negative_attributes=("background", "shape", "colour", "size", "position"))
    assert all(default.scene(i) == explicit.scene(i) for i in range(8 * 20))
    for bad in ((), ("texture",)):
        with pytest.raises(ValueError, match="hard_negative_attributes"):
            SyntheticScenes(hard_negatives=0.5, hard_negative_attributes=bad)
    with pytest.raises(ValueError, match="only the background"):
        SyntheticScenes(hard_negatives=0.5, spurious=True, hard_negative_attributes=("background",))
