"""A run stopped after k steps and resumed reproduces the uninterrupted run bitwise."""
import json

import pytest
import torch
from safetensors.torch import load_file

from climp.train.checkpoint import resolve_checkpoint
from climp.train.trainer import Trainer, train
from train_standins import run_steps, tiny_components, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("accum_freq", [1, 2])
def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path, accum_freq):
    # 64 samples / (8 x accum) per step: the run crosses epoch boundaries; dropout and
    # augmentation make RNG state and data order matter.
    common = dict(steps=10, accum_freq=accum_freq, ema_decay=0.9)
    full = Trainer(tiny_config(tmp_path, name="full", **common), tiny_components(dropout=0.2))
    full_losses = run_steps(full, 10)

    first = Trainer(tiny_config(tmp_path, name="split", **common), tiny_components(dropout=0.2))
    run_steps(first, 3)
    first.save()
    del first  # the "killed" process

    resumed = Trainer(tiny_config(tmp_path, name="split", resume="latest", **common),
                      tiny_components(dropout=0.2))
    assert resumed.step == 3
    resumed_losses = run_steps(resumed, 10)

    assert resumed_losses == {s: full_losses[s] for s in range(4, 11)}  # bitwise equal floats
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, full.model.state_dict()[name]), name
    for name, value in resumed.ema.state_dict().items():
        assert torch.equal(value, full.ema.state_dict()[name]), name


def test_worker_processes_do_not_change_training(tmp_path):
    # batches and augmentations are seeded per sample, so a run loading in a worker process
    # equals one loading in the main process, across epoch boundaries
    common = dict(steps=10, ema_decay=0.9)
    in_process = Trainer(tiny_config(tmp_path, name="main", workers=0, **common), tiny_components(dropout=0.2))
    in_process_losses = run_steps(in_process, 10)
    with_workers = Trainer(tiny_config(tmp_path, name="workers", workers=1, **common), tiny_components(dropout=0.2))
    assert run_steps(with_workers, 10) == in_process_losses  # bitwise equal floats
    for name, value in with_workers.model.state_dict().items():
        assert torch.equal(value, in_process.model.state_dict()[name]), name


def test_weights_only_resume_differs(tmp_path):
    # The bitwise check can fail: restoring weights and data position but not the optimizer
    # and RNG state gives a different continuation.
    full_losses = run_steps(Trainer(tiny_config(tmp_path, name="a", steps=6),
                                    tiny_components(dropout=0.2)), 6)
    first = Trainer(tiny_config(tmp_path, name="b", steps=6), tiny_components(dropout=0.2))
    run_steps(first, 3)
    naive = Trainer(tiny_config(tmp_path, name="c", steps=6), tiny_components(dropout=0.2))
    naive.model.load_state_dict(first.model.state_dict())
    naive.stream.epoch, naive.stream.batch_in_epoch = first.stream.epoch, first.stream.batch_in_epoch
    naive.step = 3
    assert run_steps(naive, 6) != {s: full_losses[s] for s in (4, 5, 6)}


def test_resume_refuses_other_model(tmp_path):
    first = Trainer(tiny_config(tmp_path, steps=2), tiny_components())
    run_steps(first, 1)
    first.save()
    with pytest.raises(ValueError, match="model 'tiny-standin' -> 'other'"):
        Trainer(tiny_config(tmp_path, steps=2, model="other", resume="latest"), tiny_components())


def test_run_writes_results_and_artifacts(tmp_path):
    cfg = tiny_config(tmp_path, steps=30, lr=5e-2, batch_size=16, warmup=3, log_every=5)
    results = train(cfg, tiny_components(num_samples=128, augment=False))
    run_dir = cfg.run_dir
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == [5, 10, 15, 20, 25, 30]
    assert {"step", "epoch", "loss", "lr", "logit_scale", "samples_per_s", "time"} <= set(records[0])
    assert losses[30] < 0.5 * losses[5]
    assert results["metrics"]["zeroshot_shape"] > 0.5  # chance is 0.25
    assert set(results["metrics"]) >= {"image_to_text_R@1", "text_to_image_R@10", "zeroshot_colour"}
    weights = load_file(str(resolve_checkpoint("latest", run_dir / "checkpoints") / "model.safetensors"))
    assert set(weights) == set(tiny_components().model.state_dict())
