"""`climp hessian` end to end on a tiny two-tower model standing in for the model factory and
the embedded benchmark (both are swapped in through the command module's loaders)."""
from __future__ import annotations

import argparse
import json

import numpy
import pytest
import torch
from PIL import Image

import climp
import climp.analysis.command as command
import climp.analysis.job as job
import climp.analysis.params as params
from analysis_models import MeanPoolText, ScanText, TinyClip, shrunk_climp_tiny


def tiny_loader(name, checkpoint, resolution, device):
    torch.manual_seed(0 if name == "tiny-pool" else 1)
    model = TinyClip(MeanPoolText() if name == "tiny-pool" else ScanText(), logit_bias=name == "tiny-siglip")

    def preprocess(image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(numpy.asarray(image.resize((2, 2)), dtype=numpy.float32)) / 255.0
        return pixels.permute(2, 0, 1)

    def tokenizer(captions):
        ids = [[1 + (ord(c) % 11) for c in caption.split()[0][:4]] for caption in captions]
        width = max(len(i) for i in ids)
        return torch.tensor([i + [0] * (width - len(i)) for i in ids])

    return model, preprocess, tokenizer, resolution or 8


def tiny_samples(num_samples, resolution, seed, caption_style):
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (num_samples, 3), generator=g).tolist()
    return [(Image.new("RGB", (resolution, resolution), tuple(c)), f"w{c[0] % 7}{c[1] % 5} scene") for c in colours]


def parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(job, "load_model", tiny_loader)
    monkeypatch.setattr(job, "synthetic_samples", tiny_samples)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FAST = ["--num-batches", "2", "--batch-size", "4", "--top-k", "2", "--lanczos-steps", "8",
        "--hutchinson-samples", "4", "--slq-runs", "2", "--slq-steps", "6", "--landscape-steps", "3", "--no-progress"]


def test_single_model_writes_table_json_and_plots(tiny, tmp_path, capsys):
    assert command.run(parse(["--model", "tiny-pool", "--output-dir", str(tmp_path), *FAST])) == 0
    printed = capsys.readouterr().out
    assert "lambda_1" in printed and "trace (Hutchinson)" in printed
    assert "negative mass (lambda < -0.01 max|lambda|)" in printed and "negative mass bounds (95%)" in printed
    results = json.loads((tmp_path / "results.json").read_text())["models"]
    r = results["tiny-pool"]
    negative = r["negative_mass"]
    assert negative["threshold_rel"] == 0.01 and negative["probes"] == 2
    assert negative["bounds"][0] <= negative["fraction"] <= negative["bounds"][1]
    assert r["hvp"]["method"] == "finite-difference" and r["hvp"]["eps_rel"] == 3e-4 and r["excluded"] == []
    assert r["num_parameters"] == sum(p.numel() for p in tiny_loader("tiny-pool", None, None, "cpu")[0].parameters())
    assert len(r["eigen"]["top"]) == 2 and r["eigen"]["top"][0] >= r["eigen"]["top"][1]
    assert r["landscape"]["mode"] == "1d" and len(r["landscape"]["loss"]) == 3
    assert r["landscape"]["loss"][1] == pytest.approx(r["loss"], rel=1e-6)
    assert (tmp_path / "density.png").stat().st_size > 0 and (tmp_path / "landscape_1d.png").stat().st_size > 0


def test_compare_mode_two_models_2d_random_text_only(tiny, tmp_path, capsys):
    argv = ["--model", "tiny-pool", "--compare", "tiny-scan", "--params", "text", "--landscape", "2d",
            "--landscape-directions", "random", "--output-dir", str(tmp_path), *FAST]
    assert command.run(parse(argv)) == 0
    header = capsys.readouterr().out.splitlines()
    assert any("tiny-pool" in line and "tiny-scan" in line for line in header)
    results = json.loads((tmp_path / "results.json").read_text())["models"]
    assert set(results) == {"tiny-pool", "tiny-scan"}
    for r in results.values():
        assert all(name.startswith("text.") for name in r["parameter_names"])
        assert len(r["landscape"]["loss"]) == 3 and len(r["landscape"]["loss"][0]) == 3
    assert (tmp_path / "landscape_2d.png").stat().st_size > 0


def test_siglip_model_and_bad_arguments(tiny, tmp_path):
    assert command.run(parse(["--model", "tiny-siglip", "--landscape", "none", "--output-dir", str(tmp_path), *FAST])) == 0
    assert "landscape" not in json.loads((tmp_path / "results.json").read_text())["models"]["tiny-siglip"]
    with pytest.raises(ValueError, match="--checkpoint2 needs --compare"):
        command.run(parse(["--model", "tiny-pool", "--checkpoint2", "x", *FAST]))
    with pytest.raises(ValueError, match="matches no parameter"):
        command.run(parse(["--model", "tiny-pool", "--params", "vision", "--output-dir", str(tmp_path), *FAST]))
    with pytest.raises(ValueError, match="batch_size >= 2"):
        command.run(parse(["--model", "tiny-pool", "--output-dir", str(tmp_path), *FAST, "--batch-size", "1"]))


def test_real_loader_reports_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        job.load_model("clip-vit-tiny", str(tmp_path / "missing"), None, "cpu")


def test_default_exclusion_is_the_token_embedding_and_none_keeps_it(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(params, "TOKEN_EMBEDDINGS", ("text.embed", "text.token_embedding"))
    model = tiny_loader("tiny-pool", None, None, "cpu")[0]
    everything = sum(p.numel() for p in model.parameters())
    runs = {"default": [], "none": ["--exclude", "none"], "proj": ["--exclude", "text.proj"]}
    counts = {}
    for label, extra in runs.items():
        assert command.run(parse(["--model", "tiny-pool", "--landscape", "none", "--output-dir", str(tmp_path / label),
                                  *FAST, *extra])) == 0
        r = json.loads((tmp_path / label / "results.json").read_text())["models"]["tiny-pool"]
        counts[label] = r["num_parameters"]
        assert r["excluded"] == {"default": ["text.embed"], "none": [], "proj": ["text.proj"]}[label]
    assert counts == {"default": everything - model.text.embed.weight.numel(), "none": everything,
                      "proj": everything - sum(p.numel() for p in model.text.proj.parameters())}
    with pytest.raises(ValueError, match="--exclude none cannot be combined"):
        command.run(parse(["--model", "tiny-pool", "--output-dir", str(tmp_path), *FAST, "--exclude", "none", "text.proj"]))


def test_token_embedding_names_of_climp_text_towers():
    mamba, _ = shrunk_climp_tiny()
    assert params.token_embeddings(mamba) == ["text.backbone.embedding"]
    vit = climp.create_model("clip-vit-tiny", vision_cfg={"width": 8, "layers": 1, "head_width": 4, "image_size": 16},
                             text_cfg={"width": 8, "heads": 2, "layers": 1, "vocab_size": 32})
    assert params.token_embeddings(vit) == ["text.token_embedding"]
    assert params.token_embeddings(TinyClip(MeanPoolText())) == []


def test_autograd_option_threads_and_their_errors(tiny, tmp_path):
    before = torch.get_num_threads()
    argv = ["--model", "tiny-scan", "--hvp", "autograd", "--cache-graph", "--threads", "2", "--landscape", "none",
            "--output-dir", str(tmp_path), *FAST]
    assert command.run(parse(argv)) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["models"]["tiny-scan"]["hvp"]["method"] == "autograd" and saved["torch_threads"] == 2
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="cache_graph applies"):
        command.run(parse(["--model", "tiny-scan", "--cache-graph", *FAST]))
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        command.run(parse(["--model", "tiny-scan", "--threads", "0", "--output-dir", str(tmp_path), *FAST]))
    with pytest.raises(SystemExit):
        parse(["--model", "tiny-scan", "--hvp", "exact"])
