"""Tiny stand-ins following the model/tokenizer/data contracts, shared by the train tests (no tests here)."""
from __future__ import annotations

import zlib
from collections import namedtuple
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from climp.data.sources import SkipCounter
from climp.train.config import TrainConfig
from climp.train.trainer import TrainComponents

SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = ["red", "green", "blue", "yellow"]
VOCAB = 97
IMAGE_SIDE = 8
ZeroShotTask = namedtuple("ZeroShotTask", "name classnames templates dataset")


def tokenize(texts: Sequence[str]) -> torch.Tensor:
    """Word ids by CRC32 (stable across processes), right padded with 0."""
    rows = [[1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in t.split()] for t in texts]
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids


class TinyImageTower(nn.Module):
    def __init__(self, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ln = nn.LayerNorm(3 * IMAGE_SIDE * IMAGE_SIDE)
        self.proj = nn.Linear(3 * IMAGE_SIDE * IMAGE_SIDE, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(self.ln(x.flatten(1))))


class TinyTextTower(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.proj = nn.Linear(16, embed_dim)
        self.A_log = nn.Parameter(torch.zeros(4, 2))
        self.D = nn.Parameter(torch.ones(4))
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float().unsqueeze(-1)
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.proj(pooled) + 0.0 * (self.A_log.sum() + self.D.sum())


class TinyClip(nn.Module):
    """The model contract in miniature: towers, logit_scale/bias, encode_*, dict forward."""

    def __init__(self, embed_dim: int = 8, init_logit_scale: float = 2.659, init_logit_bias=None,
                 dropout: float = 0.0):
        super().__init__()
        self.visual = TinyImageTower(embed_dim, dropout)
        self.text = TinyTextTower(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.visual(images)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.text(ids)
        return F.normalize(out, dim=-1) if normalize else out

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> dict:
        return {"image_features": self.encode_image(images, True),
                "text_features": self.encode_text(ids, True),
                "logit_scale": self.logit_scale.exp(), "logit_bias": self.logit_bias}


def scene(index: int, seed: int = 0):
    """A deterministic 'scene': shape sets the left half, colour the right half."""
    shape, colour = index % len(SHAPES), (index // len(SHAPES)) % len(COLOURS)
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    image = 0.3 * torch.randn(3, IMAGE_SIDE, IMAGE_SIDE, generator=g)
    image[shape % 3, :, : IMAGE_SIDE // 2] += 1.0 + shape
    image[colour % 3, :, IMAGE_SIDE // 2:] -= 1.0 + colour
    return image, shape, colour


class TinyPairs(Dataset):
    """(image tensor, caption) pairs with a random augmentation drawn from the global torch RNG."""

    def __init__(self, num_samples: int = 64, seed: int = 0, augment: bool = True):
        self.num_samples, self.seed, self.augment = num_samples, seed, augment

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        image, shape, colour = scene(index, self.seed)
        if self.augment:
            image = image + 0.05 * torch.randn_like(image)
        return image, f"a {COLOURS[colour]} {SHAPES[shape]}"


class TinyLabelled(Dataset):
    def __init__(self, attribute: int, num_samples: int = 32):
        self.attribute, self.num_samples = attribute, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        image, shape, colour = scene(10_000 + index)
        return image, (shape, colour)[self.attribute]


class TinyRetrieval(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int):
        image, shape, colour = scene(20_000 + index)
        return image, [f"a {COLOURS[colour]} {SHAPES[shape]}", f"{SHAPES[shape]} {COLOURS[colour]}"]


def collate(batch) -> tuple:
    images, captions = zip(*batch)
    return torch.stack(images), tokenize(list(captions))


def tiny_components(num_samples: int = 64, dropout: float = 0.0, loss: str = "clip",
                    augment: bool = True) -> TrainComponents:
    torch.manual_seed(1234)
    init = {"init_logit_scale": 2.303, "init_logit_bias": -10.0} if loss == "siglip" else {}
    tasks = {"shape": ZeroShotTask("shape", SHAPES, ["a {}"], TinyLabelled(0)),
             "colour": ZeroShotTask("colour", COLOURS, ["a {}", lambda c: f"{c} thing"], TinyLabelled(1))}
    return TrainComponents(model=TinyClip(dropout=dropout, **init), tokenizer=tokenize,
                           train_dataset=TinyPairs(num_samples, augment=augment), collate_fn=collate,
                           zero_shot_tasks=tasks, retrieval_set=TinyRetrieval(),
                           model_cfg={"embed_dim": 8})


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(model="tiny-standin", steps=4, batch_size=8, lr=1e-2, warmup=1, log_every=1,
                  progress=False, device="cpu", output_dir=str(tmp_path), name="run",
                  eval_samples=32, retrieval_samples=16, workers=0)  # collate hooks run in this process
    values.update(overrides)
    return TrainConfig.from_dict(values)


def run_steps(trainer, until: int) -> dict:
    """Train to step `until`; the loss of every step taken, by step number."""
    losses = {}
    while trainer.step < until:
        loss = trainer.train_step(trainer.stream.next_step()).item()
        losses[trainer.step] = loss
    return losses


class SometimesBroken(Dataset):
    """Sample i is (image filled with i, caption); indices in `broken` are Skipped markers."""

    def __init__(self, n=12, broken=(3, 7)):
        self.n, self.broken, self.skips = n, set(broken), SkipCounter()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.broken:
            return self.skips.add("corrupt_image", f"row{i}")
        return torch.full((3, 2, 2), float(i)), f"caption {i}"
