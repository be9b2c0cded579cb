"""Training and evaluating on your own data: caption caps, skipped samples, --val-data,
which evaluations run, class-level retrieval, seeded initialisation, the smoothed final loss."""
import argparse
import json
import logging

import pytest
import torch

from climp.data.collate import ImageTextCollate, TruncatingTokenizer, truncate_token_rows
from climp.data.sources import Skipped
from climp.eval import EvalSettings, evaluate
from climp.eval import command as eval_command
from climp.eval.retrieval import class_level_recall, retrieval_recall
from climp.tokenizer import ClipBpeTokenizer
from climp.train.config import TrainConfig
from climp.train.data import BatchStream
from climp.train.trainer import eval_sets, format_results, smoothed_loss, train
from eval_fakes import TinyClip
from train_standins import SometimesBroken


# ----------------------------------------------------------------------------- captions

def test_truncation_keeps_the_end_token_and_counts():
    tok = ClipBpeTokenizer()
    texts = ["a red square", "word " * 500, "a blue circle on a grey background"]
    full = tok(texts)
    collate = ImageTextCollate(tok, max_tokens=8)
    batch = collate([(torch.zeros(3, 4, 4), t) for t in texts])
    ids = batch[1]
    assert ids.shape == (3, 8) and batch.truncated == 2
    assert ids[0].tolist() == full[0, :8].tolist()  # short captions untouched
    for row in (1, 2):
        assert ids[row, :7].tolist() == full[row, :7].tolist() and ids[row, 7] == tok.eot_id
    cut, mask = truncate_token_rows(full, 8, pad_id=0)
    assert torch.equal(cut, ids) and mask.tolist() == [False, True, True]


def test_a_huge_caption_cannot_blow_up_the_batch():
    tok = TruncatingTokenizer(ClipBpeTokenizer(), 256)
    ids = tok(["a cat", "x " * 100_000])  # 200,000 characters
    assert ids.shape == (2, 256) and tok.truncated == 1 and ids[1, -1] == tok.eot_id


# ----------------------------------------------------------------------------- skipped samples

@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_dropped_not_duplicated_and_counted_once(workers):
    data = SometimesBroken()
    stream = BatchStream(data, ImageTextCollate(ClipBpeTokenizer()), batch_size=4, rank=0, world_size=1,
                         seed=0, workers=workers)
    seen = []
    for _ in range(3 * 3):  # three epochs of three batches
        images, _ = stream.next_step()[0]
        ids = images[:, 0, 0, 0].long().tolist()
        assert len(ids) == len(set(ids))  # never a duplicate in a batch
        seen += ids
    assert len(seen) == 3 * 10 and not {3, 7} & set(seen)
    assert data.skips.counts()["corrupt_image"] == 2 and data.skips.total == 2


def test_equalize_cuts_every_micro_batch_to_the_smallest_rank():
    data = SometimesBroken(n=8, broken=range(8)[1::2])
    stream = BatchStream(data, ImageTextCollate(ClipBpeTokenizer()), batch_size=4, rank=0, world_size=1,
                         seed=0, equalize=lambda n: min(n, 1))
    images, texts = stream.next_step()[0]
    assert images.shape[0] == texts.shape[0] == 1


def test_skipped_markers_travel_through_pickling():
    import pickle
    from climp.data.collate import Batch
    batch = Batch((torch.zeros(1), torch.zeros(1)), [Skipped("k", "missing_image")], 3)
    again = pickle.loads(pickle.dumps(batch))
    assert again.skipped[0].key == "k" and again.truncated == 3 and len(again) == 2


# ----------------------------------------------------------------------------- evaluation data

def test_eval_sets_follow_val_data_and_embedded_flag(own_data):
    transform = lambda image: torch.zeros(3, 8, 8)  # noqa: E731
    files = dict(train_data=str(own_data / "train.csv"), eval_samples=4, retrieval_samples=4)
    tasks, retrieval = eval_sets(TrainConfig.from_dict(files), transform)
    assert tasks == {} and retrieval == {}  # files, no --val-data: no embedded scenes
    tasks, retrieval = eval_sets(TrainConfig.from_dict({**files, "val_data": str(own_data / "val.csv")}), transform)
    assert tasks == {} and set(retrieval) == {"val"} and len(retrieval["val"]) == 8
    tasks, retrieval = eval_sets(TrainConfig.from_dict({**files, "val_data": str(own_data / "classes"),
                                                        "eval_embedded": True}), transform)
    assert set(tasks) == {"val", "shape", "colour", "count", "position"} and set(retrieval) == {""}
    assert tasks["val"].classnames == ["blue", "green", "red", "yellow"]
    tasks, retrieval = eval_sets(TrainConfig.from_dict({"eval_samples": 4, "retrieval_samples": 4}), transform)
    assert "shape" in tasks and set(retrieval) == {""}  # synthetic training keeps its benchmark


def test_class_level_retrieval_when_captions_repeat(caplog):
    images = torch.nn.functional.normalize(torch.tensor([[1, .1], [1, -.1], [.1, 1], [-.1, 1]]), dim=-1)
    texts = ["a cat", "a cat", "a dog", "a dog"]  # class captions: images 0, 1 cats; 2, 3 dogs
    owner = torch.tensor([0, 1, 2, 3])
    text_features = torch.tensor([[1., 0], [1, 0], [0, 1], [0, 1]])  # a perfect class-level model
    instance = retrieval_recall(images, text_features, owner, ks=(1,))
    assert instance["text_to_image_R@1"] == 0.5  # two identical captions cannot both rank first
    with caplog.at_level(logging.WARNING):
        out = class_level_recall(images, text_features, owner, texts, ks=(1,))
    assert "2 caption text(s) belong to several images" in caplog.text
    assert out["class_text_to_image_R@1"] == 1.0 and out["class_image_to_text_R@1"] == 1.0
    assert out["shared_caption_texts"] == 2
    assert class_level_recall(images, text_features, owner, ["a", "b", "c", "d"], ks=(1,)) == {}


class Tok:
    def __call__(self, texts):
        ids = [[49406] + [(hash(w) % 40000) + 1 for w in t.split()] + [49407] for t in texts]
        n = max(map(len, ids))
        return torch.tensor([i + [0] * (n - len(i)) for i in ids])


def test_climp_eval_runs_only_the_named_data(own_data):
    settings = EvalSettings.from_dict(dict(retrieval_file=str(own_data / "val.csv"), batch_size=4))
    assert settings.tasks_with_data() == ["retrieval", "hubness", "caption_shifts"]
    result = evaluate(TinyClip(), Tok(), None, ["retrieval"], settings)
    assert list(result["retrieval"]) == [str(own_data / "val.csv")]  # no embedded/short
    with pytest.raises(ValueError, match=r"\['spurious'\] have no data"):
        evaluate(TinyClip(), Tok(), None, ["retrieval", "spurious"], settings)
    both = EvalSettings.from_dict(dict(retrieval_file=str(own_data / "val.csv"), embedded=True,
                                       num_samples=4, batch_size=4, resolution=32))
    assert set(evaluate(TinyClip(), Tok(), None, ["retrieval"], both)["retrieval"]) == {
        "embedded/short", str(own_data / "val.csv")}


def test_climp_eval_of_an_untrained_model_is_reproducible(own_data, tmp_path):
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)

    def run(out, seed):
        args = parser.parse_args(["--model", "clip-vit-tiny", "--out", str(out), "--seed", str(seed),
                                  "--retrieval-file", str(own_data / "val.csv"), "--tasks", "retrieval"])
        assert eval_command.run(args) == 0
        return json.loads((out / "results.json").read_text())["results"]

    first, again, other = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert first == again
    assert first != other


# ----------------------------------------------------------------------------- reporting

def test_final_loss_is_the_mean_of_the_last_steps():
    assert smoothed_loss([1.0, 2.0, 3.0], 3.0) == {"final_loss": 2.0, "final_loss_steps": 3, "last_step_loss": 3.0}
    assert smoothed_loss([], 5.0)["final_loss"] == 5.0


def test_train_on_own_files_end_to_end(own_data, tmp_path):
    config = dict(model="climp-tiny", train_data=str(own_data / "train.csv"), val_data=str(own_data / "val.csv"),
                  steps=2, batch_size=19, resolution=32, warmup=1, log_every=1, progress=False, device="cpu",
                  max_caption_tokens=32, eval_every=1, output_dir=str(tmp_path / "runs"), name="own")
    results = train(config)  # two epochs of one batch holding all 19 rows
    assert results["skipped_by_reason"] == {"missing_image": 1}  # met twice, one sample
    assert results["truncated_captions"] == 2  # the long caption, once per epoch
    assert results["final_loss_steps"] == 2
    assert results["samples_seen"] == 2 * 18  # the sample without an image is not counted
    assert set(results["metrics"]) >= {"val/image_to_text_R@1", "val/text_to_image_R@1"}
    assert not any(k.startswith("zeroshot_") for k in results["metrics"])
    logged = [json.loads(line) for line in (tmp_path / "runs" / "own" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("kind") == "eval" and "val/image_to_text_R@1" in r] == [1, 2]
    saved = json.loads((tmp_path / "runs" / "own" / "results.json").read_text())
    assert saved["skipped_by_reason"] == results["skipped_by_reason"]
    table = format_results(results)
    assert "val image->text R@1" in table and "final loss (mean of last 2 steps)" in table
    assert "samples skipped: missing_image" in table and "captions cut to 32 tokens" in table


def test_config_options_for_own_data(own_data):
    from climp.train.data import open_train_source
    assert TrainConfig(csv_separator="tab").csv_separator == "\t"
    assert TrainConfig(csv_separator="\\t").csv_separator == "\t"
    with pytest.raises(ValueError, match="max_caption_tokens"):
        TrainConfig(max_caption_tokens=1)
    with pytest.raises(ValueError, match="csv_separator"):
        TrainConfig(csv_separator=";;")
    with pytest.raises(ValueError, match="--allow-pipe"):
        open_train_source("pipe:cat shard-{000..001}.tar", transform=None)
    data = open_train_source(str(own_data / "train.csv"), transform=None)
    assert len(data) == 19 and data.skips.total == 0  # the missing image is found when loaded


def test_val_data_from_caption_folders_and_shards(own_data):
    import io
    import tarfile
    from climp.train.val_data import is_class_folder_layout, open_val_source
    transform = lambda image: torch.zeros(3, 8, 8)  # noqa: E731
    folder = own_data / "val_images"
    assert not is_class_folder_layout(folder) and is_class_folder_layout(own_data / "classes")
    (folder / "val0.txt").write_text("first")
    (folder / "val1.txt").write_text("second")
    task, pairs = open_val_source(str(folder), transform)
    assert task is None and len(pairs) == 2 and pairs[1][1] == ["second"]
    shard = own_data / "val.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("a.png", (folder / "val0.png").read_bytes()), ("a.txt", b"one"),
                           ("b.png", b"not a png"), ("b.txt", b"two"),
                           ("c.png", (folder / "val1.png").read_bytes()), ("c.txt", b"three")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    task, pairs = open_val_source(str(shard), transform)
    assert task is None and [pairs[i][1] for i in range(len(pairs))] == [["one"], ["three"]]


def test_empty_micro_batches_are_passed_over_and_all_bad_data_is_an_error():
    data = SometimesBroken(n=8, broken=range(4))  # half the micro-batches hold only bad samples
    stream = BatchStream(data, ImageTextCollate(ClipBpeTokenizer()), batch_size=2, rank=0, world_size=1,
                         seed=0, equalize=lambda n: n)
    for _ in range(6):
        images, _ = stream.next_step()[0]
        assert images.shape[0] >= 1 and images[:, 0, 0, 0].min() >= 4
    dead = BatchStream(SometimesBroken(n=4, broken=range(4)), ImageTextCollate(ClipBpeTokenizer()),
                       batch_size=2, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match=r"no sample .* whole epoch \(skipped 4 samples \(corrupt_image: 4"):
        dead.next_step()


def test_stream_resumed_at_the_end_of_an_epoch_moves_on_to_the_next():
    """A run stopped after an epoch's last batch resumes there: nothing is drawn before the next
    epoch, which is no sign of unusable data."""
    stream = BatchStream(SometimesBroken(n=8, broken=()), ImageTextCollate(ClipBpeTokenizer()), batch_size=4,
                         rank=0, world_size=1, seed=0, batch_in_epoch=2)
    images, _ = stream.next_step()[0]
    assert stream.position == {"epoch": 1, "batch_in_epoch": 1} and len(images) == 4


def test_an_epoch_without_usable_samples_is_an_error():
    stream = BatchStream(SometimesBroken(n=8, broken=range(8)), ImageTextCollate(ClipBpeTokenizer()),
                         batch_size=4, rank=0, world_size=1, seed=0)
    with pytest.raises(ValueError, match="no sample of the training data could be used in a whole epoch"):
        stream.next_step()
