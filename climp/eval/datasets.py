"""Real datasets from local roots; nothing here downloads.

Classification: an ImageFolder layout (<root>/<name>/<class>/<image>) with optional
classnames.json / templates.json beside the class folders, or any dataset CLIP_benchmark's
`build_dataset` knows, read with download=False from an existing root (class names and templates
then come from CLIP_benchmark). Captions: JSON [{"image": path, "caption"|"captions": ...}] or CSV
with columns image, caption (one row per caption). Plain image folders serve as OOD sets.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

from .shape_bias import IMAGE_SUFFIXES

DEFAULT_TEMPLATES = ["a photo of a {c}.", "a photo of the {c}.", "an image of a {c}.", "a picture of a {c}."]


@dataclass
class ClassificationSet:
    """What zero-shot classification needs; the same fields as climp.data.synthetic.ZeroShotTask."""
    name: str
    classnames: List[str]
    templates: List[Any]
    dataset: Any
    groups: Optional[Sequence[Any]] = None


def clip_benchmark_available() -> bool:
    try:
        import clip_benchmark.datasets.builder  # noqa: F401
    except ImportError:
        return False
    return True


def clip_benchmark_resource(filename: str) -> Dict[str, Any]:
    """One of CLIP_benchmark's packaged JSON files (en_classnames.json, ...); {} without it."""
    if not clip_benchmark_available():
        return {}
    import clip_benchmark.datasets.builder as builder
    path = Path(builder.__file__).parent / filename
    return json.loads(path.read_text()) if path.exists() else {}


def read_json_for(path: Path, name: str) -> Optional[Any]:
    """A JSON file holding either the value itself (a list) or a dict keyed by dataset name."""
    if not path.exists():
        return None
    value = json.loads(path.read_text())
    if isinstance(value, dict):
        if name not in value:
            raise ValueError(f"{path} has no entry for dataset {name!r} (keys: {sorted(value)[:10]})")
        value = value[name]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path}: expected a non-empty list for {name!r}")
    return value


def default_templates(name: str) -> List[Any]:
    templates = clip_benchmark_resource("en_zeroshot_classification_templates.json")
    return list(templates.get(name) or templates.get("imagenet1k") or DEFAULT_TEMPLATES)


def image_folder_set(folder: Path, name: str, transform: Optional[Callable]) -> ClassificationSet:
    from torchvision.datasets import ImageFolder
    dataset = ImageFolder(str(folder), transform=transform)
    classnames = read_json_for(folder / "classnames.json", name)
    if classnames is None:
        packaged = clip_benchmark_resource("en_classnames.json").get(name)
        folders = [c.replace("_", " ") for c in dataset.classes]
        classnames = packaged if packaged and len(packaged) == len(folders) else folders
    if len(classnames) != len(dataset.classes):
        raise ValueError(f"{folder}: {len(classnames)} class names for {len(dataset.classes)} class folders")
    templates = read_json_for(folder / "templates.json", name) or default_templates(name)
    return ClassificationSet(name, list(classnames), list(templates), dataset)


def load_classification_set(name: str, root: str | Path, transform: Optional[Callable] = None,
                            split: str = "test") -> ClassificationSet:
    """<root>/<name> in ImageFolder layout, else CLIP_benchmark's builder on <root> (download=False)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    for folder in (root / name / split, root / name):
        if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
            return image_folder_set(folder, name, transform)
    if not clip_benchmark_available():
        raise FileNotFoundError(f"no ImageFolder layout at {root / name} and clip_benchmark is not installed "
                                "(pip install clip_benchmark) to read other layouts")
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_default_task
    if get_dataset_default_task(name) != "zeroshot_classification":
        raise ValueError(f"{name!r} is not a classification dataset; give retrieval data as a caption file")
    dataset = build_dataset(name, root=str(root), transform=transform, split=split, download=False)
    return ClassificationSet(name, list(dataset.classes), list(dataset.templates), dataset)


def coco_caption_items(data: Dict[str, Any], source: Path) -> List[Tuple[str, List[str]]]:
    """(file name, captions) per image, in the order of "images", from COCO-style caption
    annotations: {"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}
    (NoCaps' and COCO's caption files)."""
    captions: Dict[Any, List[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{source}: annotation {i} needs 'image_id' and 'caption'")
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    items = []
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{source}: image entry {i} needs 'id' and 'file_name'")
        caps = captions.pop(image["id"], None)
        if not caps:
            raise ValueError(f"{source}: image {image['file_name']} (id {image['id']}) has no captions")
        items.append((image["file_name"], caps))
    if captions:
        raise ValueError(f"{source}: captions refer to image ids missing from 'images': {sorted(captions, key=str)[:5]}")
    return items


class CaptionDataset:
    """(PIL image, list of captions) per image from a local JSON or CSV file."""

    def __init__(self, path: str | Path, image_root: Optional[str | Path] = None,
                 transform: Optional[Callable] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"caption file {self.path} does not exist")
        self.image_root = Path(image_root) if image_root else self.path.parent
        self.transform = transform
        self.items = self.read_items()
        if not self.items:
            raise ValueError(f"caption file {self.path} lists no images")

    def read_items(self) -> List[Tuple[str, List[str]]]:
        grouped: Dict[str, List[str]] = {}
        if self.path.suffix.lower() == ".csv":
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                    raise ValueError(f"{self.path}: CSV needs columns 'image' and 'caption', got {reader.fieldnames}")
                for row in reader:
                    grouped.setdefault(row["image"], []).append(row["caption"])
        elif self.path.suffix.lower() == ".json":
            records = json.loads(self.path.read_text())
            if isinstance(records, dict) and {"images", "annotations"} <= set(records):
                return coco_caption_items(records, self.path)
            if not isinstance(records, list):
                raise ValueError(f"{self.path}: expected a JSON list of {{'image', 'caption(s)'}} records")
            for i, rec in enumerate(records):
                caps = rec.get("captions", rec.get("caption")) if isinstance(rec, dict) else None
                if caps is None or "image" not in rec:
                    raise ValueError(f"{self.path}: record {i} needs 'image' and 'caption' or 'captions'")
                grouped.setdefault(rec["image"], []).extend([caps] if isinstance(caps, str) else list(caps))
        else:
            raise ValueError(f"caption file must be .json or .csv, got {self.path}")
        return list(grouped.items())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, captions = self.items[i]
        path = self.image_root / image
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in {self.path} does not exist")
        with Image.open(path) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), captions


class ImageOnlyFolder:
    """Every image under a folder (recursively), yielded as (PIL image, -1): an OOD set."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"no images under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as im:
            return im.convert("RGB"), -1
