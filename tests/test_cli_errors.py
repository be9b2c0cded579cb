"""User errors print one `climp: error:` line and exit 2 (a traceback only with --debug), and
are caught before anything is built."""
import pytest
import torch

import climp
from climp.cli import main
from climp.train.stopping import TrainingStopped
from climp.train.trainer import Trainer
from train_standins import tiny_components, tiny_config


@pytest.fixture
def nothing_is_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(climp, "create_model_and_transforms", refuse)


@pytest.mark.usefixtures("nothing_is_built")
def test_train_image_size_not_divisible_by_stride(tmp_path, capsys):
    code = main(["train", "--resolution", "50", "--output-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == ("climp: error: image size 50 is not a multiple of climp-tiny's image-tower "
                           "stride 32; use e.g. 32")
    with pytest.raises(ValueError, match="image size 50"):
        main(["--debug", "train", "--resolution", "50", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="image size 50"):
        main(["train", "--resolution", "50", "--output-dir", str(tmp_path), "--debug"])


@pytest.mark.usefixtures("nothing_is_built")
def test_eval_bad_arguments_fail_before_building(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "climp-tiny", "--tasks", "zeroshot,retrievl", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown or no eval tasks ['retrievl']" in capsys.readouterr().err
    assert main(["eval", "--model", "climp-tiny,nope", "--out", str(tmp_path)]) == 2
    assert "climp: error: unknown model 'nope'" in capsys.readouterr().err
    assert main(["eval", "--model", "clip-vit-tiny", "--resolution", "60", "--out", str(tmp_path)]) == 2
    assert "stride 8" in capsys.readouterr().err
    assert main(["eval", "--model", "clip-vit-tiny", "--checkpoint", str(tmp_path / "gone"),
                 "--out", str(tmp_path)]) == 2
    assert "climp: error: checkpoint not found" in capsys.readouterr().err


def test_stopped_training_exits_with_the_signal_code(monkeypatch, capsys, tmp_path):
    from climp.train import trainer

    def stopped(config):
        raise TrainingStopped("SIGTERM", 3, 10, "runs/x/checkpoints/step_0000003")

    monkeypatch.setattr(trainer, "train", stopped)
    assert main(["train", "--output-dir", str(tmp_path)]) == 143
    err = capsys.readouterr().err
    assert "climp: stopped by SIGTERM after step 3 of 10; saved checkpoint runs/x/checkpoints/step_0000003" in err
    assert "--resume latest" in err


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_nan_loss_hint_fits_the_precision(tmp_path, precision):
    components = tiny_components()
    with torch.no_grad():
        components.model.logit_scale.fill_(float("nan"))
    trainer = Trainer(tiny_config(tmp_path, precision=precision), components)
    with pytest.raises(FloatingPointError) as err:
        trainer.run()
    assert "loss became nan at step 1" in str(err.value)
    assert ("--precision fp32" in str(err.value)) == (precision != "fp32")


def test_interrupt_outside_the_training_loop_is_one_line(monkeypatch, capsys, tmp_path):
    from climp.train import trainer

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(["train", "--output-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "climp: interrupted\n"
