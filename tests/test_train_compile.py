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


def test_compiled_climp_tiny_step_matches_eager():
    """climp-tiny (shrunk) through inductor, the default torch.compile backend: every custom op runs
    inside the compiled graph, with inductor's stride checks on their outputs."""
    import climp
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    small = dict(vision_cfg={"depths": [1, 1, 1, 1], "image_size": 32}, text_cfg={"n_layer": 1})
    eager = climp.create_model("climp-tiny", **small).train()
    compiled_model = climp.create_model("climp-tiny", **small).train()
    compiled_model.load_state_dict(eager.state_dict())
    images, texts = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 12))

    def step(model, forward):
        torch.manual_seed(1)  # the same drop-path draws in both
        out = forward(images, texts)
        loss = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want_grads = step(eager, eager)
    got_loss, got_grads = step(compiled_model, torch.compile(compiled_model))
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
