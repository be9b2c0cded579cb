"""Real image-text data for the same training code: caption tables (CSV/TSV), folders with
caption sidecars, and img2dataset-style webdataset tar shards.

Broken samples never crash training and are never replaced by a neighbour. A missing or
undecodable image, an empty or missing caption comes back as a `Skipped` marker naming the
sample and the reason; `ImageTextCollate` drops markers from the batch and lists them on it,
and the training loop records them in the source's `SkipCounter` (`.skips`), in the main
process, once per distinct sample and reason, however many epochs or workers see it. Rows
dropped while a table is read are recorded there directly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from .images import load_image
from .tables import read_caption_rows, read_utf8

log = logging.getLogger(__name__)

SKIP_REASONS: Tuple[str, ...] = ("missing_image", "corrupt_image", "empty_caption",
                                 "missing_caption", "bad_sample")
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
WDS_IMAGE_KEYS: Tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
_LOGGED_PER_PROCESS = 5


class Skipped:
    """Stands in for a sample a source could not use: its key (file:line, path or shard:key),
    the reason (one of SKIP_REASONS) and a detail for the log."""

    __slots__ = ("key", "reason", "detail")

    def __init__(self, key: str, reason: str, detail: str = ""):
        self.key, self.reason, self.detail = key, reason, detail

    def __getstate__(self):
        return self.key, self.reason, self.detail

    def __setstate__(self, state) -> None:
        self.key, self.reason, self.detail = state

    def __repr__(self) -> str:
        return f"Skipped({self.key!r}, {self.reason!r})"


class SkipCounter:
    """Skipped samples, once per distinct (reason, sample key).

    `add` records a skip where it happens (and returns the marker to hand on); `record` takes
    the markers a batch carried back from DataLoader workers, so counts are exact with any
    number of workers. Unreadable shards or tar members have no sample key: they are counted
    per occurrence in shared memory (one row per worker), as `bad_sample`.
    """

    def __init__(self, max_workers: int = 64):
        self._keys: Dict[str, Set[str]] = {reason: set() for reason in SKIP_REASONS}
        self._events = torch.zeros(max_workers + 1, dtype=torch.int64).share_memory_()
        self._logged = 0

    def add(self, reason: str, key: str, detail: str = "") -> Skipped:
        """Record that sample `key` was skipped for `reason`; returns its marker."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        keys = self._keys[reason]
        if key not in keys:
            keys.add(key)
            if self._logged < _LOGGED_PER_PROCESS:
                self._logged += 1
                log.warning("skipping sample (%s) %s %s", reason, key, detail)
        return Skipped(key, reason, detail)

    def add_event(self, detail: str = "") -> None:
        """Count an unreadable shard or tar member (no sample key), in any process."""
        info = get_worker_info()
        self._events[0 if info is None else 1 + info.id % (len(self._events) - 1)] += 1
        log.warning("skipping unreadable shard data: %s", detail)

    def record(self, skipped: Iterable[Skipped]) -> None:
        """Record markers (e.g. a batch's `.skipped`, collected in DataLoader workers)."""
        for marker in skipped:
            self.add(marker.reason, marker.key, marker.detail)

    def records(self) -> List[Tuple[str, str]]:
        """(reason, key) pairs, for merging the counters of several ranks."""
        return [(reason, key) for reason, keys in self._keys.items() for key in sorted(keys)]

    def merge(self, records: Iterable[Tuple[str, str]]) -> None:
        for reason, key in records:
            self._keys[reason].add(key)

    @property
    def unkeyed(self) -> int:
        """Unreadable shards or tar members counted (per occurrence, over all processes)."""
        return int(self._events.sum())

    def counts(self) -> Dict[str, int]:
        """Skipped samples per reason (reasons with zero included)."""
        counts = {reason: len(keys) for reason, keys in self._keys.items()}
        counts["bad_sample"] += int(self._events.sum())
        return counts

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def summary(self) -> str:
        nonzero = {k: v for k, v in self.counts().items() if v}
        if not nonzero:
            return "skipped 0 samples"
        return f"skipped {self.total} samples (" + ", ".join(
            f"{k}: {v}" for k, v in nonzero.items()) + ")"

    def reset(self) -> None:
        for keys in self._keys.values():
            keys.clear()
        self._events.zero_()


def load_rgb(source: Union[str, Path, bytes], skips: SkipCounter,
             where: str = "") -> Union[Image.Image, Skipped]:
    """Decode an image file (path) or encoded bytes to RGB (`load_image`); a recorded
    `Skipped` marker if it is missing or broken."""
    key = where or str(source)
    try:
        return load_image(source)
    except FileNotFoundError as exc:
        return skips.add("missing_image", key, str(exc))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return skips.add("corrupt_image", key, repr(exc))


def _transformed(image: Union[Image.Image, Skipped], caption: str, transform: Optional[Callable]):
    if isinstance(image, Skipped):
        return image
    return (transform(image) if transform is not None else image), caption


class CsvDataset(Dataset):
    """Rows of an image path and a caption from a caption table (see `climp.data.tables`:
    separator and columns detected from the header unless given).

    Relative image paths are resolved against `root` (default: the table's folder). Rows with
    an empty caption or image path are dropped (and counted) when the file is read; a missing
    or corrupt image is found when loaded: `ds[i]` is then a `Skipped` marker (counted).
    """

    def __init__(self, path: Union[str, Path], img_key: Optional[str] = None,
                 caption_key: Optional[str] = None, sep: Optional[str] = None,
                 transform: Optional[Callable] = None, root: Union[str, Path, None] = None,
                 skips: Optional[SkipCounter] = None):
        path = Path(path)
        self.root = Path(root) if root is not None else path.parent
        self.transform = transform
        self.skips = skips if skips is not None else SkipCounter()
        self.paths: List[Path] = []
        self.captions: List[str] = []
        self.keys: List[str] = []
        for line, image, caption in read_caption_rows(path, img_key, caption_key, sep):
            if not caption:
                self.skips.add("empty_caption", f"{path}:{line}")
            elif not image:
                self.skips.add("missing_image", f"{path}:{line}", "empty image path")
            else:
                self.paths.append(self.root / image)
                self.captions.append(caption)
                self.keys.append(f"{path}:{line}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = load_rgb(self.paths[i], self.skips, self.keys[i])
        return _transformed(image, self.captions[i], self.transform)


class ImageFolderCaptions(Dataset):
    """Image files under `root` (recursively) with captions in sidecar `<stem>.txt` files.

    Images without a sidecar or with an empty caption are dropped (and counted) up front;
    an unreadable image gives a `Skipped` marker (counted) when loaded. Sidecars are read as
    UTF-8; an undecodable byte is an error naming the file.
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
            caption = read_utf8(sidecar).strip()
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


PIPE_PREFIX = "pipe:"


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith(PIPE_PREFIX)


def _expand_shards(urls: Union[str, Sequence[str]], allow_pipe: bool = False) -> List[str]:
    expanded = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else list(urls)
    if not expanded:
        raise ValueError(f"no shards in {urls!r}")
    piped = [u for u in expanded if u.startswith(PIPE_PREFIX)]
    if piped and not allow_pipe:
        raise ValueError(f"{piped[0]!r} runs a shell command to read the data; pass --allow-pipe "
                         "(allow_pipe=True) if that is what you want")
    missing = [u for u in expanded if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(expanded)} shard(s) not found, e.g. "
                                f"{missing[:3]}")
    return expanded


class _DecodeSample:
    """webdataset sample dict -> (image, caption), or a recorded `Skipped` marker when broken.
    A class, not a closure, so the pipeline pickles into spawned DataLoader workers."""

    def __init__(self, transform: Optional[Callable], skips: SkipCounter,
                 caption_key: str, image_keys: Sequence[str]):
        self.transform, self.skips = transform, skips
        self.caption_key, self.image_keys = caption_key, tuple(image_keys)

    def __call__(self, sample: Dict) -> Union[tuple, Skipped]:
        where = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
        data = next((sample[k] for k in self.image_keys if k in sample), None)
        if data is None:
            return self.skips.add("missing_image", where, f"no {self.image_keys} entry")
        if self.caption_key not in sample:
            return self.skips.add("missing_caption", where)
        try:
            caption = sample[self.caption_key].decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            return self.skips.add("bad_sample", where, f"caption is not UTF-8: {exc}")
        if not caption:
            return self.skips.add("empty_caption", where)
        return _transformed(load_rgb(data, self.skips, where), caption, self.transform)


class _CountAndContinue:
    """webdataset error handler: count the broken tar member or shard and go on."""

    def __init__(self, skips: SkipCounter):
        self.skips = skips

    def __call__(self, exc: Exception) -> bool:
        self.skips.add_event(repr(exc))
        return True


def webdataset_pipeline(urls: Union[str, Sequence[str]], transform: Optional[Callable] = None,
                        *, shuffle: int = 0, seed: int = 0, resampled: bool = False,
                        caption_key: str = "txt",
                        image_keys: Sequence[str] = WDS_IMAGE_KEYS,
                        skips: Optional[SkipCounter] = None,
                        allow_pipe: bool = False) -> wds.DataPipeline:
    """img2dataset shards (jpg/png + txt) as an IterableDataset of (image, caption), with a
    `Skipped` marker in place of each broken sample.

    urls: brace notation ("data/{00000..00009}.tar") or a list. Shards are split across
    torch.distributed ranks and DataLoader workers (each sample once per epoch), or, with
    resampled=True, drawn with replacement forever (use .with_epoch(n)). shuffle > 0 shuffles
    the shard order (with `seed`) and samples in a buffer of that size. Batch with a
    DataLoader and ImageTextCollate; the pipeline's `.skips` counts what was dropped.
    webdataset's 'pipe:' URLs run a shell command; they are refused unless allow_pipe=True.
    """
    shards = _expand_shards(urls, allow_pipe)
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
    stages.append(wds.map(_DecodeSample(transform, skips, caption_key, image_keys)))
    pipeline = wds.DataPipeline(*stages)
    pipeline.skips = skips
    return pipeline
