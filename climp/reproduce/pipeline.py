"""Run every stage for every (model, seed), skipping stages finished by an earlier run.

Each finished stage is one JSON file, written to a temporary name and renamed, so an interrupted
run leaves either a complete record or none; the next run redoes only what has no record
(training itself continues from its latest checkpoint). A record is reused only when it was
made with the same preset values, so a changed preset never mixes with stale results.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from . import stages
from .presets import Preset
from .stages import BENCH, MEMORY, MODEL_STAGES, SEED_STAGES, Job, StageFn, stage_settings


def atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """value as it reads back from JSON (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value))


class StageStore:
    """Stage records under <out>/stages/<model>/<seed<k> or all>/<stage>.json."""

    def __init__(self, out_dir: Path):
        self.root = Path(out_dir) / "stages"

    def path(self, model: str, seed: Optional[int], stage: str) -> Path:
        return self.root / model / ("all" if seed is None else f"seed{seed}") / f"{stage}.json"

    def load(self, model: str, seed: Optional[int], stage: str, settings: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The stored record, None if the stage has not finished; ValueError if it finished with
        other settings."""
        path = self.path(model, seed, stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("settings") != _plain(settings):
            raise ValueError(f"{path} was made with other {stage} settings than this preset's; "
                             "use another --out directory or delete it to start over")
        return record

    def save(self, model: str, seed: Optional[int], stage: str, settings: Mapping[str, Any],
             result: Dict[str, Any], seconds: float) -> Dict[str, Any]:
        record = {"stage": stage, "model": model, "seed": seed, "settings": _plain(settings),
                  "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "result": result}
        atomic_write_json(self.path(model, seed, stage), record)
        return _plain(record)


def plan(models: Sequence[str], seeds: Sequence[int]) -> List[Tuple[str, Optional[int], str]]:
    """(model, seed, stage) in run order: seed by seed all models, then the per-model stages, so a
    partial run already holds complete comparisons for its first seeds."""
    jobs = [(m, s, st) for s in seeds for m in models for st in SEED_STAGES]
    return jobs + [(m, None, st) for m in models for st in MODEL_STAGES]


def run_pipeline(preset: Preset, models: Sequence[str], out_dir: Path, seeds: Optional[Sequence[int]] = None,
                 stage_functions: Optional[Mapping[str, StageFn]] = None, progress: bool = True) -> Dict[str, Any]:
    """Run or reuse every stage; returns {"runs": {model: {seed: {stage: result}}}, "bench":
    {model: result}, "training_memory": {model: result}, "stages": [per-stage timing and whether
    it was reused]}."""
    functions = dict(stage_functions or stages.STAGE_FUNCTIONS)
    seeds = list(preset.seeds if seeds is None else seeds)
    store = StageStore(out_dir)
    runs: Dict[str, Dict[str, Dict[str, Any]]] = {m: {str(s): {} for s in seeds} for m in models}
    per_model: Dict[str, Dict[str, Any]] = {stage: {} for stage in MODEL_STAGES}
    log: List[Dict[str, Any]] = []
    jobs = plan(models, seeds)
    bar = tqdm(jobs, desc="reproduce", unit="stage", disable=not progress, dynamic_ncols=True)
    for model, seed, stage in bar:
        bar.set_description(f"reproduce: {stage} {model}" + ("" if seed is None else f" seed {seed}"))
        settings = stage_settings(stage, preset)
        record = store.load(model, seed, stage, settings)
        reused = record is not None
        if record is None:
            upstream = {} if seed is None else dict(runs[model][str(seed)])
            start = time.perf_counter()
            result = functions[stage](Job(model, seed, preset, Path(out_dir), upstream, progress))
            record = store.save(model, seed, stage, settings, result, time.perf_counter() - start)
        if seed is None:
            per_model[stage][model] = record["result"]
        else:
            runs[model][str(seed)][stage] = record["result"]
        log.append({"model": model, "seed": seed, "stage": stage, "seconds": record["seconds"], "reused": reused})
    bar.close()
    return {"runs": runs, "bench": per_model[BENCH], "training_memory": per_model[MEMORY], "stages": log}
