"""The reproduction report: results.json (everything measured, the claims and their verdicts),
REPORT.md (verdict table, per-claim evidence, per-model metrics, plots, run facts) and PNG plots."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .claims import (METRICS, PAPER_MEMORY_RATIO, all_claims, evaluate_claims, format_mean_std,  # noqa: E402
                     metric_summary)
from .pipeline import atomic_write_json  # noqa: E402
from .stages import MEMORY  # noqa: E402

VERDICT_MARK = {"holds": "✅ holds", "does not hold": "❌ does not hold", "inconclusive": "➖ inconclusive",
                "not measured": "· not measured"}
BAR_METRICS = ("retrieval_i2t_R@1", "retrieval_t2i_R@1", "ood_aupr", "shift_mean", "spurious_worst_group",
               "zeroshot_mean", "dense_i2t_R@1", "dense_t2i_R@1", "res2_t2i_R@1", "res4_t2i_R@1")


def build_results(preset: Any, models: Sequence[str], seeds: Sequence[int], pipeline: Mapping[str, Any],
                  environment: Mapping[str, Any], wall_seconds: float) -> Dict[str, Any]:
    """One JSON-ready dict: settings, raw stage results, claim verdicts, metric summary, timing."""
    runs = pipeline["runs"]
    per_model = {model: {MEMORY: result} for model, result in pipeline["training_memory"].items()}
    return {
        "preset": preset.name,
        "preset_settings": json.loads(json.dumps(asdict(preset))),
        "models": list(models),
        "seeds": list(seeds),
        "claims": evaluate_claims(all_claims(models), runs, per_model),
        "metrics": metric_summary(runs, per_model),
        "environment": dict(environment),
        "timing": {"wall_seconds": wall_seconds, "stages": pipeline["stages"]},
        "runs": runs,
        "bench": pipeline["bench"],
        "training_memory": pipeline["training_memory"],
    }


# ---------------------------------------------------------------------------- text
def stats_text(stats: Optional[Mapping[str, Any]]) -> str:
    return "-" if not stats else format_mean_std(stats["mean"], stats["std"])


def check_evidence(check: Mapping[str, Any]) -> str:
    text = f"{check['label']}: {check['subject_text']} vs {check['baseline_text']}"
    if check.get("ratio") is not None:
        text += f" (measured {check['ratio']:.2f}x, the paper's {check['target_ratio']:g}x)"
    return text


def verdict_table(claims: Sequence[Mapping[str, Any]]) -> List[str]:
    lines = ["| paper | claim | models | verdict | measured (subject vs baseline, mean ± std over seeds) |",
             "|---|---|---|---|---|"]
    for claim in claims:
        first = claim["checks"][0]
        evidence = "; ".join(check_evidence(c) for c in claim["checks"])
        lines.append(f"| {claim['paper']} | {claim['statement']} | {first['subject']} vs {first['baseline']} | "
                     f"{VERDICT_MARK[claim['verdict']]} | {evidence} |")
    return lines


def _number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.3f}"


def claim_section(claim: Mapping[str, Any]) -> List[str]:
    lines = [f"### {claim['paper']}: {claim['statement']}", "",
             f"**{VERDICT_MARK[claim['verdict']]}** ({claim['checks'][0]['subject']} vs "
             f"{claim['checks'][0]['baseline']})", ""]
    if claim.get("caveat"):
        lines += [f"Caveat: {claim['caveat']}.", ""]
    lines += ["| metric | better | subject | baseline | advantage | margin | verdict | note |",
              "|---|---|---|---|---|---|---|---|"]
    rows = [(c, False) for c in claim["checks"]] + [(c, True) for c in claim["details"]]
    for c, detail in rows:
        label = f"_{c['label']} (detail)_" if detail else c["label"]
        better = "higher" if c["higher_is_better"] else "lower"
        advantage, margin = _number(c["advantage"]), _number(c["margin"])
        if "target_ratio" in c:  # decided on the paper's factor
            advantage = "-" if c.get("ratio") is None else f"{c['ratio']:.2f}x"
            margin = f">= {c['target_ratio']:g}x"
        lines.append(f"| {label} | {better} | {c['subject_text']} | {c['baseline_text']} | {advantage} | "
                     f"{margin} | {c['verdict']} | {c['note']} |")
    return lines + [""]


def metrics_table(metrics: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> List[str]:
    lines = ["| metric | better | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for name, per_model in metrics.items():
        metric = METRICS[name]
        cells = [stats_text(per_model.get(m)) for m in models]
        lines.append(f"| {metric.label} | {'higher' if metric.higher_is_better else 'lower'} | " + " | ".join(cells) + " |")
    return lines


def summary_text(results: Mapping[str, Any]) -> str:
    """The terminal summary: one line per claim with its verdict and headline numbers."""
    claims = results["claims"]
    if not claims:
        return "no claim compares the chosen models"
    width = min(70, max(len(c["statement"]) for c in claims))
    lines = [f"{'verdict':<15} {'claim':<{width}}  measured (subject vs baseline)"]
    for claim in claims:
        statement = claim["statement"] if len(claim["statement"]) <= width else claim["statement"][:width - 1] + "…"
        first = claim["checks"][0]
        evidence = "; ".join(check_evidence(c) for c in claim["checks"][:2])
        if len(claim["checks"]) > 2:
            evidence += f"; +{len(claim['checks']) - 2} more"
        lines.append(f"{claim['verdict']:<15} {statement:<{width}}  [{first['subject']} vs {first['baseline']}] {evidence}")
    return "\n".join(lines)


def bench_section(bench: Mapping[str, Any]) -> List[str]:
    from climp.eval.bench import markdown, ratios

    if not bench:
        return []
    return ["## Efficiency benchmark (batch 1; the first model is the reference of the ratios)", "",
            markdown(dict(bench), ratios(dict(bench))), ""]


def training_memory_section(memory: Mapping[str, Any]) -> List[str]:
    """Training activation memory of each image tower per side and attention backend."""
    if not memory:
        return []
    lines = ["## Training activation memory (image tower, batch 1: what one forward keeps for the backward)", "",
             "| model | side | pixels | attention materialised, MiB | fused attention, MiB | attention kernels |",
             "|---|---|---|---|---|---|"]
    for model, result in memory.items():
        for side, row in result["sides"].items():
            kernels = "; ".join(", ".join(row[k]["training_attention_kernels"]) for k in ("math", "fused")
                                if row[k]["training_attention_kernels"]) or "-"
            lines.append(f"| {model} | {side} | {row['pixels_ratio']}x | "
                         f"{row['math']['training_activation_bytes'] / 2 ** 20:.2f} | "
                         f"{row['fused']['training_activation_bytes'] / 2 ** 20:.2f} | {kernels} |")
    return lines + [""]


def parameter_text(bench: Mapping[str, Any]) -> str:
    """Parameter counts of each model's towers, from the efficiency benchmark."""
    parts = []
    for model, result in bench.items():
        image = next(iter(result.get("image", {}).values()), {}).get("params")
        text = next(iter(result.get("text", {}).values()), {}).get("params")
        if image and text:
            parts.append(f"{model} {(image + text) / 1e6:.2f}M (image {image / 1e6:.2f}M, text {text / 1e6:.2f}M)")
    return f"Tower parameters: {'; '.join(parts)}." if parts else ""


def timing_section(results: Mapping[str, Any]) -> List[str]:
    env, timing = results["environment"], results["timing"]
    lines = ["## Run", "",
             f"- command: `{env.get('command', '')}`",
             f"- machine: {env.get('cpus', '?')} CPUs visible, torch threads {env.get('torch_threads', '?')}, "
             f"load average at start {env.get('load_start', '?')}, at end {env.get('load_end', '?')}",
             f"- torch {env.get('torch', '?')}, python {env.get('python', '?')}",
             f"- wall time of this invocation: {timing['wall_seconds'] / 60:.1f} min "
             f"(stages reused from an earlier run took no time here)", "",
             "| model | seed | stage | seconds | reused |", "|---|---|---|---|---|"]
    for s in timing["stages"]:
        seed = "-" if s["seed"] is None else s["seed"]
        lines.append(f"| {s['model']} | {seed} | {s['stage']} | {s['seconds']:.0f} | {'yes' if s['reused'] else 'no'} |")
    return lines + [""]


# ---------------------------------------------------------------------------- plots
def mean_tree(trees: Sequence[Any]) -> Any:
    """Average numeric leaves (and numeric lists elementwise) of identically shaped trees; other
    leaves are taken from the first tree."""
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: mean_tree([t[k] for t in trees if isinstance(t, Mapping) and k in t]) for k in first}
    if isinstance(first, list) and first and all(isinstance(v, (int, float)) for v in first) \
            and all(isinstance(t, list) and len(t) == len(first) for t in trees):
        return [sum(vals) / len(trees) for vals in zip(*trees)]
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(isinstance(t, (int, float)) for t in trees):
        return sum(trees) / len(trees)
    return first


def per_model_task(runs: Mapping[str, Mapping[str, Any]], task: str) -> Dict[str, Any]:
    """{model: seed-averaged eval results of one task} for models that ran it."""
    out = {}
    for model, per_seed in runs.items():
        trees = [r["eval"][task] for r in per_seed.values() if task in r.get("eval", {})]
        if trees:
            out[model] = mean_tree(trees)
    return out


def plot_metric_bars(metrics: Mapping[str, Mapping[str, Any]], models: Sequence[str], path: Path) -> Optional[Path]:
    names = [n for n in BAR_METRICS if n in metrics]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        stats = [metrics[n].get(model) for n in names]
        means = [s["mean"] if s else math.nan for s in stats]
        errors = [s["std"] if s and s["std"] is not None else 0.0 for s in stats]
        ax.bar([j + i * width for j in range(len(names))], means, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(names))],
                  [METRICS[n].label for n in names], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("mean over seeds (± std)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(runs: Mapping[str, Mapping[str, Any]], path: Path) -> Optional[Path]:
    from climp.train.metrics_log import read_metrics

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for i, (model, per_seed) in enumerate(runs.items()):
        for j, run in enumerate(per_seed.values()):
            log = Path(run.get("train", {}).get("run_dir", "")) / "metrics.jsonl"
            if not log.is_file():
                continue
            by_step = {r["step"]: r["loss"] for r in read_metrics(log) if "loss" in r}
            steps = sorted(by_step)
            ax.plot(steps, [by_step[s] for s in steps], color=f"C{i}", alpha=0.8, label=model if j == 0 else None)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("contrastive loss")
    ax.set_title("training loss (one line per seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: Mapping[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Every plot the results allow; {caption: path}."""
    from climp.analysis.plots import plot_density
    from climp.eval.bench import plot as plot_bench
    from climp.eval.report import plot_resolution, plot_shifts

    runs, models, paths = results["runs"], results["models"], {}
    bars = plot_metric_bars(results["metrics"], models, out_dir / "metrics.png")
    if bars:
        paths["headline metrics per model (error bars: std over seeds)"] = bars
    shifts = per_model_task(runs, "shifts")
    if shifts:
        plot_shifts(shifts, out_dir / "shifts.png")
        paths["accuracy under image shifts (mean over seeds)"] = out_dir / "shifts.png"
    resolution = per_model_task(runs, "resolution")
    if resolution:
        plot_resolution(resolution, out_dir / "resolution.png")
        paths["zero-shot accuracy, FLOPs and memory vs image side (mean over seeds)"] = out_dir / "resolution.png"
    hessian = {m: next(iter(per_seed.values()))["hessian"] for m, per_seed in runs.items()
               if per_seed and "hessian" in next(iter(per_seed.values()))}
    if hessian:
        paths["Hessian eigenvalue density (first seed)"] = plot_density(hessian, out_dir / "hessian_density.png")
    if results["bench"]:
        plot_bench(dict(results["bench"]), out_dir / "efficiency.png")
        paths["efficiency benchmark: FLOPs, memory, throughput"] = out_dir / "efficiency.png"
    losses = plot_loss_curves(runs, out_dir / "loss_curves.png")
    if losses:
        paths["training loss"] = losses
    return paths


# ---------------------------------------------------------------------------- writer
def render_markdown(results: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    preset = results["preset_settings"]
    claims = results["claims"]
    lines = [f"# CLIMP / CLIP-Mamba claims, reproduced on the embedded benchmark (preset `{results['preset']}`)", "",
             f"Preset `{results['preset']}`: {preset['description']}.", "",
             f"Models: {', '.join(results['models'])}. Seeds: {', '.join(map(str, results['seeds']))}. "
             f"Every model trained for {preset['train']['steps']} steps of batch {preset['train']['batch_size']} "
             f"on the same synthetic scenes ({preset['train']['caption_style']} captions"
             f"{', spurious background correlation in training' if preset['spurious_training'] else ''}) "
             "with the same seeds, then evaluated with the same code. " + parameter_text(results["bench"]), "",
             "Decision rule per check: the subject's advantage over the baseline (mean over seeds) must exceed "
             "the sum of both seed-to-seed standard deviations (the mean ± std intervals do not overlap) and the "
             "metric's tolerance; a deficit as large means the claim does not hold; anything in between is "
             "inconclusive. A claim holds when all its checks hold. With one seed there is no seed spread: rates "
             "are then compared with their binomial 95% confidence intervals (n = evaluated samples), the "
             "Hutchinson trace with its own interval, the top eigenvalue with its Lanczos residual bound, other metrics with the tolerance only (see the notes). "
             "The memory part of CLIMP's resolution claim is decided on the paper's own factor: the baseline's "
             f"training activation memory at 16x the training pixels (ViT with the attention matrix materialised) "
             f"divided by the subject's must reach {PAPER_MEMORY_RATIO:g}x, else it does not hold; the measured "
             "ratio is reported either way. These are tiny models trained briefly on synthetic "
             "data: a verdict says what this run measured, not what the papers measured at scale.", "",
             "## Verdicts", ""]
    lines += verdict_table(claims) if claims else ["No claim compares the chosen models."]
    lines += ["", "## Evidence per claim", ""]
    for claim in claims:
        lines += claim_section(claim)
    lines += ["## Metrics per model (mean ± std over seeds)", ""]
    lines += metrics_table(results["metrics"], results["models"]) + [""]
    if plots:
        lines += ["## Plots", ""]
        for caption, path in plots.items():
            lines += [f"**{caption}**", "", f"![{caption}]({Path(path).name})", ""]
    lines += bench_section(results["bench"])
    lines += training_memory_section(results["training_memory"])
    lines += timing_section(results)
    return "\n".join(lines) + "\n"


def write_report(results: Mapping[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Write results.json, the plots and REPORT.md into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", results)
    plots = write_plots(results, out_dir)
    report = out_dir / "REPORT.md"
    report.write_text(render_markdown(results, plots))
    return {"results": out_dir / "results.json", "report": report, **{p.stem: p for p in plots.values()}}
