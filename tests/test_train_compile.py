"""`climp train --compile`: the training steps run through torch.compile and match eager ones."""
import pytest
import torch

from climp.train.command import add_arguments, config_from_args
from climp.train.trainer import Trainer
from train_standins import run_steps, tiny_components, tiny_config

pytestmark = pytest.mark.usefixtures("single_thread")


def test_compile_flag_sets_the_config():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--compile"])).compile is True
    assert config_from_args(parser.parse_args([])).compile is False


def test_compiled_training_matches_eager(tmp_path):
    eager = Trainer(tiny_config(tmp_path, name="eager", steps=3), tiny_components())
    compiled = Trainer(tiny_config(tmp_path, name="compiled", steps=3, compile=True), tiny_components())
    assert isinstance(compiled.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.train_model._orig_mod is compiled.model  # same parameters, trained in place
    eager_losses, compiled_losses = run_steps(eager, 3), run_steps(compiled, 3)
    for step, loss in eager_losses.items():
        assert compiled_losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[name], value, rtol=1e-4, atol=1e-6)
