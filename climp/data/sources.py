"""Real image-text data for the same training code: CSV/TSV files, folders with caption
sidecars, and img2dataset-style webdataset tar shards.

Broken samples never crash training. A missing or undecodable image, an empty or missing
caption is skipped and counted in a `SkipCounter` (the dataset's `.skips`): map-style datasets
return None for such a sample and `ImageTextCollate` drops it; the webdataset pipeline filters
it out. Call `dataset.skips.summary()` at the end of training to report what was dropped.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

log = logging.getLogger(__name__)

SKIP_REASONS: Tuple[str, ...] = ("missing_image", "corrupt_image", "empty_caption",
                                 "missing_caption", "bad_sample")
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
WDS_IMAGE_KEYS: Tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_LOGGED_PER_PROCESS = 5


class SkipCounter:
    """Counts skipped samples per reason (SKIP_REASONS), including in DataLoader workers.

    The counts live in a shared-memory tensor with one row per process (row 0: the main
    process, row k + 1: worker k), so workers never race and the main process sees their
    counts after (or during) an epoch. The first few skips of each process are logged.
    """

    def __init__(self, max_workers: int = 64):
        self._counts = torch.zeros(max_workers + 1, len(SKIP_REASONS),
                                   dtype=torch.int64).share_memory_()
        self._logged = 0

    def add(self, reason: str, where: str = "", detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (self._counts.shape[0] - 1)
        self._counts[row, SKIP_REASONS.index(reason)] += 1
        if self._logged < _LOGGED_PER_PROCESS:
            self._logged += 1
            log.warning("skipping sample (%s) %s %s", reason, where, detail)

    def counts(self) -> Dict[str, int]:
        """Skips per reason, summed over processes (reasons with zero included)."""
        return dict(zip(SKIP_REASONS, self._counts.sum(0).tolist()))

    @property
    def total(self) -> int:
        return int(self._counts.sum())

    def summary(self) -> str:
        nonzero = {k: v for k, v in self.counts().items() if v}
        if not nonzero:
            return "skipped 0 samples"
        return f"skipped {self.total} samples (" + ", ".join(
            f"{k}: {v}" for k, v in nonzero.items()) + ")"

    def reset(self) -> None:
        self._counts.zero_()


def load_rgb(source: Union[str, Path, bytes], skips: SkipCounter,
             where: str = "") -> Optional[Image.Image]:
    """Decode an image file (path) or encoded bytes to RGB; None (counted) if missing/broken."""
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(stream) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        skips.add("missing_image", where or str(source), str(exc))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        skips.add("corrupt_image", where or str(source), repr(exc))
    return None


def _transformed(image: Optional[Image.Image], caption: str, transform: Optional[Callable]):
    if image is None:
        return None
    return (transform(image) if transform is not None else image), caption


class CsvDataset(Dataset):
    """Rows of an image path and a caption from a CSV (or TSV with sep="\\t") file.

    Relative image paths are resolved against `root` (default: the CSV file's folder). Rows
    with an empty caption are dropped (and counted) when the file is read; missing or corrupt
    images are found when loaded: `ds[i]` is then None and counted in `ds.skips`.
    """

    def __init__(self, path: Union[str, Path], img_key: str = "filepath",
                 caption_key: str = "title", sep: str = ",",
                 transform: Optional[Callable] = None, root: Union[str, Path, None] = None,
                 skips: Optional[SkipCounter] = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CSV file not found: {path}")
        self.root = Path(root) if root is not None else path.parent
        self.transform = transform
        self.skips = skips if skips is not None else SkipCounter()
        self.paths: List[Path] = []
        self.captions: List[str] = []
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            columns = reader.fieldnames or []
            missing = [k for k in (img_key, caption_key) if k not in columns]
            if missing:
                hint = ""
                if len(columns) == 1 and any(s in columns[0] for s in ",\t;|" if s != sep):
                    hint = f" (only one column was read with sep={sep!r}; is the separator wrong?)"
                raise ValueError(f"{path}: missing column(s) {missing}; available columns: "
                                 f"{columns}{hint}")
            for line, row in enumerate(reader, start=2):
                caption = (row[caption_key] or "").strip()
                if not caption:
                    self.skips.add("empty_caption", f"{path}:{line}")
                    continue
                image = (row[img_key] or "").strip()
                if not image:
                    self.skips.add("missing_image", f"{path}:{line}", "empty image path")
                    continue
                self.paths.append(self.root / image)
                self.captions.append(caption)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_rgb(self.paths[i], self.skips)
        return _transformed(image, self.captions[i], self.transform)


class ImageFolderCaptions(Dataset):
    """Image files under `root` (recursively) with captions in sidecar `<stem>.txt` files.

    Images without a sidecar or with an empty caption are dropped (and counted) up front;
    unreadable images give None (counted) when loaded.
    """

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None,
                 skips: Optional[SkipCounter] = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        self.transform = transform
        self.skips = skips if skips is not None else SkipCounter()
        self.paths: List[Path] = []
        self.captions: List[str] = []
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        for image in images:
            sidecar = image.with_suffix(".txt")
            if not sidecar.is_file():
                self.skips.add("missing_caption", str(image))
                continue
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if not caption:
                self.skips.add("empty_caption", str(sidecar))
                continue
            self.paths.append(image)
            self.captions.append(caption)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_rgb(self.paths[i], self.skips)
        return _transformed(image, self.captions[i], self.transform)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _expand_shards(urls: Union[str, Sequence[str]]) -> List[str]:
    expanded = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not expanded:
        raise ValueError(f"no shards in {urls!r}")
    missing = [u for u in expanded if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(expanded)} shard(s) not found, e.g. "
                                f"{missing[:3]}")
    return expanded


class _DecodeSample:
    """webdataset sample dict -> (image, caption), or None (counted) when broken. A class,
    not a closure, so the pipeline pickles into spawned DataLoader workers."""

    def __init__(self, transform: Optional[Callable], skips: SkipCounter,
                 caption_key: str, image_keys: Sequence[str]):
        self.transform, self.skips = transform, skips
        self.caption_key, self.image_keys = caption_key, tuple(image_keys)

    def __call__(self, sample: Dict) -> Optional[tuple]:
        where = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
        data = next((sample[k] for k in self.image_keys if k in sample), None)
        if data is None:
            self.skips.add("missing_image", where, f"no {self.image_keys} entry")
            return None
        if self.caption_key not in sample:
            self.skips.add("missing_caption", where)
            return None
        caption = sample[self.caption_key].decode("utf-8", errors="replace").strip()
        if not caption:
            self.skips.add("empty_caption", where)
            return None
        return _transformed(load_rgb(data, self.skips, where), caption, self.transform)


class _CountAndContinue:
    """webdataset error handler: count the broken tar member or shard and go on."""

    def __init__(self, skips: SkipCounter):
        self.skips = skips

    def __call__(self, exc: Exception) -> bool:
        self.skips.add("bad_sample", detail=repr(exc))
        return True


def _not_none(sample) -> bool:
    return sample is not None


def webdataset_pipeline(urls: Union[str, Sequence[str]], transform: Optional[Callable] = None,
                        *, shuffle: int = 0, seed: int = 0, resampled: bool = False,
                        caption_key: str = "txt",
                        image_keys: Sequence[str] = WDS_IMAGE_KEYS,
                        skips: Optional[SkipCounter] = None) -> wds.DataPipeline:
    """img2dataset shards (jpg/png + txt) as an IterableDataset of (image, caption).

    urls: brace notation ("data/{00000..00009}.tar") or a list. Shards are split across
    torch.distributed ranks and DataLoader workers (each sample once per epoch), or, with
    resampled=True, drawn with replacement forever (use .with_epoch(n)). shuffle > 0 shuffles
    the shard order (with `seed`) and samples in a buffer of that size. Batch with a
    DataLoader and ImageTextCollate; the pipeline's `.skips` counts what was dropped.
    """
    shards = _expand_shards(urls)
    skips = skips if skips is not None else SkipCounter()
    handler = _CountAndContinue(skips)
    if resampled:
        stages = [wds.ResampledShards(shards, seed=seed)]
    else:
        stages = [wds.SimpleShardList(shards, seed=seed if shuffle > 0 else None),
                  wds.split_by_node, wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=handler))
    if shuffle > 0:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 100), seed=seed))
    stages += [wds.map(_DecodeSample(transform, skips, caption_key, image_keys)),
               wds.select(_not_none)]
    pipeline = wds.DataPipeline(*stages)
    pipeline.skips = skips
    return pipeline
