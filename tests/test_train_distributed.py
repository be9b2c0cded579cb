"""Two gloo ranks on the CPU match one process on the combined batch (loss, grads, weights)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from climp.train.trainer import Trainer
from train_standins import run_steps, tiny_components, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")
STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _snapshot(trainer: Trainer, losses: dict) -> dict:
    return {"losses": losses,
            "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "grads": {k: p.grad.clone() for k, p in trainer.model.named_parameters()}}


def _train(tmp_path, name: str, batch_size: int, **overrides) -> dict:
    cfg = tiny_config(tmp_path, name=name, batch_size=batch_size, steps=STEPS, grad_clip=0.0,
                      **overrides)
    trainer = Trainer(cfg, tiny_components(num_samples=64, augment=False, loss=cfg.loss))
    return _snapshot(trainer, run_steps(trainer, STEPS))


def _rank_main(rank: int, world_size: int, port: int, tmp_path, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for loss, gather in (("clip", True), ("clip", False), ("siglip", True)):
            snap = _train(tmp_path / f"r{rank}", f"{loss}-{gather}", 8, loss=loss,
                          gather_with_grad=gather)
            results[(rank, loss, gather)] = snap
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_on_combined_batch(tmp_path):
    assert "WORLD_SIZE" not in os.environ
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(2, _free_port(), tmp_path, results), nprocs=2, join=True)
        results = dict(results)

    for loss in ("clip", "siglip"):
        single = _train(tmp_path / "single", loss, 16, loss=loss)
        for rank in (0, 1):
            ddp = results[(rank, loss, True)]
            assert set(ddp["losses"]) == set(range(1, STEPS + 1))
            for step, value in single["losses"].items():
                assert ddp["losses"][step] == pytest.approx(value, rel=1e-5, abs=1e-6), (loss, step)
            for name, grad in single["grads"].items():
                torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{loss} grad {name}: {m}")
            for name, weight in single["weights"].items():
                torch.testing.assert_close(ddp["weights"][name], weight, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{loss} weight {name}: {m}")

    # Without gradients through the gather, towers get 1/world_size of the large-batch
    # gradient (open_clip's documented behaviour): the comparison above would catch it.
    no_grad_gather = results[(0, "clip", False)]
    single = _train(tmp_path / "single2", "clip", 16, loss="clip")
    first_step_losses_match = no_grad_gather["losses"][1] == pytest.approx(single["losses"][1], rel=1e-5)
    assert first_step_losses_match
    assert not torch.allclose(no_grad_gather["grads"]["visual.proj.weight"],
                              single["grads"]["visual.proj.weight"], rtol=1e-3, atol=1e-6)
