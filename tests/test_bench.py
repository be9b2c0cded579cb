"""`climp bench` through its settings: flags, the claim preset, and the files it writes."""
import json

import pytest

from climp.cli import main
from climp.eval.bench import CLAIM_MODELS, CLAIM_SIDES, BenchSettings, ratios


def test_settings_flags_and_claim_preset(tmp_path):
    import argparse

    from climp.eval import bench_command
    from climp.settings import from_args

    parser = argparse.ArgumentParser()
    bench_command.add_arguments(parser)
    args = parser.parse_args(["--models", "a,b", "--image-sizes", "32,64", "--no-throughput", "--out", str(tmp_path)])
    s = from_args(BenchSettings, args)
    assert (s.models, s.image_sizes, s.throughput, s.text_lengths[0]) == (["a", "b"], [32, 64], False, 77)
    claim = BenchSettings(claim=True, out=tmp_path).resolved()
    assert (claim.models, claim.image_sizes, claim.towers) == (CLAIM_MODELS, CLAIM_SIDES, ["image"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--towers", "image,audio", "--out", "x"])
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        from_args(BenchSettings, parser.parse_args(["--repeats", "0", "--out", "x"]))


def test_run_writes_table_json_and_plot(tmp_path, capsys):
    assert main(["bench", "--models", "clip-vit-tiny", "--towers", "image", "--image-sizes", "32",
                 "--no-throughput", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "bench.json").read_text())
    row = saved["results"]["clip-vit-tiny"]["image"]["32"]
    assert row["flops"] > 0 and saved["args"]["throughput"] == "False"
    assert row["training_activation_bytes"] > row["peak_activation_bytes"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 0 and "| clip-vit-tiny | image | 32 |" in capsys.readouterr().out


def test_attention_flag_sets_the_backend_of_both_memories(tmp_path):
    """--attention math keeps the attention matrix for the backward; --attention fused does not,
    and asked for with --memory-device meta it measures on the CPU, where the fused kernel exists."""
    rows = {}
    for kind in ("math", "fused"):
        assert main(["bench", "--models", "clip-vit-tiny", "--towers", "image", "--image-sizes", "64",
                     "--no-throughput", "--memory-device", "meta", "--attention", kind, "--out",
                     str(tmp_path / kind)]) == 0
        rows[kind] = json.loads((tmp_path / kind / "bench.json").read_text())["results"]["clip-vit-tiny"]["image"]["64"]
    math, fused = rows["math"], rows["fused"]
    assert (math["memory_device"], fused["memory_device"], fused["training_memory_device"]) == ("meta", "cpu", "cpu")
    assert math["training_attention_kernels"] == ["math (softmax of a materialised attention matrix)"]
    assert fused["training_attention_kernels"] == ["aten._scaled_dot_product_flash_attention_for_cpu"]
    # 64 px, patch 8: 65 tokens, 3 heads, 4 layers; math keeps each layer's softmax (and more)
    assert math["training_activation_bytes"] - fused["training_activation_bytes"] >= 4 * 3 * 65 * 65 * 4
    assert math["flops"] == fused["flops"]


def test_ratios_are_other_over_first():
    results = {"a": {"image": {"64": {"flops": 2.0}}}, "b": {"image": {"64": {"flops": 6.0}}}}
    assert ratios(results) == {"b / a image @ 64": {"flops": 3.0}}
