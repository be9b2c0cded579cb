"""Held-out data for the evaluation during and after training (`--val-data`).

The same formats as `--train-data` give a retrieval set (captions grouped by image, R@1/5/10
both ways); a folder of class folders (no .txt caption sidecars) gives a zero-shot task on its
class names (classnames.json / templates.json as for `climp eval`, names matched by name).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from climp.data.images import load_image
from climp.data.sources import IMAGE_EXTENSIONS, CsvDataset, ImageFolderCaptions, Skipped

log = logging.getLogger(__name__)


class RetrievalPairs(Dataset):
    """(transformed image, list of its captions) per distinct image, loaded on access."""

    def __init__(self, items: Sequence[Tuple[Any, List[str]]], transform: Callable, name: str):
        if not items:
            raise ValueError(f"validation data {name} holds no usable image-caption pairs")
        self.items, self.transform, self.name = list(items), transform, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image, captions = self.items[i]
        if isinstance(image, Path):
            try:
                image = load_image(image)
            except (OSError, ValueError, SyntaxError) as exc:
                raise ValueError(f"validation image {image} cannot be read: {exc}") from None
            image = self.transform(image)
        return image, captions


def _grouped(paths: Sequence[Path], captions: Sequence[str]) -> List[Tuple[Path, List[str]]]:
    grouped: Dict[Path, List[str]] = {}
    for path, caption in zip(paths, captions):
        grouped.setdefault(path, []).append(caption)
    missing = [p for p in grouped if not p.is_file()]
    if missing:
        log.warning("validation data: %d image(s) not found and left out, e.g. %s", len(missing), missing[0])
    return [(p, caps) for p, caps in grouped.items() if p not in missing]


def is_class_folder_layout(folder: Path) -> bool:
    """A folder of class folders: sub-folders holding images and no .txt caption sidecars."""
    if not folder.is_dir() or any(folder.rglob("*.txt")):
        return False
    return any(sub.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in sub.iterdir())
               for sub in folder.iterdir())


def open_val_source(path: str, transform: Callable, csv_img_key: Optional[str] = None,
                    csv_caption_key: Optional[str] = None, csv_separator: Optional[str] = None,
                    allow_pipe: bool = False) -> Tuple[Optional[Any], Optional[Any]]:
    """(zero-shot task or None, retrieval set or None) for the validation data at `path`."""
    from climp.data import sources
    from climp.eval.datasets import DEFAULT_TEMPLATES, image_folder_set

    folder = Path(path)
    if is_class_folder_layout(folder):
        task = image_folder_set(folder, "val", transform)
        if not (folder / "templates.json").exists():
            task.templates = list(DEFAULT_TEMPLATES)
        return task, None
    if ".tar" in path:
        pipeline = sources.webdataset_pipeline(path, transform, allow_pipe=allow_pipe)
        items = [(image, [caption]) for sample in pipeline if not isinstance(sample, Skipped)
                 for image, caption in [sample]]
        return None, RetrievalPairs(items, transform, path)
    if folder.is_dir():
        data = ImageFolderCaptions(folder)
    elif folder.is_file():
        data = CsvDataset(folder, csv_img_key, csv_caption_key, csv_separator)
    else:
        raise FileNotFoundError(f"validation data not found: {path}")
    return None, RetrievalPairs(_grouped(data.paths, data.captions), transform, path)
