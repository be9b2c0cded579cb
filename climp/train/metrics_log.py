"""Training metrics: one JSON line per log step, optional TensorBoard, and the loss-curve PNG."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union


class MetricsLogger:
    """Appends metric dicts to `<run_dir>/metrics.jsonl` (and TensorBoard when asked)."""

    def __init__(self, run_dir: Union[str, Path], tensorboard: bool = False,
                 purge_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("--tensorboard needs the tensorboard package "
                                 "(pip install 'climp[tensorboard]')") from err
            # purge_step drops events a resumed run is about to log again
            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, record: Mapping[str, Any], prefix: str = "train") -> None:
        """Write one record; numeric fields also go to TensorBoard as `<prefix>/<key>`."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
        if self._writer is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """All records of a metrics.jsonl file, in order."""
    with Path(path).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def count_records(path: Union[str, Path]) -> int:
    """Number of records in a metrics.jsonl file (0 when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open() as handle:
        return sum(1 for line in handle if line.strip())


def truncate_metrics(path: Union[str, Path], step: int, records: Optional[int] = None) -> None:
    """Cut a metrics.jsonl back to what was logged up to `step` (the first `records` records when
    known, as the checkpoint saw them; in any case none after `step`), replacing it atomically."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path)[:records] if r.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        handle.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    os.replace(tmp, path)


def plot_loss_curve(records: List[Dict[str, Any]], out_path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Save training loss (and learning rate on a twin axis) against step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    if not train:
        raise ValueError("no training loss records to plot")
    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["loss"] for r in train], color="tab:blue", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("contrastive loss", color="tab:blue")
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [r["lr"] for r in train], color="tab:orange", alpha=0.6, label="lr")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(title or "training loss")
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
