"""Tokenizers that pad to the longest caption in the batch instead of a fixed 77 tokens.

`ClipBpeTokenizer` reuses open_clip's BPE (its vocabulary ships inside the open_clip package, so
nothing downloads). Mamba text towers read any length; Transformer towers get `max_length` set to
their context length. Truncation keeps the end-of-text token last, as open_clip does
(truncate="keep_eot"), or cuts the id list as OpenAI CLIP's code does (truncate="cut", the
end token is lost). `HFTokenizer` wraps a local `tokenizer.json` (HF tokenizers) for pretrained
language models, with or without an appended end-of-text token. Rows are right padded, which the
towers expect (their pooling reads the last non-padding token).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
from open_clip.tokenizer import SimpleTokenizer

Texts = Union[str, Sequence[str]]
TRUNCATION = ("keep_eot", "cut")


def truncate_ids(ids: List[int], max_length: Optional[int], rule: str, eot_id: Optional[int]) -> List[int]:
    """Shorten ids to max_length: "keep_eot" ends the kept ids with the end token (open_clip),
    "cut" keeps the first max_length ids whatever they are (OpenAI CLIP's `tokens[:77]`)."""
    if rule not in TRUNCATION:
        raise ValueError(f"truncate must be one of {TRUNCATION}, got {rule!r}")
    if max_length is None or len(ids) <= max_length:
        return ids
    if rule == "keep_eot" and eot_id is not None:
        return ids[: max_length - 1] + [eot_id]
    return ids[:max_length]


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
    normalize: apply `normalize_caption` first (a model config's tokenizer_cfg "normalize")."""

    pad_id = 0

    def __init__(self, max_length: Optional[int] = None, truncate: str = "keep_eot", normalize: bool = False):
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 (start and end tokens), got {max_length}")
        truncate_ids([], None, truncate, None)
        self.max_length = max_length
        self.truncate = truncate
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
        return truncate_ids(ids, self.max_length, self.truncate, self.eot_id)

    def num_tokens(self, text: str) -> int:
        """Untruncated length of a caption in tokens, start and end included."""
        return len(self.bpe.encode(normalize_caption(text) if self.normalize else text)) + 2

    def __call__(self, texts: Texts) -> torch.Tensor:
        return pad_sequences([self.encode(t) for t in _as_list(texts)], self.pad_id)

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if int(i) not in (self.pad_id, self.sot_id, self.eot_id)]
        return self.bpe.decode(kept).strip()


class HFTokenizer:
    """A local HF `tokenizer.json` (e.g. GPT-NeoX's for Mamba LMs). append_eot adds an end-of-text
    token after each caption; without it (CLIMP's released models) last-token pooling reads the
    caption's own last token, which as the backbone is causal has seen the whole caption."""

    def __init__(self, path: Union[str, Path], eos_token: str = "<|endoftext|>", pad_token: str = "<|padding|>",
                 max_length: Optional[int] = None, append_eot: bool = True, truncate: str = "keep_eot",
                 normalize: bool = False):
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
        truncate_ids([], None, truncate, None)
        self.max_length = max_length
        self.append_eot = append_eot
        self.truncate = truncate
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
        ids = self.tok.encode(text, add_special_tokens=False).ids + ([self.eot_id] if self.append_eot else [])
        return truncate_ids(ids, self.max_length, self.truncate, self.eot_id if self.append_eot else None)

    def num_tokens(self, text: str) -> int:
        text = normalize_caption(text) if self.normalize else text
        return len(self.tok.encode(text, add_special_tokens=False).ids) + int(self.append_eot)

    def __call__(self, texts: Texts) -> torch.Tensor:
        return pad_sequences([self.encode(t) for t in _as_list(texts)], self.pad_id)


TOKENIZER_CFG_KEYS = {"append_eot", "truncate", "context_length", "hf_name", "padding_side", "normalize"}


def check_tokenizer_cfg(tokenizer_cfg: Mapping[str, Any]) -> None:
    """Raise ValueError for unknown keys or values of a model config's tokenizer_cfg."""
    unknown = sorted(set(tokenizer_cfg) - TOKENIZER_CFG_KEYS)
    if unknown:
        raise ValueError(f"unknown tokenizer_cfg keys {unknown}; known: {sorted(TOKENIZER_CFG_KEYS)}")
    if tokenizer_cfg.get("padding_side", "right") != "right":
        raise ValueError("tokenizer_cfg padding_side must be 'right': text towers pool at the last non-padding "
                         "token of right-padded rows (left padding would run the padding through the backbone "
                         "before the caption)")
    truncate_ids([], None, tokenizer_cfg.get("truncate", "keep_eot"), None)


def tokenizer_from_config(tokenizer_cfg: Mapping[str, Any], path: Optional[Union[str, Path]] = None,
                          context_length: Optional[int] = None) -> Union[ClipBpeTokenizer, HFTokenizer]:
    """The tokenizer a model config describes: open_clip's BPE, or the tokenizer.json at `path`.

    tokenizer_cfg: append_eot (HF tokenizers; the BPE always appends), truncate ("keep_eot" or
    "cut"), context_length (the truncation length; overrides `context_length`), hf_name (the
    language model whose tokenizer.json the model needs; nothing downloads, so `path` must hold it)
    padding_side ("right", the only side the towers read: they pool at the last non-padding
    token, and causal towers never see padding that follows a caption) and normalize (captions
    pass through `normalize_caption` first: our own Mamba models, whose last-token features
    would otherwise hinge on trailing punctuation, case and spacing; released models keep their
    own rules).
    """
    check_tokenizer_cfg(tokenizer_cfg)
    max_length = tokenizer_cfg.get("context_length", context_length)
    truncate = tokenizer_cfg.get("truncate", "keep_eot")
    normalize = bool(tokenizer_cfg.get("normalize", False))
    if path is None and tokenizer_cfg.get("hf_name"):
        raise ValueError(f"this model reads the token ids of {tokenizer_cfg['hf_name']}'s tokenizer; nothing "
                         "downloads, so give its tokenizer.json: create_model(..., tokenizer=<dir or file>) or "
                         "a pretrained directory holding tokenizer.json")
    if path is not None:
        return HFTokenizer(path, max_length=max_length, append_eot=tokenizer_cfg.get("append_eot", True),
                           truncate=truncate, normalize=normalize)
    if not tokenizer_cfg.get("append_eot", True):
        raise ValueError("open_clip's BPE tokenizer always appends its end token; append_eot=false needs "
                         "a language model's tokenizer.json")
    return ClipBpeTokenizer(max_length=max_length, truncate=truncate, normalize=normalize)
