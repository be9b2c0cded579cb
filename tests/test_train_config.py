"""Flags, recipes and their precedence; data order and quick-eval metrics against references."""
import argparse
import json

import pytest
import torch

from climp.train import command
from climp.train.config import TrainConfig, resolve_config
from climp.train.data import EpochBatchOrder, SeededSamples, sample_seed
from climp.eval.retrieval import retrieval_recall
from climp.train.quick_eval import zero_shot_accuracy
from train_standins import SHAPES, TinyClip, TinyPairs, ZeroShotTask, tokenize, TinyLabelled


def _parse(argv):
    parser = argparse.ArgumentParser(prog="climp train")
    command.add_arguments(parser)
    return parser, parser.parse_args(argv)


def test_help_lists_every_option():
    parser, _ = _parse([])
    text = parser.format_help()
    for flag in ("--model", "--loss", "--precision", "--ema-decay", "--resume", "--train-data",
                 "--csv-img-key", "--accum-freq", "--grad-checkpointing", "--eval-every", "--config"):
        assert flag in text


def test_defaults_recipe_and_explicit_flags_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.01\nsteps: 50\nema-decay: 0.99\n")
    _, args = _parse(["--config", str(recipe), "--steps", "7", "--no-progress"])
    cfg = command.config_from_args(args)
    assert (cfg.lr, cfg.steps, cfg.ema_decay, cfg.progress) == (0.01, 7, 0.99, False)
    assert cfg.batch_size == TrainConfig().batch_size
    json_recipe = tmp_path / "r.json"
    json_recipe.write_text(json.dumps({"model": "clip-vit-tiny", "train_data": "x.csv"}))
    cfg = resolve_config({}, str(json_recipe))
    assert cfg.model == "clip-vit-tiny" and cfg.data == "files"


def test_bad_values_raise_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="unknown training config keys \\['lr_max'\\]"):
        TrainConfig.from_dict({"lr_max": 1})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="object_scale"):
        TrainConfig(object_scale=0.0)
    with pytest.raises(ValueError, match="hard_negative_attributes"):
        TrainConfig(hard_negative_attributes="shape,texture")
    with pytest.raises(FileNotFoundError):
        resolve_config({}, str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit):
        _parse(["--loss", "triplet"])


def test_rank_shards_union_to_the_single_process_batches():
    single = list(EpochBatchOrder(40, 8, 0, 1, seed=3, epoch=2))
    ranks = [list(EpochBatchOrder(40, 4, r, 2, seed=3, epoch=2)) for r in (0, 1)]
    assert len(single) == 5
    for k, batch in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == batch
    assert list(EpochBatchOrder(40, 8, 0, 1, seed=3, epoch=2, start_batch=3)) == single[3:]
    assert list(EpochBatchOrder(40, 8, 0, 1, seed=3, epoch=3)) != single
    indices = [i for batch in single for i, _ in batch]
    assert len(set(indices)) == 40


def test_grouped_order_keeps_groups_whole_and_ungrouped_order_is_a_plain_permutation():
    grouped = list(EpochBatchOrder(44, 16, 0, 1, seed=3, epoch=1, group_size=8))
    assert len(grouped) == 2  # 40 usable indices (5 groups), 2 whole batches
    for batch in grouped:
        indices = [i for i, _ in batch]
        for start in range(0, 16, 8):
            run = indices[start:start + 8]
            assert run == list(range(run[0], run[0] + 8)) and run[0] % 8 == 0
    firsts = [i for batch in grouped for i, _ in batch][::8]
    assert len(set(firsts)) == 4 and firsts != [0, 8, 16, 24]  # distinct groups, shuffled as units
    plain = [i for batch in EpochBatchOrder(40, 8, 0, 1, seed=3, epoch=2) for i, _ in batch]
    generator = torch.Generator().manual_seed(sample_seed(3, 2, 0))
    assert plain == torch.randperm(40, generator=generator).tolist()
    with pytest.raises(ValueError, match="group_size"):
        EpochBatchOrder(40, 8, 0, 1, seed=3, epoch=2, group_size=0)


def test_seeded_samples_make_augmentation_reproducible():
    data = SeededSamples(TinyPairs(8))
    torch.manual_seed(0)
    first = data[(3, 11)][0]
    torch.rand(5)  # global RNG moves on; the sample does not
    assert torch.equal(data[(3, 11)][0], first)
    assert not torch.equal(data[(3, 12)][0], first)


def _brute_force_recall(sim, owner, k):
    n_img, n_txt = len(sim), len(sim[0])
    i2t = sum(any(owner[j] == i for j in sorted(range(n_txt), key=lambda j: -sim[i][j])[:k]) for i in range(n_img))
    t2i = sum(owner[j] in sorted(range(n_img), key=lambda i: -sim[i][j])[:k] for j in range(n_txt))
    return i2t / n_img, t2i / n_txt


def test_recall_matches_brute_force():
    torch.manual_seed(0)
    images, texts = torch.randn(12, 6), torch.randn(30, 6)
    sim = images @ texts.T
    owner = torch.randint(0, 12, (30,))
    results = retrieval_recall(images, texts, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = _brute_force_recall(sim.tolist(), owner.tolist(), k)
        assert results[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert results[f"text_to_image_R@{k}"] == pytest.approx(t2i)


def test_zero_shot_accuracy_counts_correct_predictions():
    class Oracle(TinyClip):
        """Image features one-hot in the true shape; text features one-hot in the named shape."""

        def encode_image(self, images, normalize=False):
            shape = images[:, :, :, :4].mean(dim=(2, 3)).argmax(dim=1)  # see scene(): channel = shape % 3
            return torch.nn.functional.one_hot(shape, 8).float()

        def encode_text(self, ids, normalize=False):
            names = [tokenize([s])[0, 0].item() for s in SHAPES[:3]]
            return torch.stack([torch.nn.functional.one_hot(torch.tensor(names.index(int(row[0]))), 8)
                                for row in ids]).float()

    task = ZeroShotTask("shape", SHAPES[:3], ["{}"], [s for s in map(TinyLabelled(0, 40).__getitem__, range(40)) if s[1] < 3])
    assert zero_shot_accuracy(Oracle(), tokenize, task) == 1.0
    flipped = ZeroShotTask("shape", SHAPES[:3][::-1], ["{}"], task.dataset)
    assert zero_shot_accuracy(Oracle(), tokenize, flipped) == pytest.approx(
        sum(y == 1 for _, y in task.dataset) / len(task.dataset))


def test_quick_evaluation_draws_no_progress_bars(capsys):
    from climp.eval.features import encode_texts
    from climp.train.quick_eval import quick_evaluate

    encode_texts(TinyClip(), tokenize, ["a red star"])
    assert "texts" in capsys.readouterr().err  # the full evaluation shows its progress
    task = ZeroShotTask("shape", SHAPES, ["{}"], TinyLabelled(0, num_samples=6))
    metrics = quick_evaluate(TinyClip(), tokenize, {"shape": task}, None)
    assert set(metrics) == {"zeroshot_shape"} and capsys.readouterr().err == ""


def test_object_scale_flag_reaches_the_embedded_evaluation():
    from climp.train.trainer import eval_sets

    _, args = _parse(["--object-scale", "1.6", "--eval-samples", "8", "--retrieval-samples", "4"])
    cfg = command.config_from_args(args)
    assert cfg.object_scale == 1.6
    tasks, retrieval = eval_sets(cfg, None)
    assert tasks["shape"].dataset.scenes[0].objects[0].radius > 0.14
    assert retrieval[""].scenes.rules.object_scale == 1.6
