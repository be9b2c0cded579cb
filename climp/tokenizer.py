"""Tokenizers that pad to the longest caption in the batch instead of a fixed 77 tokens.

`ClipBpeTokenizer` reuses open_clip's BPE (its vocabulary ships inside the open_clip package, so
nothing downloads). Mamba text towers read any length; Transformer towers get `max_length` set to
their context length, and truncation keeps the end-of-text token last, as open_clip does.
`HFTokenizer` wraps a local `tokenizer.json` (HF tokenizers) for pretrained language models.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from open_clip.tokenizer import SimpleTokenizer

Texts = Union[str, Sequence[str]]


def _as_list(texts: Texts) -> List[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("tokenizer: empty list of captions")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"tokenizer: caption {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"tokenizer: caption {i} is empty")
    return texts


_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[\s.!?,;:]+$")


def normalize_caption(text: str) -> str:
    """A caption's format rule for our own Mamba text towers: lower case, single spaces, no
    trailing punctuation. Last-token pooling reads the state after the final token, so without
    this a trailing full stop (or its absence) moves the feature; with it, captions that differ
    only in that format tokenize identically."""
    stripped = _TRAILING_PUNCT.sub("", _SPACES.sub(" ", text).strip().lower())
    return stripped or text.strip().lower()


def pad_sequences(sequences: List[List[int]], pad_id: int) -> torch.Tensor:
    """Right-pad token lists with pad_id to the longest one: (batch, longest) long tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


class ClipBpeTokenizer:
    """open_clip's byte-level BPE with start/end-of-text tokens and dynamic padding;
    normalize: apply `normalize_caption` first (a model config's "normalize_captions")."""

    pad_id = 0

    def __init__(self, max_length: Optional[int] = None, normalize: bool = False):
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
        self.max_length = max_length
        self.normalize = normalize
        self.bpe = SimpleTokenizer(context_length=None)
        self.sot_id = self.bpe.sot_token_id
        self.eot_id = self.bpe.eot_token_id
        self.vocab_size = self.bpe.vocab_size

    def encode(self, text: str) -> List[int]:
        """Token ids of one caption with start and end tokens, truncated to max_length if set."""
        if self.normalize:
            text = normalize_caption(text)
        ids = [self.sot_id] + self.bpe.encode(text) + [self.eot_id]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + [self.eot_id]
        return ids

    def num_tokens(self, text: str) -> int:
        """Untruncated length of a caption in tokens, start and end included."""
        return len(self.bpe.encode(normalize_caption(text) if self.normalize else text)) + 2

    def __call__(self, texts: Texts) -> torch.Tensor:
        return pad_sequences([self.encode(t) for t in _as_list(texts)], self.pad_id)

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if int(i) not in (self.pad_id, self.sot_id, self.eot_id)]
        return self.bpe.decode(kept).strip()


class HFTokenizer:
    """A local HF `tokenizer.json` (e.g. GPT-NeoX's for Mamba LMs) with an end-of-text token
    appended, so last-token pooling reads a representation of the whole caption."""

    def __init__(self, path: Union[str, Path], eos_token: str = "<|endoftext|>", pad_token: str = "<|padding|>",
                 max_length: Optional[int] = None, normalize: bool = False):
        from tokenizers import Tokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self.tok = Tokenizer.from_file(str(file))
        self.eot_id = self._token_id(eos_token)
        self.pad_id = self._token_id(pad_token)
        if self.pad_id == self.eot_id:
            raise ValueError("pad and end-of-text tokens must differ for last-token pooling")
        self.max_length = max_length
        self.normalize = normalize
        self.vocab_size = self.tok.get_vocab_size()

    def _token_id(self, token: str) -> int:
        token_id = self.tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def encode(self, text: str) -> List[int]:
        if self.normalize:
            text = normalize_caption(text)
        ids = self.tok.encode(text, add_special_tokens=False).ids + [self.eot_id]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + [self.eot_id]
        return ids

    def num_tokens(self, text: str) -> int:
        text = normalize_caption(text) if self.normalize else text
        return len(self.tok.encode(text, add_special_tokens=False).ids) + 1

    def __call__(self, texts: Texts) -> torch.Tensor:
        return pad_sequences([self.encode(t) for t in _as_list(texts)], self.pad_id)
