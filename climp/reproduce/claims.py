"""The claims of the CLIMP and CLIP-Mamba papers as data, and the rule deciding whether each
holds in a reproduction run.

A claim is a list of checks; a check compares one metric of a subject model with the same
metric of a baseline model over the training seeds. Decision rule (one per check):
  advantage = subject mean - baseline mean, sign flipped when lower is better;
  margin    = subject std + baseline std (seed-to-seed, ddof=1), i.e. the mean +- std
              intervals overlap exactly when |advantage| <= margin; never below the metric's
              tolerance (absolute, or relative to the larger mean);
  holds when advantage > margin, does not hold when advantage < -margin, else inconclusive.
With a single seed there is no seed spread: a stochastic estimate with its own confidence
interval (the Hutchinson trace; the Lanczos residual bound of the top eigenvalue; a rate on n
samples, binomial) is decided against the two intervals, anything else against the tolerance
only, and the check says so. An estimate whose interval includes a systematic part that seeds do
not average out (the Hessian negative mass: its quadrature error) is decided against the larger
of the seed spread and the two intervals. Deterministic metrics (FLOPs, memory) have no spread
by nature. A check may instead carry the paper's own factor (`min_ratio`, e.g. CLIMP's "5x less
memory"): it holds when the measured ratio, baseline cost / subject cost, reaches that factor, and
does not hold otherwise, the ratio reported either way. A claim holds when all its checks hold,
does not hold when any check does not, and is inconclusive otherwise; `details` are reported next
to a claim without entering its verdict.

Metrics are read per (model, seed) from the seed stages (train, eval, hessian), or, for costs that
do not depend on the trained weights (`per_model`), once per model from the model stages
(training activation memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .stages import MEMORY

HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"

StageResults = Mapping[str, Any]  # {"train": ..., "eval": ..., "hessian": ...} of one (model, seed)
ModelResults = Mapping[str, Any]  # {"train_memory": ...}: the per-model stage results of one model
PAPER_MEMORY_RATIO = 5.0  # CLIMP: 5x less memory than ViT at 16x the training pixels


# ---------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A number read from one (model, seed)'s stage results; None when it was not measured.
    read_error: the half-width of the estimate's own 95% confidence interval in one run (the
    Hutchinson trace; rates on a finite number of samples), used when there is no seed spread;
    systematic: read_error holds a systematic part, so the margin is never below it; per_model:
    read from the model's per-model stage results (ModelResults) instead of a seed's."""

    name: str
    label: str
    read: Callable[[StageResults], Optional[float]]
    higher_is_better: bool
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    deterministic: bool = False
    read_error: Optional[Callable[[StageResults], Optional[float]]] = None
    systematic: bool = False
    per_model: bool = False


def _get(tree: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(tree, Mapping) and key in tree:
            tree = tree[key]
        elif isinstance(tree, list) and isinstance(key, int) and -len(tree) <= key < len(tree):
            tree = tree[key]
        else:
            return None
    return tree


def _only(tree: Any) -> Any:
    """The single (first) value of a {data name: metrics} mapping."""
    return next(iter(tree.values())) if isinstance(tree, Mapping) and tree else None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _eval(task: str, key: str, data: Optional[str] = None) -> Callable[[StageResults], Optional[float]]:
    def read(run: StageResults) -> Optional[float]:
        per_data = _get(run, "eval", task)
        return _number(_get(per_data, data, key) if data else _get(_only(per_data), key))
    return read


def _zero_shot_mean(run: StageResults) -> Optional[float]:
    tasks = [_get(run, "eval", "zeroshot", f"embedded/{t}", "top1") for t in ("shape", "colour", "count", "position")]
    return sum(tasks) / len(tasks) if all(isinstance(t, (int, float)) for t in tasks) else None


def shifted_accuracy(curve: Mapping[str, Any]) -> float:
    """Accuracy averaged over a shift's levels, the identity level (the first) left out."""
    accuracies = list(curve["accuracy"])[1:] or list(curve["accuracy"])
    return sum(accuracies) / len(accuracies)


def _shift(name: Optional[str]) -> Callable[[StageResults], Optional[float]]:
    def read(run: StageResults) -> Optional[float]:
        curves = _only(_get(run, "eval", "shifts"))
        if not curves:
            return None
        if name is not None:
            return shifted_accuracy(curves[name]) if name in curves else None
        return sum(shifted_accuracy(c) for c in curves.values()) / len(curves)
    return read


def _resolution(scale: int, key: str) -> Callable[[StageResults], Optional[float]]:
    def read(run: StageResults) -> Optional[float]:
        sides = _get(_only(_get(run, "eval", "resolution")), "sides") or {}
        row = next((r for r in sides.values() if r.get("scale") == scale), None)
        return _number(row.get(key)) if row else None
    return read


def _training_memory(pixels: int, attention: str) -> Callable[[ModelResults], Optional[float]]:
    """Training activation bytes of the image tower at `pixels` x the training pixels."""
    def read(results: ModelResults) -> Optional[float]:
        sides = _get(results, MEMORY, "sides") or {}
        row = next((r for r in sides.values() if r.get("pixels_ratio") == pixels), None)
        return _number(_get(row, attention, "training_activation_bytes")) if row else None
    return read


def _hessian(*path: Any) -> Callable[[StageResults], Optional[float]]:
    """A Hessian figure; None (not measured) when its finite-difference products failed their
    consistency check (a non-smooth loss: they measured gradient jumps, not curvature)."""
    return lambda run: (None if _get(run, "hessian", "hvp", "consistent") is False
                        else _number(_get(run, "hessian", *path)))


def _trace_ci_half_width(run: StageResults) -> Optional[float]:
    high, trace = _hessian("trace", "ci_high")(run), _hessian("trace", "trace")(run)
    return None if high is None or trace is None else high - trace


def binomial_half_width(value: Optional[float], count: Optional[float]) -> Optional[float]:
    """95% normal-approximation half-width of a rate measured on `count` samples."""
    if value is None or not count:
        return None
    return 1.96 * math.sqrt(max(value * (1.0 - value), 0.0) / count)


def _rate_error(read: Callable[[StageResults], Optional[float]],
                count: Callable[[StageResults], Optional[float]]) -> Callable[[StageResults], Optional[float]]:
    return lambda run: binomial_half_width(read(run), count(run))


def _count(task: str, key: str, data: str) -> Callable[[StageResults], Optional[float]]:
    return lambda run: _number(_get(run, "eval", task, data, key))


def _zero_shot_count(run: StageResults) -> Optional[float]:
    counts = [_get(run, "eval", "zeroshot", f"embedded/{t}", "num_samples") for t in ZERO_SHOT_TASKS]
    return float(sum(counts)) if all(isinstance(c, int) for c in counts) else None


def _ood_count(run: StageResults) -> Optional[float]:
    """The smaller of the two sample sets: AUROC's variance is at most p(1-p)/min(n_in, n_ood)."""
    result = _only(_get(run, "eval", "ood")) or {}
    counts = [result.get("num_in_distribution"), result.get("num_ood")]
    return float(min(counts)) if all(isinstance(c, int) for c in counts) else None


def _worst_group_count(run: StageResults) -> Optional[float]:
    result = _only(_get(run, "eval", "spurious")) or {}
    groups = result.get("group_accuracy") or {}
    return result["num_samples"] / len(groups) if groups and "num_samples" in result else None


RATE = dict(abs_tol=0.01)  # accuracies, recalls, AUPR: 1 point
# sample counts behind each rate: single-seed checks are decided against binomial 95% intervals
IMAGES, CAPTIONS = _count("retrieval", "num_images", "embedded/short"), _count("retrieval", "num_captions", "embedded/short")
SHAPE_IMAGES = _count("zeroshot", "num_samples", "embedded/shape")


def _rate(name: str, label: str, read: Callable[[StageResults], Optional[float]],
          count: Callable[[StageResults], Optional[float]]) -> Metric:
    return Metric(name, label, read, True, read_error=_rate_error(read, count), **RATE)
SHIFT_NAMES = ("contrast", "high_pass", "low_pass", "uniform_noise", "phase_scrambling", "greyscale",
               "false_colour", "power_equalisation", "rotation")
ZERO_SHOT_TASKS = ("shape", "colour", "count", "position")
RESOLUTION_SCALES = (2, 4)


def _metrics() -> Dict[str, Metric]:
    ms = [
        _rate("retrieval_i2t_R@1", "retrieval image->text R@1", _eval("retrieval", "image_to_text_R@1", "embedded/short"), IMAGES),
        _rate("retrieval_t2i_R@1", "retrieval text->image R@1", _eval("retrieval", "text_to_image_R@1", "embedded/short"), CAPTIONS),
        _rate("ood_aupr", "OOD detection AUPR", _eval("ood", "aupr"), _ood_count),
        _rate("ood_auroc", "OOD detection AUROC", _eval("ood", "auroc"), _ood_count),
        _rate("shift_mean", "shifted accuracy (mean over shifts)", _shift(None), SHAPE_IMAGES),
        _rate("spurious_worst_group", "spurious split worst-group accuracy", _eval("spurious", "worst_group_accuracy"), _worst_group_count),
        _rate("spurious_average", "spurious split average accuracy", _eval("spurious", "average_accuracy"),
              lambda run: _number(_get(_only(_get(run, "eval", "spurious")), "num_samples"))),
        Metric("hubness_skew", "k-occurrence skewness (hubness)", _eval("hubness", "k_occurrence_skewness", "embedded/short"), False, abs_tol=0.05),
        _rate("dense_i2t_R@1", "dense captions image->text R@1", _eval("dense", "image_to_text_R@1", "embedded/dense"),
              _count("dense", "num_images", "embedded/dense")),
        _rate("dense_t2i_R@1", "dense captions text->image R@1", _eval("dense", "text_to_image_R@1", "embedded/dense"),
              _count("dense", "num_captions", "embedded/dense")),
        Metric("dense_truncated", "dense captions truncated by the tokenizer", _eval("dense", "captions_truncated", "embedded/dense"), False, deterministic=True),
        _rate("zeroshot_mean", "zero-shot top-1 (mean of 4 tasks)", _zero_shot_mean, _zero_shot_count),
        Metric("hessian_top_eig", "Hessian top eigenvalue", _hessian("eigen", "top", 0), True, rel_tol=0.05,
               read_error=_hessian("eigen", "residuals", 0)),  # Ritz residual bounds |lambda - theta|
        Metric("hessian_trace", "Hessian trace (Hutchinson)", _hessian("trace", "trace"), True, rel_tol=0.05,
               read_error=_trace_ci_half_width),
        Metric("hessian_negative_mass", "Hessian negative eigenvalue mass (fraction below -threshold)",
               _hessian("negative_mass", "fraction"), True, read_error=_hessian("negative_mass", "uncertainty"),
               systematic=True),
        Metric("final_loss", "final training loss", lambda run: _number(_get(run, "train", "final_loss")), False, abs_tol=0.01),
    ]
    ms += [_rate(f"zeroshot_{t}", f"zero-shot {t} top-1", _eval("zeroshot", "top1", f"embedded/{t}"),
                 _count("zeroshot", "num_samples", f"embedded/{t}")) for t in ZERO_SHOT_TASKS]
    ms += [_rate(f"shift_{s}", f"{s} accuracy (mean over levels)", _shift(s), SHAPE_IMAGES) for s in SHIFT_NAMES]
    for scale in RESOLUTION_SCALES:
        px = f"{scale * scale}x pixels"
        ms += [_rate(f"res{scale}_i2t_R@1", f"image->text R@1 at {px}", _resolution(scale, "image_to_text_R@1"), IMAGES),
               _rate(f"res{scale}_t2i_R@1", f"text->image R@1 at {px}", _resolution(scale, "text_to_image_R@1"), CAPTIONS),
               Metric(f"res{scale}_flops", f"image-tower FLOPs at {px}", _resolution(scale, "flops_per_image"), False,
                      rel_tol=0.01, deterministic=True),
               Metric(f"res{scale}_memory", f"image-tower peak activation bytes at {px}",
                      _resolution(scale, "peak_activation_bytes"), False, rel_tol=0.01, deterministic=True)]
    for pixels in (1, 16):
        for attention, how in (("math", "attention materialised"), ("fused", "fused attention")):
            ms.append(Metric(f"train_memory_{pixels}x_{attention}",
                             f"image-tower training activation bytes at {pixels}x pixels ({how})",
                             _training_memory(pixels, attention), False, rel_tol=0.01, deterministic=True,
                             per_model=True))
    return {m.name: m for m in ms}


METRICS: Dict[str, Metric] = _metrics()


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stats:
    """Mean and seed-to-seed std (ddof=1; None for fewer than 2 seeds) of one metric, and the
    per-run confidence half-widths of stochastic estimates (None when the metric has none)."""

    values: Tuple[float, ...]
    errors: Optional[Tuple[float, ...]] = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> Optional[float]:
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    def to_dict(self) -> Dict[str, Any]:
        return {"values": list(self.values), "mean": self.mean, "std": self.std, "n": self.n,
                "errors": None if self.errors is None else list(self.errors)}


def model_stats(results: Optional[ModelResults], metric: Metric) -> Optional[Stats]:
    """A per-model metric as one value; None if it was not measured."""
    value = metric.read(results or {})
    return None if value is None else Stats((value,))


def seed_stats(runs: Mapping[str, StageResults], metric: Metric) -> Optional[Stats]:
    """The metric over one model's seeds ({seed: stage results}); None if any seed lacks it."""
    values = [metric.read(run) for run in runs.values()]
    if not values or any(v is None for v in values):
        return None
    errors = [metric.read_error(run) for run in runs.values()] if metric.read_error else []
    return Stats(tuple(values), tuple(errors) if errors and None not in errors else None)


def format_mean_std(mean: float, std: Optional[float], digits: int = 3) -> str:
    """"mean ± std" (just the mean without a spread), in fixed or, for large values, general notation."""
    style = "g" if abs(mean) >= 1e4 else "f"
    text = f"{mean:.{digits}{style}}"
    return text if std is None else f"{text} ± {std:.{digits}{style}}"


def format_stats(stats: Optional[Stats]) -> str:
    return "-" if stats is None else format_mean_std(stats.mean, stats.std)


# ---------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    verdict: str
    advantage: float
    margin: Optional[float]
    note: str = ""
    ratio: Optional[float] = None


def decide(subject: Stats, baseline: Stats, metric: Metric) -> Decision:
    """The decision rule of the module docstring for one check."""
    sign = 1.0 if metric.higher_is_better else -1.0
    advantage = sign * (subject.mean - baseline.mean)
    tolerance = max(metric.abs_tol, metric.rel_tol * max(abs(subject.mean), abs(baseline.mean)))
    note = ""
    if metric.deterministic:
        spread = 0.0
    elif subject.std is not None and baseline.std is not None:
        spread = subject.std + baseline.std
    elif subject.errors is not None and baseline.errors is not None:
        spread = max(subject.errors) + max(baseline.errors)
        note = "1 seed: decided against the two 95% confidence intervals of the estimates"
    else:
        spread = 0.0
        note = "1 seed: no seed spread, decided against the tolerance only"
    if metric.systematic and subject.errors is not None and baseline.errors is not None:
        spread = max(spread, max(subject.errors) + max(baseline.errors))
    margin = max(spread, tolerance)
    if advantage > margin:
        verdict = HOLDS
    elif advantage < -margin:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Decision(verdict, advantage, margin, note)


def cost_ratio(subject: float, baseline: float, higher_is_better: bool) -> float:
    """How many times better the subject is: baseline / subject for costs, subject / baseline else."""
    num, den = (subject, baseline) if higher_is_better else (baseline, subject)
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den


def decide_ratio(subject: Stats, baseline: Stats, metric: Metric, min_ratio: float) -> Decision:
    """Holds when the subject is at least min_ratio times better than the baseline (see the module
    docstring), does not hold otherwise."""
    sign = 1.0 if metric.higher_is_better else -1.0
    ratio = cost_ratio(subject.mean, baseline.mean, metric.higher_is_better)
    verdict = HOLDS if ratio >= min_ratio else FAILS
    note = f"measured {ratio:.2f}x, the paper's claim {min_ratio:g}x"
    return Decision(verdict, sign * (subject.mean - baseline.mean), None, note, ratio)


def combine(verdicts: Sequence[str]) -> str:
    """All hold -> holds; any does not hold -> does not hold; nothing measured -> not measured."""
    measured = [v for v in verdicts if v != NOT_MEASURED]
    if not measured:
        return NOT_MEASURED
    if FAILS in measured:
        return FAILS
    if len(measured) == len(verdicts) and all(v == HOLDS for v in measured):
        return HOLDS
    return INCONCLUSIVE


# ---------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Check:
    """One comparison; min_ratio: the paper's factor the subject must reach (decide_ratio)."""

    metric: str
    subject: str
    baseline: str
    min_ratio: Optional[float] = None


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    statement: str
    checks: Tuple[Check, ...]
    details: Tuple[Check, ...] = ()
    caveat: str = ""

    @property
    def models(self) -> set:
        return {m for c in self.checks + self.details for m in (c.subject, c.baseline)}


# The papers' CLIMP in miniature (VMamba tower with average pooling of the normed last map), the
# subject of every claim; our variants of it are compared with the same baseline in extra rows.
CLIMP_MODEL, VIT_MODEL = "climp-tiny-paper", "clip-vit-tiny"
CLIMP_VARIANTS = {"climp-tiny": "pyramid pooling"}
MAMBA_IMAGE_MODELS = {"climp-tiny-paper": "VMamba", "climp-mamba1d-tiny": "1D Mamba"}
TOWER_CAVEAT = ("the Mamba models also have a Mamba text tower where the ViT baseline has a Transformer, "
                "so this compares whole models, not image towers alone")
VARIANT_CAVEAT = "our variant ({}), not the paper's model; reported beside the paper's, never in its place"


def _variant(claims: List[Claim], subject: str, variant: str) -> List[Claim]:
    """The claims again for a variant model: ids suffixed with the model, the variant named."""
    out = []
    for claim in claims:
        suffix = "" if claim.id.endswith(subject) else f"-{subject}"
        caveat = "; ".join(c for c in (VARIANT_CAVEAT.format(variant), claim.caveat) if c)
        out.append(Claim(claim.id + suffix, claim.paper, f"[variant: {variant}] {claim.statement}", claim.checks,
                         claim.details, caveat))
    return out


def _checks(metrics: Sequence[str], subject: str, baseline: str) -> Tuple[Check, ...]:
    return tuple(Check(m, subject, baseline) for m in metrics)


def climp_claims(subject: str = CLIMP_MODEL, baseline: str = VIT_MODEL) -> List[Claim]:
    res = [f"res{s}_{k}" for s in RESOLUTION_SCALES for k in ("i2t_R@1", "t2i_R@1", "flops")]
    memory = Check("train_memory_16x_math", subject, baseline, PAPER_MEMORY_RATIO)
    memory_details = (Check("train_memory_16x_fused", subject, baseline, PAPER_MEMORY_RATIO),
                      *_checks(["train_memory_1x_math", "train_memory_1x_fused"]
                               + [f"res{s}_memory" for s in RESOLUTION_SCALES], subject, baseline))
    return [
        Claim("climp-retrieval", "CLIMP", "better cross-modal retrieval than CLIP-ViT (R@1 both ways)",
              _checks(["retrieval_i2t_R@1", "retrieval_t2i_R@1"], subject, baseline)),
        Claim("climp-ood", "CLIMP", "better OOD robustness: OOD detection (ImageNet-O-style AUPR) and image shifts",
              _checks(["ood_aupr", "shift_mean"], subject, baseline), _checks(["ood_auroc"], subject, baseline)),
        Claim("climp-spurious", "CLIMP", "less reliance on spurious correlations (worst-group accuracy)",
              _checks(["spurious_worst_group"], subject, baseline), _checks(["spurious_average"], subject, baseline)),
        Claim("climp-hubness", "CLIMP", "lower hubness (k-occurrence skewness of text->image neighbours)",
              _checks(["hubness_skew"], subject, baseline)),
        Claim("climp-resolution", "CLIMP",
              "better retrieval at 4x and 16x the training pixels, with 5x less memory (training, at 16x "
              "pixels, vs ViT with materialised attention) and fewer FLOPs",
              _checks(res, subject, baseline) + (memory,), memory_details),
        Claim("climp-dense", "CLIMP", "better dense-caption retrieval beyond 77 tokens (full-length Mamba text "
              "vs truncated CLIP text)", _checks(["dense_i2t_R@1", "dense_t2i_R@1"], subject, baseline),
              _checks(["dense_truncated"], subject, baseline)),
    ]


def clip_mamba_claims(subject: str, baseline: str = VIT_MODEL) -> List[Claim]:
    kind = MAMBA_IMAGE_MODELS.get(subject, subject)
    shifts = [f"shift_{s}" for s in SHIFT_NAMES]
    return [
        Claim(f"clip-mamba-zeroshot-{subject}", "CLIP-Mamba",
              f"{kind} image tower beats ViT at zero-shot classification (mean of shape/colour/count/position)",
              _checks(["zeroshot_mean"], subject, baseline),
              _checks([f"zeroshot_{t}" for t in ZERO_SHOT_TASKS], subject, baseline), TOWER_CAVEAT),
        Claim(f"clip-mamba-shifts-{subject}", "CLIP-Mamba",
              f"{kind} image tower is more robust to image shifts (accuracy averaged over levels)",
              _checks(["shift_mean"], subject, baseline), _checks(shifts, subject, baseline), TOWER_CAVEAT),
        Claim(f"clip-mamba-hessian-{subject}", "CLIP-Mamba",
              f"{kind} image tower is sharper and more non-convex: larger top eigenvalue, larger trace, "
              "more negative eigenvalue mass",
              _checks(["hessian_top_eig", "hessian_trace", "hessian_negative_mass"], subject, baseline),
              caveat="image-tower parameters only; trace grows with the parameter count, which differs"),
    ]


def all_claims(models: Sequence[str]) -> List[Claim]:
    """Every claim whose subject and baseline are among `models`: the paper's models first, then
    the same claims for our variants (CLIMP_VARIANTS) as extra rows."""
    claims = climp_claims() + [c for s in MAMBA_IMAGE_MODELS for c in clip_mamba_claims(s)]
    for subject, variant in CLIMP_VARIANTS.items():
        claims += _variant(climp_claims(subject) + clip_mamba_claims(subject), subject, variant)
    return [c for c in claims if c.models <= set(models)]


def stats_of(model: str, metric: Metric, runs: Mapping[str, Mapping[str, StageResults]],
             per_model: Mapping[str, ModelResults]) -> Optional[Stats]:
    if metric.per_model:
        return model_stats(per_model.get(model), metric)
    return seed_stats(runs.get(model, {}), metric)


def evaluate_check(check: Check, runs: Mapping[str, Mapping[str, StageResults]],
                   per_model: Optional[Mapping[str, ModelResults]] = None) -> Dict[str, Any]:
    """One check against {model: {seed: stage results}} and {model: per-model stage results}, JSON-ready."""
    metric = METRICS[check.metric]
    subject = stats_of(check.subject, metric, runs, per_model or {})
    baseline = stats_of(check.baseline, metric, runs, per_model or {})
    out: Dict[str, Any] = {"metric": metric.name, "label": metric.label, "subject": check.subject,
                           "baseline": check.baseline, "higher_is_better": metric.higher_is_better,
                           "subject_stats": subject.to_dict() if subject else None,
                           "baseline_stats": baseline.to_dict() if baseline else None,
                           "subject_text": format_stats(subject), "baseline_text": format_stats(baseline)}
    if check.min_ratio is not None:
        out["target_ratio"] = check.min_ratio
    if subject is None or baseline is None:
        return {**out, "verdict": NOT_MEASURED, "advantage": None, "margin": None, "note": ""}
    if check.min_ratio is not None:
        decision = decide_ratio(subject, baseline, metric, check.min_ratio)
        out["ratio"] = decision.ratio
    else:
        decision = decide(subject, baseline, metric)
    return {**out, "verdict": decision.verdict, "advantage": decision.advantage, "margin": decision.margin,
            "note": decision.note}


def evaluate_claims(claims: Sequence[Claim], runs: Mapping[str, Mapping[str, StageResults]],
                    per_model: Optional[Mapping[str, ModelResults]] = None) -> List[Dict[str, Any]]:
    """Every claim with its checks, details and combined verdict."""
    out = []
    for claim in claims:
        checks = [evaluate_check(c, runs, per_model) for c in claim.checks]
        out.append({"id": claim.id, "paper": claim.paper, "statement": claim.statement, "caveat": claim.caveat,
                    "verdict": combine([c["verdict"] for c in checks]), "checks": checks,
                    "details": [evaluate_check(c, runs, per_model) for c in claim.details]})
    return out


def metric_summary(runs: Mapping[str, Mapping[str, StageResults]],
                   per_model: Optional[Mapping[str, ModelResults]] = None) -> Dict[str, Dict[str, Optional[Dict[str, Any]]]]:
    """{metric: {model: stats dict or None}} for every metric measured for at least one model."""
    out: Dict[str, Dict[str, Optional[Dict[str, Any]]]] = {}
    for name, metric in METRICS.items():
        row = {model: stats_of(model, metric, runs, per_model or {}) for model in runs}
        if any(s is not None for s in row.values()):
            out[name] = {model: s.to_dict() if s else None for model, s in row.items()}
    return out
