"""Every checkpoint argument takes a run directory, `checkpoints/`, `latest` or a step directory;
the sidecar is bound to its weights, and bad sidecars are reported naming the file."""
import json

import pytest
import torch

import climp
from climp.cli import main
from climp.models.checkpoint_files import read_sidecar, resolve_checkpoint_path
from climp.train import checkpoint as ckpt

MODEL = "clip-vit-tiny"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `climp train` leaves it, holding an older and a newer checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "vit-run"
    torch.manual_seed(0)
    model = climp.create_model(MODEL)
    sidecar = {"model_name": MODEL, "model_cfg": model.config, "train": {"model": MODEL}}
    ckpt.save_checkpoint(run / "checkpoints", 1, climp.create_model(MODEL).state_dict(), sidecar, {"step": 1})
    ckpt.save_checkpoint(run / "checkpoints", 2, model.state_dict(), sidecar, {"step": 2})
    return run


def _forms(run):
    step = run / "checkpoints" / "step_0000002"
    return [run, run / "checkpoints", run / "checkpoints" / "latest", step]


def test_every_form_resolves_to_the_latest_step(run_dir):
    step = run_dir / "checkpoints" / "step_0000002"
    for form in _forms(run_dir):
        assert resolve_checkpoint_path(form) == step, form
        assert ckpt.resolve_checkpoint(str(form)) == step, form
    assert resolve_checkpoint_path(step / "model.safetensors") == step / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint_path(run_dir / "nope")


def test_loaders_accept_every_form(run_dir):
    reference = climp.load_checkpoint(run_dir / "checkpoints" / "step_0000002").state_dict()
    forms = _forms(run_dir)
    models = [climp.load_checkpoint(form) for form in forms]
    models += [climp.create_model(MODEL, pretrained=form) for form in forms[:2]]
    for model in models:
        for name, value in reference.items():
            assert torch.equal(model.state_dict()[name], value), name
    assert climp.get_tokenizer(run_dir)(["a cat"]).shape[0] == 1


def test_eval_cli_takes_the_pointer_file(run_dir, tmp_path, monkeypatch):
    from climp.eval import job

    seen = {}

    def evaluate(model, tokenizer, preprocess, tasks, settings):  # the evaluation itself is tested elsewhere
        seen["weights"] = model.state_dict()
        return {"zeroshot": {}}

    monkeypatch.setattr(job, "evaluate", evaluate)
    monkeypatch.setattr(job, "write_report", lambda results, out: out / "report.md")
    code = main(["eval", "--model", MODEL, "--checkpoint", str(run_dir / "checkpoints" / "latest"),
                 "--tasks", "zeroshot", "--out", str(tmp_path / "eval")])
    assert code == 0
    reference = climp.load_checkpoint(run_dir / "checkpoints" / "step_0000002").state_dict()
    assert all(torch.equal(seen["weights"][k], v) for k, v in reference.items())


def _copy_run(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy / "checkpoints" / "step_0000002"


@pytest.mark.parametrize("edit", [("vision_cfg", "image_size", 96), ("text_cfg", "pad_id", 1)])
def test_hand_edited_sidecar_is_detected(run_dir, tmp_path, edit):
    step = _copy_run(run_dir, tmp_path)
    sidecar = json.loads((step / "config.json").read_text())
    tower, key, value = edit
    sidecar["model_cfg"][tower][key] = value
    (step / "config.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"config.json was changed after the checkpoint was written"):
        climp.load_checkpoint(step)
    with pytest.raises(ValueError, match=r"config.json was changed"):
        climp.create_model(MODEL, pretrained=step.parent.parent)


def test_reformatted_sidecar_is_accepted(run_dir, tmp_path):
    step = _copy_run(run_dir, tmp_path)
    sidecar = json.loads((step / "config.json").read_text())
    (step / "config.json").write_text(json.dumps(sidecar, indent=7))  # same content, other layout
    assert read_sidecar(step)["model_name"] == MODEL


def test_invalid_json_and_missing_tokenizer_name_the_file(run_dir, tmp_path):
    step = _copy_run(run_dir, tmp_path)
    (step / "config.json").write_text('{"model_cfg": ')
    with pytest.raises(ValueError, match=r"checkpoint config .*step_0000002/config.json is not valid JSON"):
        climp.load_checkpoint(step)
    sidecar = {"model_name": MODEL, "model_cfg": {**climp.create_model(MODEL).config,
                                                  "tokenizer": str(tmp_path / "gone")}}
    ckpt.save_checkpoint(tmp_path / "other", 1, climp.create_model(MODEL).state_dict(), sidecar, {})
    with pytest.raises(FileNotFoundError, match=r"tokenizer path .*gone named in checkpoint config .*config.json"):
        climp.get_tokenizer(tmp_path / "other")
