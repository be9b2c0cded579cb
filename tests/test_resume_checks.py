"""Resume checks the run's settings; --resume-override continues with the new values, and what
is logged (lr, samples seen, metrics.jsonl, the sidecar) is what was used."""
import json

import pytest

from climp.train.checkpoint import read_checkpoint, read_training_state
from climp.train.metrics_log import read_metrics
from climp.train.optim import warmup_cosine_factor
from climp.train.trainer import Trainer, train
from train_standins import run_steps, tiny_components, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _checkpoint_at(tmp_path, step=3, **overrides):
    trainer = Trainer(tiny_config(tmp_path, steps=8, **overrides), tiny_components())
    run_steps(trainer, step)
    trainer.save()
    return trainer


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 16}, "batch_size 8 -> 16"),
    ({"lr": 5e-3}, "lr 0.01 -> 0.005"),
    ({"warmup": 4}, "warmup 1 -> 4"),
    ({"steps": 12}, "steps 8 -> 12"),
    ({"model": "other"}, "model 'tiny-standin' -> 'other'"),
])
def test_changed_settings_are_refused_naming_both_values(tmp_path, change, message):
    _checkpoint_at(tmp_path)
    values = {"steps": 8, **change}
    with pytest.raises(ValueError, match=f"settings differ.*{message}.*--resume-override"):
        Trainer(tiny_config(tmp_path, resume="latest", **values), tiny_components())


def test_logging_and_evaluation_settings_may_change(tmp_path):
    _checkpoint_at(tmp_path)
    resumed = Trainer(tiny_config(tmp_path, steps=8, resume="latest", log_every=2, eval_every=4,
                                  save_every=2), tiny_components())
    assert resumed.step == 3


def test_override_uses_the_new_lr_and_schedule(tmp_path):
    _checkpoint_at(tmp_path)
    with pytest.warns(UserWarning, match="changed settings .*lr 0.01 -> 0.004"):
        resumed = Trainer(tiny_config(tmp_path, steps=20, lr=4e-3, warmup=2, resume="latest",
                                      resume_override=True), tiny_components())
    expected = 4e-3 * warmup_cosine_factor(3, 2, 20)  # the lr of the next step under the new schedule
    for group in resumed.optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected, rel=1e-12)
        assert group["initial_lr"] == 4e-3
    assert resumed.base_lr() == pytest.approx(expected, rel=1e-12)  # what metrics.jsonl logs
    run_steps(resumed, 4)
    assert resumed.base_lr() == pytest.approx(4e-3 * warmup_cosine_factor(4, 2, 20), rel=1e-12)


def test_override_of_batch_size_counts_samples_and_records_the_change(tmp_path):
    _checkpoint_at(tmp_path, step=3)  # 3 steps of 8 samples
    cfg = tiny_config(tmp_path, steps=5, batch_size=16, resume="latest", resume_override=True)
    with pytest.warns(UserWarning, match="changed settings .*batch_size 8 -> 16"):
        results = train(cfg, tiny_components())
    assert results["samples_seen"] == 3 * 8 + 2 * 16
    checkpoint = read_checkpoint(cfg.run_dir / "checkpoints" / "step_0000005")
    assert checkpoint.config["train"]["batch_size"] == 16
    history = checkpoint.config["resume_overrides"]
    assert history[0]["step"] == 3 and history[0]["changes"]["batch_size"] == [8, 16]
    assert read_training_state(checkpoint.directory)["samples_seen"] == 56


def test_metrics_are_truncated_to_the_resumed_step(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, steps=8, eval_every=2), tiny_components())
    for _ in range(3):
        trainer.train_step(trainer.stream.next_step())
        trainer.logger.log({"step": trainer.step, "loss": 1.0, "lr": 0.1})
    trainer.save()
    for _ in range(2):  # logged after the checkpoint, then the process dies
        trainer.train_step(trainer.stream.next_step())
        trainer.logger.log({"step": trainer.step, "loss": 1.0, "lr": 0.1})
    cfg = tiny_config(tmp_path, steps=8, eval_every=2, resume="latest")
    train(cfg, tiny_components())
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, 9))  # no step twice, in order
    assert [r["step"] for r in records if r.get("kind") == "eval"] == [4, 6, 8]
    assert json.loads((cfg.run_dir / "results.json").read_text())["samples_seen"] == 8 * 8


def test_changed_settings_fail_before_anything_is_built(tmp_path):
    _checkpoint_at(tmp_path)

    class Unbuildable:
        def __getattr__(self, name):
            raise AssertionError("components were used before the resume check")

    with pytest.raises(ValueError, match="batch_size 8 -> 4"):
        train(tiny_config(tmp_path, steps=8, batch_size=4, resume="latest"), Unbuildable())
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(tiny_config(tmp_path, name="never-trained", resume="latest"), Unbuildable())
