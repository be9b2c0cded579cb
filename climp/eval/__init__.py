"""Evaluation of CLIMP and CLIP models: zero-shot classification, retrieval, image shifts,
spurious correlations, OOD detection, resolution scaling, dense-caption retrieval, hubness,
shape bias, and efficiency (FLOPs, inference and training activation memory, throughput).

`evaluate(model, tokenizer, preprocess, tasks, settings)` runs any subset of TASKS on the embedded
benchmark (climp.data.synthetic) and on local real data (see datasets.py). `climp.eval.job.run_eval(EvalJob)`
evaluates several models and writes results.json and report.md; `climp eval` and `climp bench`
are the command-line shells (command.py, bench_command.py over bench.run_bench).

Evaluating a CLIMP model with CLIP_benchmark (pip install clip_benchmark; nothing downloads when
datasets already sit under --dataset_root):

    from clip_benchmark.models import load_clip
    from climp.eval.clip_benchmark_adapter import register_with_clip_benchmark
    register_with_clip_benchmark()          # adds model_type "climp"
    model, transform, tokenizer = load_clip("climp", "climp-tiny", "runs/x/checkpoint", None, "cpu")

`load_for_clip_benchmark(name, checkpoint)` returns (model, transform, tokenizer) in open_clip's
create_model_and_transforms / get_tokenizer shape, so CLIP_benchmark's zero-shot and retrieval
code (model.encode_image / encode_text, tokenizer(list) -> ids) runs unchanged.
"""
from .runner import TASKS, EvalSettings, evaluate

__all__ = ["evaluate", "EvalSettings", "TASKS"]
