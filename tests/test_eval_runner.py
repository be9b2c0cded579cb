import argparse
import json

import pytest
import torch

from climp.eval import TASKS, EvalSettings, evaluate
from climp.eval import command
from eval_fakes import TinyClip


class Tok:
    max_length = None

    def __call__(self, texts):
        ids = [[49406] + [(hash(w) % 40000) + 1 for w in t.split()] + [49407] for t in texts]
        n = max(map(len, ids))
        return torch.tensor([i + [0] * (n - len(i)) for i in ids])


SMALL = dict(num_samples=8, batch_size=8, shifts=["contrast", "rotation"], resolution_scales=[1, 2],
             resolution=32, hubness_k=3, captions_per_image=2)


def test_evaluate_all_tasks_on_the_embedded_benchmark():
    r = evaluate(TinyClip(), Tok(), None, list(TASKS), SMALL)
    assert set(r) == set(TASKS)
    assert set(r["zeroshot"]) == {f"embedded/{k}" for k in ("shape", "colour", "count", "position")}
    assert r["shifts"]["embedded/shape"]["contrast"]["levels"][0] == 1.0
    assert len(r["shifts"]["embedded/shape"]["rotation"]["accuracy"]) == 4
    assert set(r["resolution"]["embedded"]["sides"]) == {"32", "64"}
    assert r["resolution"]["embedded"]["sides"]["64"]["flops_per_image"] > 0
    assert r["dense"]["embedded/dense"]["captions_over_77_tokens"] > 0
    assert 0 <= r["spurious"]["embedded/spurious_shape"]["worst_group_accuracy"] <= 1
    json.dumps(r)


def test_settings_reject_unknown_keys_and_shifts():
    with pytest.raises(ValueError, match="unknown eval settings"):
        EvalSettings.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="unknown image shift"):
        EvalSettings.from_dict({"shifts": ["blur"]})
    with pytest.raises(ValueError, match="unknown or no eval tasks"):
        evaluate(TinyClip(), Tok(), None, ["zero-shot"], SMALL)


def test_climp_eval_command_writes_results_and_report(tmp_path):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "clip-vit-tiny", "--tasks", "zeroshot,shifts", "--out", str(tmp_path),
                              "--num-samples", "4", "--batch-size", "4", "--shifts", "greyscale"])
    assert command.run(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert "embedded/shape" in results["results"]["clip-vit-tiny"]["zeroshot"]
    report = (tmp_path / "report.md").read_text()
    assert "## zeroshot" in report and "shifts.png" in report and (tmp_path / "shifts.png").stat().st_size > 0


def test_clip_benchmark_adapter_shape():
    from clip_benchmark.models import load_clip
    from climp.eval.clip_benchmark_adapter import register_with_clip_benchmark
    from PIL import Image
    register_with_clip_benchmark()
    model, transform, tokenizer = load_clip("climp", "clip-vit-tiny", None, None, "cpu")
    image = transform(Image.new("RGB", (50, 40))).unsqueeze(0)
    ids = tokenizer(["a photo of a cat", "a dog"])
    assert not model.training and image.shape[1] == 3
    assert model.encode_image(image).shape[0] == 1 and model.encode_text(ids).shape[0] == 2
