"""Atomic checkpoints: round trip, latest pointer, clear errors, RNG capture."""
import json
import random

import numpy as np
import pytest
import torch

from climp.models.checkpoint_files import CONFIG_FILE, FORMAT
from climp.models.weights import StateDictMismatchError, load_state_dict_strict
from climp.train import checkpoint as ckpt
from train_standins import TinyClip


def _save(root, step, model, ema=None):
    return ckpt.save_checkpoint(root, step, model.state_dict(), {"model_name": "tiny", "model_cfg": {}},
                                {"step": step, "optimizer": {"lr": 0.1}},
                                ema.state_dict() if ema is not None else None)


def test_round_trip_and_latest_pointer(tmp_path):
    model, ema = TinyClip(), TinyClip(init_logit_bias=-1.0)
    first = _save(tmp_path, 5, model)
    second = _save(tmp_path, 10, model, ema)
    assert ckpt.resolve_checkpoint("latest", tmp_path) == second
    assert ckpt.resolve_checkpoint(first / ckpt.MODEL_FILE) == first
    loaded = ckpt.read_checkpoint(second)
    assert loaded.config["step"] == 10 and loaded.config["model_name"] == "tiny"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.weights[name], value)
    assert set(loaded.ema_weights) == set(ema.state_dict())
    assert ckpt.read_training_state(second)["optimizer"] == {"lr": 0.1}
    # nothing but the two checkpoints and the pointer is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", first.name, second.name]


def test_overwriting_a_step_replaces_it(tmp_path):
    model = TinyClip()
    _save(tmp_path, 3, model)
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
    path = _save(tmp_path, 3, model)
    assert ckpt.read_checkpoint(path).weights["logit_scale"].item() == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", path.name]


def test_failed_write_leaves_previous_checkpoint_and_pointer(tmp_path):
    model = TinyClip()
    good = _save(tmp_path, 1, model)
    with pytest.raises(Exception):
        ckpt.save_checkpoint(tmp_path, 2, model.state_dict(), {"x": 1}, {"bad": lambda: 0})
    assert ckpt.resolve_checkpoint("latest", tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", good.name]


def test_mismatched_weights_list_missing_and_unexpected_keys(tmp_path):
    state = TinyClip().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["visual.proj.bias"]
    state["text.proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(StateDictMismatchError) as err:
        load_state_dict_strict(TinyClip(), state, "ckpt X")
    message = str(err.value)
    assert "visual.proj.bias" in message and "extra.weight" in message
    assert "text.proj.weight: (3, 3) vs model (8, 16)" in message


def test_corrupt_files_raise_clear_errors(tmp_path):
    path = _save(tmp_path, 1, TinyClip())
    (path / ckpt.MODEL_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt checkpoint weights"):
        ckpt.read_checkpoint(path)
    (path / ckpt.STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt training state"):
        ckpt.read_training_state(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        ckpt.resolve_checkpoint("latest", tmp_path / "empty")
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(FileNotFoundError, match="not a CLIMP checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "unrelated")


def test_rng_state_round_trip_through_torch_save(tmp_path):
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"rng": state}, tmp_path / "s.pt")
    ckpt.restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_sidecar_is_json(tmp_path):
    path = _save(tmp_path, 7, TinyClip())
    sidecar = json.loads((path / CONFIG_FILE).read_text())
    assert sidecar["format"] == FORMAT and sidecar["step"] == 7
