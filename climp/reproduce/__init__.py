"""`climp reproduce`: the CLIMP and CLIP-Mamba claims, measured side by side on the embedded
benchmark (job.py: the entry point and its settings; presets.py: preset values; stages.py +
pipeline.py: resumable runs; claims.py: the claims and the decision rule; report.py: REPORT.md,
plots and results.json)."""
from .claims import all_claims, decide, evaluate_claims
from .job import ReproduceSettings, reproduce, run_reproduce
from .presets import PRESETS, Preset, get_preset

__all__ = ["reproduce", "run_reproduce", "ReproduceSettings", "all_claims", "decide", "evaluate_claims", "PRESETS",
           "Preset", "get_preset"]
