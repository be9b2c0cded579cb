"""Real-data sources (CSV/TSV, caption folders, webdataset shards), skip counting, collate."""
import io
import tarfile

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from climp.data.collate import ImageTextCollate
from climp.data.sources import (CsvDataset, ImageFolderCaptions, SkipCounter, Skipped,
                                webdataset_pipeline)

TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                        v2.Resize((16, 16), antialias=True)])
BPE = SimpleTokenizer()


def fake_tokenizer(texts):
    """BPE ids with start/end tokens, right-padded with 0 to the longest (the climp contract)."""
    ids = [[49406] + BPE.encode(t) + [49407] for t in texts]
    out = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for row, seq in enumerate(ids):
        out[row, :len(seq)] = torch.tensor(seq)
    return out


def image_bytes(colour, fmt="JPEG", size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


CORRUPT_JPEG = image_bytes((0, 0, 255))[:60]  # a valid header cut short


@pytest.fixture
def image_dir(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    (img / "red.jpg").write_bytes(image_bytes((255, 0, 0)))
    (img / "green.png").write_bytes(image_bytes((0, 255, 0), "PNG"))
    (img / "broken.jpg").write_bytes(CORRUPT_JPEG)
    (img / "not_an_image.jpg").write_bytes(b"hello")
    return tmp_path


# ----------------------------------------------------------------------------- CSV

def test_csv_relative_paths_corrupt_missing_and_empty(image_dir):
    csv_path = image_dir / "data.csv"
    csv_path.write_text("filepath,title\n"
                        "imgs/red.jpg,a red image\n"
                        "imgs/green.png,\"a green image, with a comma\"\n"
                        "imgs/broken.jpg,a truncated jpeg\n"
                        "imgs/missing.jpg,no such file\n"
                        "imgs/red.jpg,   \n"
                        "imgs/not_an_image.jpg,text bytes\n")
    ds = CsvDataset(csv_path)
    assert len(ds) == 5  # the empty caption is dropped when reading
    assert ds.skips.counts()["empty_caption"] == 1
    image, caption = ds[0]
    assert caption == "a red image" and image.size == (20, 12)
    assert np.asarray(image)[5, 5, 0] > 200
    assert ds[1][1] == "a green image, with a comma"
    assert all(isinstance(ds[i], Skipped) for i in (2, 3, 4))
    assert ds[3].key == f"{csv_path}:5" and ds[3].reason == "missing_image"
    ds[2], ds[3]  # seen again (a second epoch): still one skip per sample
    counts = ds.skips.counts()
    assert counts["corrupt_image"] == 2 and counts["missing_image"] == 1
    assert ds.skips.total == 4
    assert "corrupt_image: 2" in ds.skips.summary()


def test_tsv_with_other_columns_and_transform(image_dir):
    tsv = image_dir / "data.tsv"
    tsv.write_text("url\tcaption\n"
                   f"{image_dir / 'imgs' / 'red.jpg'}\tabsolute path\n")
    ds = CsvDataset(tsv, img_key="url", caption_key="caption", sep="\t", transform=TO_TENSOR)
    image, caption = ds[0]
    assert image.shape == (3, 16, 16) and caption == "absolute path"


def test_csv_errors_name_the_problem(image_dir):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        CsvDataset(image_dir / "nope.csv")
    bad = image_dir / "bad.csv"
    bad.write_text("picture,words\nimgs/red.jpg,x\n")
    with pytest.raises(ValueError, match=r"bad.csv.*image column.*comma-separated: \['picture', 'words'\]"):
        CsvDataset(bad)
    with pytest.raises(ValueError, match=r"tab-separated: \['picture,words'\]"):
        CsvDataset(bad, sep="\t")


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
@pytest.mark.parametrize("columns", [("image", "caption"), ("filepath", "title"), ("Path", "Text")])
def test_csv_separator_and_columns_detected(image_dir, sep, columns):
    table = image_dir / "data.txt"
    table.write_text(f"id{sep}{columns[0]}{sep}{columns[1]}\n"
                     f"7{sep}imgs/red.jpg{sep}\"red{sep} with a separator\"\n")
    ds = CsvDataset(table)
    assert ds.captions == [f"red{sep} with a separator"] and ds.paths == [image_dir / "imgs/red.jpg"]


def test_csv_huge_field_and_bad_bytes(image_dir):
    table = image_dir / "long.csv"
    long_caption = "word " * 40_000  # 200,000 characters, above csv's default field limit
    table.write_text(f"image,caption\nimgs/red.jpg,{long_caption}\n")
    assert CsvDataset(table).captions == [long_caption.strip()]
    latin = image_dir / "latin.csv"
    latin.write_bytes("image,caption\nimgs/red.jpg,ok\nimgs/red.jpg,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv:3: byte 0xe9 is not valid UTF-8"):
        CsvDataset(latin)
    folder = image_dir / "imgs"
    (folder / "red.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=r"red.txt:1: byte 0xe9"):
        ImageFolderCaptions(folder)


def test_pipe_urls_need_allow_pipe(shards):
    url = f"pipe:cat {shards / 'shard-000001.tar'}"
    with pytest.raises(ValueError, match="shell command.*--allow-pipe"):
        webdataset_pipeline(url)
    assert len(list(webdataset_pipeline(url, allow_pipe=True))) == 4


# ----------------------------------------------------------------------------- folder

def test_image_folder_captions(image_dir):
    root = image_dir / "imgs"
    (root / "red.txt").write_text("a red picture\n")
    (root / "green.txt").write_text("")
    (root / "broken.txt").write_text("broken one")
    sub = root / "sub"
    sub.mkdir()
    (sub / "blue.jpeg").write_bytes(image_bytes((0, 0, 255)))
    (sub / "blue.txt").write_text("a blue picture")
    ds = ImageFolderCaptions(root, transform=TO_TENSOR)
    # green: empty caption; not_an_image: no sidecar -> dropped up front.
    assert sorted(ds.captions) == ["a blue picture", "a red picture", "broken one"]
    counts = ds.skips.counts()
    assert counts["empty_caption"] == 1 and counts["missing_caption"] == 1
    loaded = [ds[i] for i in range(len(ds))]
    assert sum(isinstance(x, Skipped) for x in loaded) == 1 and ds.skips.counts()["corrupt_image"] == 1
    blue = next(x for x in loaded if not isinstance(x, Skipped) and x[1] == "a blue picture")
    assert blue[0][2].mean() > 0.9 and blue[0][0].mean() < 0.1
    with pytest.raises(FileNotFoundError):
        ImageFolderCaptions(image_dir / "absent")
    empty = image_dir / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderCaptions(empty)


# ----------------------------------------------------------------------------- webdataset

def write_shard(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    write_shard(tmp_path / "shard-000000.tar", [
        ("000.jpg", image_bytes((255, 0, 0))), ("000.txt", b"red"),
        ("001.png", image_bytes((0, 255, 0), "PNG")), ("001.txt", b"green"),
        ("002.jpg", CORRUPT_JPEG), ("002.txt", b"corrupt"),
        ("003.jpg", image_bytes((0, 0, 255))),                      # no caption
        ("004.jpg", image_bytes((9, 9, 9))), ("004.txt", b"  "),   # empty caption
    ])
    # Members of one sample must be adjacent in the tar (as img2dataset writes them).
    write_shard(tmp_path / "shard-000001.tar", [
        member for k in range(4) for member in
        ((f"1{k:02d}.jpg", image_bytes((k, k, k))), (f"1{k:02d}.txt", f"grey {k}".encode()))])
    return tmp_path


def test_webdataset_skips_and_counts(shards):
    pipe = webdataset_pipeline(str(shards / "shard-{000000..000001}.tar"), TO_TENSOR)
    samples = [s for s in pipe if not isinstance(s, Skipped)]
    captions = sorted(c for _, c in samples)
    assert captions == ["green", "grey 0", "grey 1", "grey 2", "grey 3", "red"]
    assert all(img.shape == (3, 16, 16) for img, _ in samples)
    counts = pipe.skips.counts()
    assert counts["corrupt_image"] == 1 and counts["missing_caption"] == 1
    assert counts["empty_caption"] == 1 and pipe.skips.total == 3


def test_webdataset_workers_split_shards_and_report_skips(shards):
    pipe = webdataset_pipeline([str(shards / "shard-000000.tar"),
                                str(shards / "shard-000001.tar")], TO_TENSOR)
    loader = DataLoader(pipe, batch_size=4, num_workers=2,
                        collate_fn=ImageTextCollate(fake_tokenizer))
    batches = list(loader)
    assert sum(len(b[0]) for b in batches if b) == 6  # each good sample exactly once
    assert pipe.skips.total == 0  # met inside the workers; the markers travel with the batches
    for batch in batches:
        pipe.skips.record(batch.skipped)
    assert pipe.skips.total == 3


def test_webdataset_unreadable_shard_is_counted(shards):
    (shards / "garbage.tar").write_bytes(b"not a tar file" * 64)
    pipe = webdataset_pipeline([str(shards / "garbage.tar"), str(shards / "shard-000001.tar")])
    assert len([s for s in pipe if not isinstance(s, Skipped)]) == 4
    assert pipe.skips.counts()["bad_sample"] == 1


def test_webdataset_missing_shards(shards):
    with pytest.raises(FileNotFoundError, match="1 of 3"):
        webdataset_pipeline(str(shards / "shard-{000000..000002}.tar"))


def test_csv_skip_counts_cross_worker_processes(image_dir):
    csv_path = image_dir / "data.csv"
    rows = ["imgs/red.jpg,ok"] * 6 + ["imgs/broken.jpg,bad"] * 3 + ["imgs/gone.jpg,bad"]
    csv_path.write_text("filepath,title\n" + "\n".join(rows) + "\n")
    ds = CsvDataset(csv_path, transform=TO_TENSOR)
    loader = DataLoader(ds, batch_size=3, num_workers=2,
                        collate_fn=ImageTextCollate(fake_tokenizer))
    kept = 0
    for epoch in range(2):  # every bad row is met twice, in either worker
        for batch in loader:
            kept += len(batch[0]) if batch else 0
            ds.skips.record(batch.skipped)
    assert kept == 12
    assert ds.skips.counts()["corrupt_image"] == 3 and ds.skips.counts()["missing_image"] == 1


# ----------------------------------------------------------------------------- collate

def test_collate_pads_to_longest_and_drops_none():
    collate = ImageTextCollate(fake_tokenizer)
    batch = [(torch.zeros(3, 8, 8), "a red star"), None,
             (torch.ones(3, 8, 8), "two small blue circles on a striped background")]
    images, tokens = collate(batch)
    assert images.shape == (2, 3, 8, 8) and images[1].eq(1).all()
    longest = len(BPE.encode(batch[2][1])) + 2
    assert tokens.shape == (2, longest) and tokens.dtype == torch.long
    short = len(BPE.encode("a red star")) + 2
    assert tokens[0, short - 1] == 49407 and tokens[0, short:].eq(0).all()
    assert collate([None, None]) == ()


def test_collate_rejects_bad_samples():
    collate = ImageTextCollate(fake_tokenizer)
    with pytest.raises(ValueError, match="transform"):
        collate([(Image.new("RGB", (4, 4)), "x")])
    with pytest.raises(ValueError, match="differ in shape"):
        collate([(torch.zeros(3, 4, 4), "x"), (torch.zeros(3, 5, 4), "y")])
    with pytest.raises(ValueError, match="str"):
        collate([(torch.zeros(3, 4, 4), 3)])


def test_skip_counter():
    skips = SkipCounter()
    assert skips.summary() == "skipped 0 samples"
    skips.add("corrupt_image", "a.jpg")
    marker = skips.add("corrupt_image", "b.jpg")
    skips.add("corrupt_image", "b.jpg")  # the same sample again
    skips.add("empty_caption", "a.jpg")  # the same sample for another reason
    assert isinstance(marker, Skipped) and marker.key == "b.jpg"
    assert skips.total == 3 and skips.counts()["corrupt_image"] == 2
    assert skips.summary() == "skipped 3 samples (corrupt_image: 2, empty_caption: 1)"
    with pytest.raises(ValueError, match="reason"):
        skips.add("cosmic_ray", "x")
    skips.reset()
    assert skips.total == 0
