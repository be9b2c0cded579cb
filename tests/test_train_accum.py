"""Feature accumulation over micro-batches equals one large batch; bf16/fp16 precision rules."""
import pytest
import torch

from climp.train.precision import autocast, grad_scaler
from climp.train.trainer import Trainer
from train_standins import run_steps, tiny_components, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def _trained(tmp_path, name, batch_size, accum_freq, loss="clip"):
    cfg = tiny_config(tmp_path, name=name, batch_size=batch_size, accum_freq=accum_freq,
                      steps=3, grad_clip=0.0, loss=loss)
    trainer = Trainer(cfg, tiny_components(augment=False, loss=loss))
    losses = run_steps(trainer, 3)
    return trainer, losses


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_feature_accumulation_matches_large_batch(tmp_path, loss):
    big, big_losses = _trained(tmp_path, "big", 16, 1, loss)
    acc, acc_losses = _trained(tmp_path, "acc", 4, 4, loss)
    assert acc_losses == pytest.approx(big_losses, rel=1e-5)
    for name, param in big.model.named_parameters():
        torch.testing.assert_close(acc.model.get_parameter(name).grad, param.grad,
                                   rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {name}: {m}")
        torch.testing.assert_close(acc.model.get_parameter(name), param, rtol=1e-4, atol=1e-6)


def test_small_batch_without_accumulation_differs(tmp_path):
    # The comparison above can fail: 4 plain steps of 4 are not one step of 16.
    big, _ = _trained(tmp_path, "big", 16, 1)
    small, _ = _trained(tmp_path, "small", 4, 1)
    assert not torch.allclose(small.model.visual.proj.weight, big.model.visual.proj.weight)


def test_bf16_training_runs_on_cpu(tmp_path):
    cfg = tiny_config(tmp_path, precision="bf16", steps=3)
    trainer = Trainer(cfg, tiny_components())
    losses = run_steps(trainer, 3)
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    with autocast("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_fp16_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        grad_scaler("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Trainer(tiny_config(tmp_path, precision="fp16"), tiny_components())
    assert grad_scaler("fp32", torch.device("cpu")) is None


def test_logit_scale_is_clamped_to_ln_100(tmp_path):
    components = tiny_components()
    with torch.no_grad():
        components.model.logit_scale.fill_(10.0)
    trainer = Trainer(tiny_config(tmp_path, steps=1), components)
    run_steps(trainer, 1)
    assert trainer.model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())


def test_grad_checkpointing_flag_reaches_towers(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, grad_checkpointing=True), tiny_components())
    assert trainer.model.visual.grad_checkpointing and trainer.model.text.grad_checkpointing
