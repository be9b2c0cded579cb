"""SIGINT/SIGTERM stop training after the current step with a checkpoint; the run resumes from
it exactly; a second signal exits at once; DDP ranks stop together."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from climp.cli import main
from climp.models.checkpoint_files import pointer_target
from climp.train.metrics_log import read_metrics
from climp.train.stopping import StopRequest, TrainingStopped
from climp.train.trainer import Trainer, train
from train_standins import tiny_components, tiny_config

REPO = Path(__file__).resolve().parents[1]


class SignalAt:
    """A collate function that sends `signum` to this process while building micro-batch `call`."""

    def __init__(self, collate, call: int, signum: int):
        self.collate, self.call, self.signum, self.calls = collate, call, signum, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), self.signum)
        return self.collate(batch)


def _components_signalling_at(call: int, signum: int):
    components = tiny_components(dropout=0.2)
    components.collate_fn = SignalAt(components.collate_fn, call, signum)
    return components


def _final_weights(cfg):
    return load_file(str(pointer_target(cfg.run_dir / "checkpoints") / "model.safetensors"))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path, signum):
    full = tiny_config(tmp_path, name="full", steps=7)
    uninterrupted = train(full, tiny_components(dropout=0.2))

    cfg = tiny_config(tmp_path, name="stopped", steps=7)
    before = signal.getsignal(signum)
    with pytest.raises(TrainingStopped) as stop:
        train(cfg, _components_signalling_at(3, signum))
    assert signal.getsignal(signum) is before  # handlers restored
    assert (stop.value.step, stop.value.signal_name) == (3, signal.Signals(signum).name)
    assert stop.value.exit_code == 128 + signum
    assert pointer_target(cfg.run_dir / "checkpoints").name == "step_0000003"
    assert [r["step"] for r in read_metrics(cfg.run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert not (cfg.run_dir / "results.json").exists()

    resumed = tiny_config(tmp_path, name="stopped", steps=7, resume="latest")
    results = train(resumed, tiny_components(dropout=0.2))
    assert results["steps"] == 7 and results["samples_seen"] == 7 * 8
    for key in ("final_loss", "final_loss_steps", "last_step_loss"):  # the loss window was saved too
        assert results[key] == uninterrupted[key], key
    full_weights, resumed_weights = _final_weights(full), _final_weights(resumed)
    for name, value in full_weights.items():
        assert torch.equal(resumed_weights[name], value), name


def test_second_signal_exits_at_once():
    exits = []
    request = StopRequest(announce=False, exit_now=exits.append)
    request.handle(signal.SIGTERM)
    assert request.signal_name == "SIGTERM" and exits == []
    request.handle(signal.SIGINT)
    assert exits == [128 + signal.SIGINT]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, tmp_path, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # Only rank 1 is signalled (as when a scheduler signals one process).
        components = (_components_signalling_at(2, signal.SIGTERM) if rank == 1
                      else tiny_components(dropout=0.2))
        trainer = Trainer(tiny_config(tmp_path, steps=6), components)
        try:
            trainer.run()
            results[rank] = ("finished", trainer.step)
        except TrainingStopped as stop:
            results[rank] = (stop.signal_name, stop.step)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_on_the_stop(tmp_path):
    assert "WORLD_SIZE" not in os.environ
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(2, _free_port(), tmp_path, results), nprocs=2, join=True)
        results = dict(results)
    assert results == {0: ("SIGTERM", 2), 1: ("SIGTERM", 2)}
    assert pointer_target(tmp_path / "run" / "checkpoints").name == "step_0000002"


MICRO_MODEL = {
    "embed_dim": 32,
    "vision_cfg": {"type": "vmamba", "image_size": 32, "patch_size": 4, "depths": [1, 1],
                   "dims": [16, 32], "d_state": 1, "ssm_ratio": 1.0, "forward_type": "v05_noz",
                   "mlp_ratio": 1.0, "downsample": "v3", "pool": "pyramid"},
    "text_cfg": {"type": "mamba", "vocab_size": 49408, "d_model": 32, "n_layer": 1, "d_state": 4,
                 "expand": 1},
}


def _climp(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "climp.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.usefixtures("single_thread")
def test_cli_sigterm_mid_run_then_resume(tmp_path):
    model = tmp_path / "micro.json"
    model.write_text(json.dumps(MICRO_MODEL))
    flags = ["train", "--model", str(model), "--name", "micro", "--output-dir", str(tmp_path),
             "--steps", "400", "--batch-size", "4", "--train-samples", "16", "--resolution", "32",
             "--warmup", "2", "--eval-samples", "4", "--retrieval-samples", "4", "--log-every", "1",
             "--no-progress"]
    metrics = tmp_path / "micro" / "metrics.jsonl"
    process = _climp(*flags)
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no training step within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: finishing the current step" in err
    assert "Traceback" not in err
    stopped_at = int(err.split("stopped by SIGTERM after step ")[1].split()[0])
    assert stopped_at >= 2
    checkpoint = pointer_target(tmp_path / "micro" / "checkpoints")
    assert checkpoint.name == f"step_{stopped_at:07d}"
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, stopped_at + 1))

    # Resume in this process (saves a second interpreter start), two more steps: the run
    # continues from the checkpoint, not from the start.
    torch.set_num_threads(1)
    with pytest.warns(UserWarning, match=f"steps 400 -> {stopped_at + 2}"):
        assert main([*flags, "--resume", "latest", "--steps", str(stopped_at + 2), "--resume-override"]) == 0
    results = json.loads((tmp_path / "micro" / "results.json").read_text())
    assert results["steps"] == stopped_at + 2 and results["samples_seen"] == 4 * (stopped_at + 2)
    assert [r["step"] for r in read_metrics(metrics) if "loss" in r] == list(range(1, stopped_at + 3))
