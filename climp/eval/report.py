"""Markdown report with tables and matplotlib (Agg) PNG plots from evaluation results."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value) if len(json.dumps(value)) < 60 else "…"
    return str(value)


def scalar_table(rows: Dict[str, Dict[str, Any]]) -> List[str]:
    """Rows are result dicts keyed by label; columns are the union of their scalar metrics."""
    columns: List[str] = []
    for metrics in rows.values():
        columns += [k for k, v in metrics.items() if not isinstance(v, (dict, list)) and k not in columns]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, metrics in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(metrics.get(c, "")) for c in columns) + " |")
    return lines


def plot_shifts(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    """Accuracy vs level, one panel per shift, one line per model."""
    shifts = sorted({s for per_model in results.values() for curves in per_model.values() for s in curves})
    cols = min(3, len(shifts))
    rows = (len(shifts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, shift in zip(axes.flat, shifts):
        for model, per_data in results.items():
            for data, curves in per_data.items():
                if shift in curves:
                    c = curves[shift]
                    ax.plot(range(len(c["levels"])), c["accuracy"], marker="o", label=f"{model} ({data})")
                    ax.set_xticks(range(len(c["levels"])), [f"{v:.3g}" for v in c["levels"]], fontsize=7)
                    ax.set_xlabel(c["level_label"])
        ax.set_title(shift)
        ax.set_ylabel("top-1")
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(shifts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_resolution(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    """Accuracy, FLOPs and memory against the image side, one line per model."""
    keys = [("zero_shot_top1", "zero-shot top-1"), ("image_to_text_R@1", "image->text R@1"),
            ("flops_per_image", "FLOPs / image"),
            ("peak_activation_bytes", "peak activation bytes")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for model, per_data in results.items():
        for data, r in per_data.items():
            sides = sorted(r["sides"], key=int)
            for ax, (key, label) in zip(axes, keys):
                kept = [s for s in sides if key in r["sides"][s]]
                ax.plot([int(s) for s in kept], [r["sides"][s][key] for s in kept], marker="o",
                        label=f"{model} ({data})")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("image side")
                ax.set_ylabel(label)
                if key in ("flops_per_image", "peak_activation_bytes"):
                    ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: Dict[str, Dict[str, Any]], out_dir: Path) -> Path:
    """results: {model: {task: {data: metrics}}} -> out_dir/report.md (+ PNGs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# CLIMP evaluation", ""]
    tasks = []
    for per_model in results.values():
        tasks += [t for t in per_model if t not in tasks]
    for task in tasks:
        lines += [f"## {task}", ""]
        per_model = {m: r[task] for m, r in results.items() if task in r}
        if task == "shifts":
            plot_shifts(per_model, out_dir / "shifts.png")
            rows = {f"{m} / {d} / {s}": {f"{lv:g}": a for lv, a in zip(c["levels"], c["accuracy"])}
                    for m, r in per_model.items() for d, curves in r.items() for s, c in curves.items()}
            lines += ["![accuracy vs shift level](shifts.png)", ""]
            for label, row in rows.items():
                lines += [f"**{label}**: " + ", ".join(f"{k}: {v:.3f}" for k, v in row.items()), ""]
            continue
        if task == "resolution":
            plot_resolution(per_model, out_dir / "resolution.png")
            rows = {f"{m} / {d} / {side}px": row for m, r in per_model.items() for d, res in r.items()
                    for side, row in res["sides"].items()}
            lines += scalar_table(rows) + ["", "![resolution scaling](resolution.png)", ""]
            continue
        if task == "caption_shifts":
            rows = {f"{m} / {d} / {name}": row for m, r in per_model.items() for d, res in r.items()
                    for name, row in res["shifts"].items()}
            lines += scalar_table(rows) + [""]
            continue
        rows = {f"{m} / {d}": metrics for m, r in per_model.items() for d, metrics in r.items()}
        lines += scalar_table(rows) + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
