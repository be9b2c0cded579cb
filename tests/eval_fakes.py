"""Tiny stand-ins for models and tokenizers used by the eval tests."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyClip(nn.Module):
    """encode_image: pooled pixels -> linear; encode_text: mean token embedding -> linear."""

    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.visual = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, dim))
        self.token_embed = nn.EmbeddingBag(49408, dim, mode="mean")
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images, normalize=False):
        return self.visual(images)

    def encode_text(self, ids, normalize=False):
        return self.token_embed(ids)


class ColourOracle(nn.Module):
    """Knows the answer: the image embedding is the one-hot of its dominant channel, the text
    embedding the one-hot of the colour word's index, so zero-shot colour accuracy is exact."""

    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(4.0))
        self.visual = nn.Identity()

    def encode_image(self, images, normalize=False):
        return F.one_hot(images.mean(dim=(2, 3)).argmax(1), 3).float()

    def encode_text(self, ids, normalize=False):
        return F.one_hot(ids[:, 0], 3).float()


class WordTokenizer:
    """Maps 'red'/'green'/'blue' anywhere in a prompt to token 0/1/2."""
    words = ["red", "green", "blue"]

    def __call__(self, texts):
        return torch.tensor([[next(i for i, w in enumerate(self.words) if w in t)] for t in texts])


def colour_images(labels, side=8):
    """Images whose label-th channel is brightest (float pixels in [0, 1])."""
    out = []
    for y in labels:
        img = torch.full((3, side, side), 0.2)
        img[y] = 0.9
        out.append(img)
    return out
