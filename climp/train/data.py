"""Training data order: a deterministic function of (seed, epoch, step), sharded by rank.

For map-style datasets every micro-batch of every epoch is fixed in advance: a seeded
permutation of the dataset is cut into global micro-batches of `batch_size * world_size`
samples and rank r takes the r-th slice of each. The union over ranks of micro-batch k is
therefore the same samples that one process with the combined batch would see, and a resumed
run starts exactly at its saved micro-batch. Random augmentations are made reproducible the
same way: each sample's transform runs under a torch seed derived from (seed, epoch, index),
so the result does not depend on worker count, worker assignment or where a run was resumed.
Iterable sources (webdataset shards) cannot seek; they are resumed by skipping batches.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

_MIX_A = 1_000_003
_MIX_B = 10_000_019


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample augmentation seed; distinct across (seed, epoch, index) triples in practice."""
    return ((seed * _MIX_A + epoch) * _MIX_B + index) % (2**63 - 1)


class EpochBatchOrder(Sampler[List[Tuple[int, int]]]):
    """Batch sampler yielding this rank's micro-batches of (index, sample seed) pairs.

    group_size > 1 shuffles runs of that many consecutive indices as units, so a dataset whose
    groups are in-batch hard negatives (see SyntheticScenes' hard_negatives) keeps them together.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int,
                 seed: int, epoch: int, start_batch: int = 0, group_size: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.global_batch = batch_size * world_size
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size
        if num_samples < self.global_batch:
            raise ValueError(f"dataset of {num_samples} samples is smaller than one global batch "
                             f"({batch_size} x {world_size} ranks)")

    @property
    def batches_per_epoch(self) -> int:
        usable = self.num_samples - self.num_samples % self.group_size
        return usable // self.global_batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, 0))
        groups = torch.randperm(self.num_samples // self.group_size, generator=generator)
        order = (groups[:, None] * self.group_size + torch.arange(self.group_size)).flatten().tolist()
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * self.global_batch + self.rank * self.batch_size
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in order[start:start + self.batch_size]]


class SeededSamples(Dataset):
    """Wraps a map-style dataset so each item is produced under its own torch seed.

    A sample the source cannot load comes back as its `Skipped` marker, which the collate
    function drops: the batch is one smaller, never filled with a duplicate.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def is_map_style(dataset: Any) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


def micro_batches_per_epoch(dataset: Any, batch_size: int, world_size: int) -> Optional[int]:
    """Micro-batches per rank per epoch for map-style data; None for iterable sources."""
    if not is_map_style(dataset):
        return None
    group_size = getattr(dataset, "group_size", 1)
    return (len(dataset) - len(dataset) % group_size) // (batch_size * world_size)


def epoch_loader(
    dataset: Any,
    collate_fn: Callable[[Sequence[Any]], Any],
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    workers: int = 0,
) -> Iterator[Any]:
    """An iterator over this rank's micro-batches of `epoch`, starting at micro-batch `start_batch`."""
    # A private generator keeps the loader from drawing its worker base seed from the global
    # RNG, which would shift dropout randomness between a resumed and an uninterrupted run.
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, rank))
    common = dict(collate_fn=collate_fn, num_workers=workers, generator=generator)
    if is_map_style(dataset):
        order = EpochBatchOrder(len(dataset), batch_size, rank, world_size, seed, epoch, start_batch,
                                group_size=getattr(dataset, "group_size", 1))
        return iter(DataLoader(SeededSamples(dataset), batch_sampler=order, **common))
    # Whole batches only: every rank must contribute equally many features to the loss.
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=True, **common)
    return itertools.islice(iter(loader), start_batch, None)


class BatchStream:
    """This rank's micro-batches, `accum_freq` per optimiser step, across epochs.

    The position (epoch, micro-batch within the epoch) is all a resumed run needs to continue
    with exactly the batches the uninterrupted run would have seen. Map-style epochs end after
    the last whole optimiser step; iterable sources end when exhausted.
    """

    def __init__(self, dataset: Any, collate_fn: Callable[[Sequence[Any]], Any], batch_size: int,
                 rank: int, world_size: int, seed: int, accum_freq: int = 1, workers: int = 0,
                 epoch: int = 0, batch_in_epoch: int = 0,
                 equalize: Optional[Callable[[int], int]] = None):
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.accum_freq = accum_freq
        self.workers = workers
        self.epoch = epoch
        self.batch_in_epoch = batch_in_epoch
        per_epoch = micro_batches_per_epoch(dataset, batch_size, world_size)
        self.batches_per_epoch = None if per_epoch is None else per_epoch - per_epoch % accum_freq
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {len(dataset)} samples holds no full optimiser step of "
                             f"{batch_size} x {world_size} ranks x {accum_freq} accumulation")
        self._iterator: Optional[Iterator[Any]] = None
        self.skips = getattr(dataset, "skips", None)
        self.truncated_captions = 0
        self.equalize = equalize
        self._usable_in_epoch = 0
        self._drawn_in_epoch = 0  # batches this process drew in the current epoch

    def _account(self, batch: Any) -> Any:
        """Record what the collate function dropped or cut (main process); None if empty."""
        if self.skips is not None:
            self.skips.record(getattr(batch, "skipped", ()))
        self.truncated_captions += getattr(batch, "truncated", 0)
        return batch if batch is not None and len(batch) else None

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def _start_epoch(self) -> None:
        self._iterator = epoch_loader(self.dataset, self.collate_fn, self.batch_size, self.rank,
                                      self.world_size, self.seed, self.epoch, self.batch_in_epoch,
                                      self.workers)

    def _next_micro_batch(self) -> Any:
        """The next micro-batch, or None when every sample in it was skipped."""
        while True:
            if self.batches_per_epoch is not None and self.batch_in_epoch >= self.batches_per_epoch:
                self._end_epoch()
            if self._iterator is None:
                self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    raise ValueError("the training data yielded no batches") from None
                self._end_epoch()
                continue
            self.batch_in_epoch += 1
            self._drawn_in_epoch += 1
            batch = self._account(batch)
            self._usable_in_epoch += batch is not None
            return batch

    def _end_epoch(self) -> None:
        # Only an epoch this process drew from its start shows that no sample is usable (a resumed
        # run starts mid-epoch, possibly at its very end).
        if self._usable_in_epoch == 0 and self._drawn_in_epoch == self.batch_in_epoch > 0:
            summary = self.skips.summary() if self.skips is not None else ""
            raise ValueError(f"no sample of the training data could be used in a whole epoch ({summary})")
        self.epoch, self.batch_in_epoch, self._iterator = self.epoch + 1, 0, None
        self._usable_in_epoch = self._drawn_in_epoch = 0

    def next_step(self) -> List[Any]:
        """The `accum_freq` micro-batches of the next optimiser step.

        Skipped samples leave a micro-batch smaller, and one left empty is passed over. With
        `equalize` (the minimum over ranks, for the feature all-gather) every rank cuts its
        micro-batch to the smallest rank's size, and all pass over it when one is empty, so the
        ranks stay in step.
        """
        batches: List[Any] = []
        while len(batches) < self.accum_freq:
            batch = self._next_micro_batch()
            size = len(batch[0]) if batch is not None else 0
            if self.equalize is not None:
                size = self.equalize(size)
            if size == 0:
                continue
            if len(batch[0]) > size:
                batch = type(batch)(part[:size] for part in batch)
            batches.append(batch)
        return batches


def open_train_source(path: str, transform: Callable, csv_img_key: Optional[str] = None,
                      csv_caption_key: Optional[str] = None, csv_separator: Optional[str] = None,
                      seed: int = 0, shuffle_buffer: int = 1000, allow_pipe: bool = False) -> Any:
    """The training source at `path`: a caption table (CSV/TSV; separator and columns detected
    unless given), an image folder with .txt captions, or webdataset shards
    ('shards-{000..009}.tar'). Each counts skipped samples in `.skips`."""
    from climp.data import sources

    if ".tar" in path:
        return sources.webdataset_pipeline(path, transform, shuffle=shuffle_buffer, seed=seed,
                                           allow_pipe=allow_pipe)
    if Path(path).is_dir():
        return sources.ImageFolderCaptions(path, transform=transform)
    if Path(path).suffix.lower() in (".csv", ".tsv", ".txt"):
        return sources.CsvDataset(path, img_key=csv_img_key, caption_key=csv_caption_key,
                                  sep=csv_separator, transform=transform)
    if not Path(path).exists():
        raise FileNotFoundError(f"training data not found: {path}")
    raise ValueError(f"cannot tell the format of training data {path}: give a .csv/.tsv file, "
                     "an image folder or webdataset shards (.tar)")
