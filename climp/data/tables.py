"""Caption tables (CSV/TSV) for training and evaluation: one layout, detected and explained.

The layout: a header row naming an image column and a caption column, one row per (image,
caption) pair; image paths are relative to the file's folder (or absolute). Column names are
matched case-insensitively: images `image` (aliases filepath, file, path, img, image_path),
captions `caption` (aliases title, text). The separator (comma, tab, semicolon or |) is read
from the header. Fields may be any length; the file must be UTF-8 (a BOM is fine), and an
undecodable byte is reported with its file and line.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

IMAGE_COLUMNS: Tuple[str, ...] = ("image", "filepath", "file", "path", "img", "image_path")
CAPTION_COLUMNS: Tuple[str, ...] = ("caption", "title", "text")
SEPARATORS = (",", "\t", ";", "|")
_SEPARATOR_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "bar"}


def _allow_any_field_size() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


_allow_any_field_size()


def read_utf8(path: Path) -> str:
    """The file's text; ValueError naming file, line and byte when it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not valid UTF-8; save the "
                         "file as UTF-8") from None


def _header_fields(header: str, sep: str) -> List[str]:
    return [f.strip() for f in next(csv.reader([header], delimiter=sep), [])]


def _find(columns: Sequence[str], wanted: Optional[str], aliases: Sequence[str]) -> Optional[str]:
    lowered = {c.lower(): c for c in columns}
    for name in ([wanted] if wanted else aliases):
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def detect_layout(path: Path, header: str, img_key: Optional[str] = None,
                  caption_key: Optional[str] = None, sep: Optional[str] = None
                  ) -> Tuple[str, str, str]:
    """(separator, image column, caption column) of a table from its header line.

    Given values are checked, missing ones detected; the error lists what was read with each
    separator, so a wrong separator or column name is plain to see.
    """
    tried = []
    for candidate in ([sep] if sep else SEPARATORS):
        columns = _header_fields(header, candidate)
        image = _find(columns, img_key, IMAGE_COLUMNS)
        caption = _find(columns, caption_key, CAPTION_COLUMNS)
        if image and caption and image != caption:
            return candidate, image, caption
        tried.append(f"{_SEPARATOR_NAMES.get(candidate, repr(candidate))}-separated: {columns}")
    image_names = img_key or "/".join(IMAGE_COLUMNS)
    caption_names = caption_key or "/".join(CAPTION_COLUMNS)
    raise ValueError(f"{path}: the header needs an image column ({image_names}) and a caption column "
                     f"({caption_names}); read {'; '.join(tried)}. Rename the columns, or name them "
                     "with --csv-img-key/--csv-caption-key and the separator with --csv-separator")


def read_caption_rows(path: Union[str, Path], img_key: Optional[str] = None,
                      caption_key: Optional[str] = None, sep: Optional[str] = None
                      ) -> Iterator[Tuple[int, str, str]]:
    """(line number, image path, caption) per data row, fields stripped; rows may be empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    text = read_utf8(path)
    header = io.StringIO(text, newline="").readline()
    if not header.strip():
        raise ValueError(f"{path}: empty file or no header row")
    sep, image, caption = detect_layout(path, header.rstrip("\r\n"), img_key, caption_key, sep)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep)
    reader.fieldnames = [f.strip() for f in reader.fieldnames or []]
    for row in reader:
        yield reader.line_num, (row.get(image) or "").strip(), (row.get(caption) or "").strip()
