"""Real datasets from local roots; nothing here downloads.

Classification: an ImageFolder layout (<root>/<name>[/<split>]/<class>/<image>) with optional
classnames.json (class names matched to folders by name, or a {folder: name} mapping) and
templates.json beside the class folders, or any dataset CLIP_benchmark's `build_dataset` knows,
read with download=False from an existing root (class names and templates then come from
CLIP_benchmark). Captions: JSON [{"image": path, "caption"|"captions": ...}] or a caption table
(`climp.data.tables`: the training layout, one row per caption). Plain image folders serve as
OOD sets. Every image goes through `climp.data.images.load_image`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


from climp.data.images import load_image
from climp.data.tables import read_caption_rows

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
    """A JSON file holding the value itself (a list, or for class names a {folder: name}
    mapping) or a dict keyed by dataset name holding it."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(value, dict) and name in value:
        value = value[name]
    if isinstance(value, dict) and value and all(isinstance(v, str) for v in value.values()):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"{path}: expected a non-empty list (or a {{folder: class name}} mapping) for "
                         f"dataset {name!r}, or a dict with an entry {name!r}")
    return value


def default_templates(name: str) -> List[Any]:
    templates = clip_benchmark_resource("en_zeroshot_classification_templates.json")
    return list(templates.get(name) or templates.get("imagenet1k") or DEFAULT_TEMPLATES)


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def match_classnames(source: Path, folders: Sequence[str], given: Optional[Any]) -> List[str]:
    """The class name of each class folder, in the folders' (sorted) order.

    Names are matched to folders by name (case, `_` and spaces ignored), never by position; a
    {folder: class name} mapping names them explicitly. No names given: the folder names.
    """
    if given is None:
        return [f.replace("_", " ") for f in folders]
    if isinstance(given, dict):
        missing = [f for f in folders if f not in given]
        if missing:
            raise ValueError(f"{source}: no class name for folder(s) {missing[:5]} in the mapping")
        return [given[f] for f in folders]
    by_name = {_normalised(str(c)): str(c) for c in given}
    unmatched = [f for f in folders if _normalised(f) not in by_name]
    if unmatched or len(given) != len(folders):
        raise ValueError(
            f"{source}: {len(given)} class names for {len(folders)} class folders, folder(s) "
            f"{unmatched[:5]} match no name. Class names are matched to folders by name (case, '_' "
            "and spaces ignored), never by position: rename the folders, or give a mapping "
            '{"folder": "class name", ...}')
    return [by_name[_normalised(f)] for f in folders]


def image_folder_set(folder: Path, name: str, transform: Optional[Callable]) -> ClassificationSet:
    from torchvision.datasets import ImageFolder
    dataset = ImageFolder(str(folder), transform=transform, loader=load_image)
    given = read_json_for(folder / "classnames.json", name)
    classnames = match_classnames(folder / "classnames.json", dataset.classes, given)
    templates = read_json_for(folder / "templates.json", name) or default_templates(name)
    if isinstance(templates, dict):
        raise ValueError(f"{folder / 'templates.json'}: expected a list of templates")
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
        if self.path.suffix.lower() in (".csv", ".tsv"):
            for line, image, caption in read_caption_rows(self.path):
                if not image or not caption:
                    raise ValueError(f"{self.path}:{line}: empty image or caption")
                grouped.setdefault(image, []).append(caption)
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
            raise ValueError(f"caption file must be .json, .csv or .tsv, got {self.path}")
        return list(grouped.items())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, captions = self.items[i]
        path = self.image_root / image
        if not path.is_file():
            raise FileNotFoundError(f"image {path} listed in {self.path} does not exist")
        img = load_image(path)
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
        return load_image(self.files[i]), -1
