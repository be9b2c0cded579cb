"""Crash safety of checkpoint writes: a kill at any point of a (re-)save leaves a resumable run,
leftovers are cleaned at the next start, unreadable checkpoints fall back to older ones, and
files get the user's umask."""
import os
import shutil
import stat
import warnings

import pytest
import torch

from climp.models.checkpoint_files import CheckpointWarning, latest_checkpoint, pointer_target
from climp.train import checkpoint as ckpt
from climp.train.trainer import Trainer
from train_standins import TinyClip, run_steps, tiny_components, tiny_config


class Killed(BaseException):
    """Stands for the process dying at the patched call."""


def _save(root, step, scale):
    model = TinyClip()
    with torch.no_grad():
        model.logit_scale.fill_(scale)
    return ckpt.save_checkpoint(root, step, model.state_dict(), {"model_name": "tiny", "model_cfg": {}},
                                {"step": step})


def _scale(directory):
    return ckpt.read_checkpoint(directory).weights["logit_scale"].item()


def _kill_at_replace(monkeypatch, call: int):
    """Make the `call`-th os.replace from now on kill the 'process' instead of renaming."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == call:
            raise Killed(f"killed before renaming {src} -> {dst}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("call", [1, 2, 3, 4, 5, 6])
def test_kill_at_every_rename_of_a_resave_keeps_latest_valid(tmp_path, monkeypatch, call):
    # A re-save makes five renames (three pointer updates, two directory moves); call 6 never
    # comes, so the kill lands in the final clean-up instead.
    _save(tmp_path, 1, 0.5)
    _save(tmp_path, 3, 1.0)
    if call == 6:
        def rmtree(*args, **kwargs):
            raise Killed("killed before removing the retired copy")

        monkeypatch.setattr(shutil, "rmtree", rmtree)
    else:
        _kill_at_replace(monkeypatch, call)
    with pytest.raises(Killed):
        _save(tmp_path, 3, 2.0)
    monkeypatch.undo()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback needed: `latest` names a complete checkpoint
        current = latest_checkpoint(tmp_path)
    assert _scale(current) in (1.0, 2.0)

    notes = ckpt.recover(tmp_path)
    assert notes  # something was finished or removed, and said so
    assert pointer_target(tmp_path) == tmp_path / "step_0000003"
    # Before the pointer first names the new copy the old one stays; from then on the new one wins.
    assert _scale(tmp_path / "step_0000003") == (1.0 if call == 1 else 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001", "step_0000003"]


@pytest.mark.usefixtures("single_thread")
def test_trainer_resumes_after_a_kill_inside_the_resave_window(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, steps=6)
    first = Trainer(cfg, tiny_components())
    run_steps(first, 3)
    first.save()
    _kill_at_replace(monkeypatch, 4)  # old copy moved aside, new one not yet renamed in
    with pytest.raises(Killed):
        first.save()
    monkeypatch.undo()

    resumed = Trainer(tiny_config(tmp_path, steps=6, resume="latest"), tiny_components())
    assert resumed.step == 3
    assert run_steps(resumed, 6)
    assert not [p for p in cfg.run_dir.joinpath("checkpoints").iterdir() if p.name.startswith(".")]


def test_dangling_pointer_falls_back_to_newest_complete_checkpoint(tmp_path):
    _save(tmp_path, 2, 0.5)
    newest = _save(tmp_path, 4, 1.0)
    shutil.rmtree(newest)
    with pytest.warns(CheckpointWarning, match="step_0000004, which is missing.*newest complete checkpoint"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step_0000002"
    (tmp_path / "latest").unlink()
    with pytest.warns(CheckpointWarning, match="no latest pointer; using the newest complete checkpoint"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step_0000002"


@pytest.mark.usefixtures("single_thread")
def test_staging_leftovers_are_removed_at_the_next_start(tmp_path, capsys):
    cfg = tiny_config(tmp_path, steps=4)
    Trainer(cfg, tiny_components()).save()
    root = cfg.run_dir / "checkpoints"
    (root / ".staging-step_0000002-1a2b").mkdir()
    (root / ".staging-step_0000002-1a2b" / "model.safetensors").write_bytes(b"x" * 100)
    (root / ".step_0000002.old.x9").mkdir()  # an older version's staging name
    (root / ".latest.77.tmp").write_text("step_0000002\n")
    Trainer(cfg, tiny_components())
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000000"]
    assert "removed 3 leftover(s)" in capsys.readouterr().out


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("damage", ["weights", "state"])
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    cfg = tiny_config(tmp_path, steps=6)
    trainer = Trainer(cfg, tiny_components())
    run_steps(trainer, 2)
    trainer.save()
    run_steps(trainer, 4)
    trainer.save()
    newest = cfg.run_dir / "checkpoints" / "step_0000004"
    (newest / (ckpt.MODEL_FILE if damage == "weights" else ckpt.STATE_FILE)).write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning, match="(?s)cannot resume from .*step_0000004.*falling back .*step_0000002"):
        resumed = Trainer(tiny_config(tmp_path, steps=6, resume="latest"), tiny_components())
    assert resumed.step == 2
    # an explicitly named checkpoint is not replaced by another one
    with pytest.raises(ValueError, match="corrupt"):
        Trainer(tiny_config(tmp_path, steps=6, resume=str(newest)), tiny_components())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = _save(tmp_path / "ck", 1, 1.0)
        _save(tmp_path / "ck", 1, 2.0)  # the re-save path too
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for file in [path / ckpt.MODEL_FILE, path / ckpt.STATE_FILE, tmp_path / "ck" / "latest"]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file


@pytest.mark.usefixtures("single_thread")
def test_resuming_a_finished_run_resaves_its_last_step(tmp_path):
    from climp.train.metrics_log import read_metrics
    from climp.train.trainer import train

    cfg = tiny_config(tmp_path, steps=4)
    first = train(cfg, tiny_components())
    again = train(tiny_config(tmp_path, steps=4, resume="latest"), tiny_components())
    assert again["steps"] == first["steps"] == 4 and again["samples_seen"] == 32
    assert again["metrics"] == first["metrics"]
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["latest", "step_0000004"]
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r.get("kind") == "eval"] == [4]
