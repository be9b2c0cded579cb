"""`climp reproduce`: the claim decisions, the report writer, the presets and the resumable
orchestration (with fake stages), plus one real end-to-end smoke run (slow)."""
import dataclasses
import json
import math
import types

import pytest

from climp.eval import TASKS

from climp.reproduce import claims, pipeline, presets, report, stages
from climp.reproduce.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Metric, Stats, decide
from climp.reproduce.command import reproduce

MODELS = ["climp-tiny", "clip-vit-tiny", "climp-mamba1d-tiny"]
RATE = Metric("r", "a rate", lambda run: None, higher_is_better=True, abs_tol=0.01)
LOWER = Metric("l", "a cost", lambda run: None, higher_is_better=False, abs_tol=0.01)


# ---------------------------------------------------------------------------- decisions
def test_decide_holds_only_when_intervals_do_not_overlap():
    # subject 0.70 +- 0.02, baseline 0.60 +- 0.03: gap 0.10 > 0.05
    subject, baseline = Stats((0.68, 0.70, 0.72)), Stats((0.57, 0.60, 0.63))
    d = decide(subject, baseline, RATE)
    assert d.verdict == HOLDS
    assert d.advantage == pytest.approx(0.10)
    assert d.margin == pytest.approx(0.02 + 0.03)
    assert d.note == ""
    assert decide(baseline, subject, RATE).verdict == FAILS


def test_decide_inconclusive_within_seed_spread():
    subject, baseline = Stats((0.60, 0.70, 0.80)), Stats((0.60, 0.62, 0.64))  # gap 0.08 < 0.1 + 0.02
    assert decide(subject, baseline, RATE).verdict == INCONCLUSIVE
    assert decide(baseline, subject, RATE).verdict == INCONCLUSIVE


def test_decide_lower_is_better_flips_the_sign():
    cheap, costly = Stats((1.0, 1.1, 0.9)), Stats((2.0, 2.1, 1.9))
    assert decide(cheap, costly, LOWER).verdict == HOLDS
    assert decide(costly, cheap, LOWER).verdict == FAILS
    assert decide(cheap, costly, LOWER).advantage == pytest.approx(1.0)


def test_decide_single_seed_uses_tolerance_and_says_so():
    d = decide(Stats((0.55,)), Stats((0.50,)), RATE)
    assert (d.verdict, d.margin) == (HOLDS, 0.01)
    assert "1 seed" in d.note
    assert decide(Stats((0.505,)), Stats((0.50,)), RATE).verdict == INCONCLUSIVE


def test_decide_single_seed_stochastic_estimate_uses_its_confidence_intervals():
    trace = claims.METRICS["hessian_trace"]
    run = lambda value, half: {"hessian": {"trace": {"trace": value, "ci_high": value + half}}}
    subject = claims.seed_stats({"0": run(150.0, 30.0)}, trace)
    assert subject.errors == (30.0,)
    d = decide(subject, claims.seed_stats({"0": run(100.0, 30.0)}, trace), trace)
    assert (d.verdict, d.margin) == (INCONCLUSIVE, 60.0) and "confidence intervals" in d.note
    assert decide(subject, claims.seed_stats({"0": run(100.0, 10.0)}, trace), trace).verdict == HOLDS


def test_negative_mass_is_decided_against_its_uncertainty_even_across_seeds():
    """The quadrature error is systematic (seeds do not average it out): a gap smaller than the
    two uncertainties is inconclusive however small the seed spread."""
    metric = claims.METRICS["hessian_negative_mass"]
    runs = lambda values, half: {str(i): {"hessian": {"negative_mass": {"fraction": v, "uncertainty": half}}}
                                 for i, v in enumerate(values)}
    subject, baseline = (0.30, 0.31, 0.29), (0.10, 0.11, 0.09)
    wide = decide(claims.seed_stats(runs(subject, 0.15), metric), claims.seed_stats(runs(baseline, 0.15), metric),
                  metric)
    assert wide.verdict == INCONCLUSIVE and wide.margin == pytest.approx(0.3)
    narrow = decide(claims.seed_stats(runs(subject, 0.05), metric), claims.seed_stats(runs(baseline, 0.05), metric),
                    metric)
    assert narrow.verdict == HOLDS and narrow.margin == pytest.approx(0.1)
    reverse = decide(claims.seed_stats(runs(baseline, 0.05), metric), claims.seed_stats(runs(subject, 0.05), metric),
                     metric)
    assert reverse.verdict == FAILS


def test_hessian_figures_from_inconsistent_finite_differences_are_not_measured():
    run = {"hessian": {"hvp": {"consistent": False}, "eigen": {"top": [5.0]},
                       "negative_mass": {"fraction": 0.2, "uncertainty": 0.01}}}
    for name in ("hessian_top_eig", "hessian_negative_mass"):
        assert claims.seed_stats({"0": run}, claims.METRICS[name]) is None
    run["hessian"]["hvp"]["consistent"] = True
    assert claims.seed_stats({"0": run}, claims.METRICS["hessian_top_eig"]).mean == 5.0


def test_single_seed_rates_use_binomial_intervals():
    assert claims.binomial_half_width(0.5, 100) == pytest.approx(1.96 * 0.05)
    metric = claims.METRICS["retrieval_i2t_R@1"]
    run = lambda r1, n: {"eval": {"retrieval": {"embedded/short": {"image_to_text_R@1": r1, "num_images": n}}}}
    # 0.30 vs 0.20 on 48 images each: half-widths 0.130 + 0.113 > 0.10 gap -> inconclusive
    small = decide(claims.seed_stats({"0": run(0.3, 48)}, metric), claims.seed_stats({"0": run(0.2, 48)}, metric), metric)
    assert small.verdict == INCONCLUSIVE and small.margin == pytest.approx(
        1.96 * (math.sqrt(0.21 / 48) + math.sqrt(0.16 / 48)))
    big = decide(claims.seed_stats({"0": run(0.3, 2000)}, metric), claims.seed_stats({"0": run(0.2, 2000)}, metric), metric)
    assert big.verdict == HOLDS


def test_decide_relative_tolerance_and_deterministic_metrics():
    flops = Metric("f", "flops", lambda run: None, higher_is_better=False, rel_tol=0.01, deterministic=True)
    assert decide(Stats((100.0,)), Stats((100.5,)), flops).verdict == INCONCLUSIVE  # 0.5% < 1%
    d = decide(Stats((100.0,)), Stats((120.0,)), flops)
    assert d.verdict == HOLDS and d.note == "" and d.margin == pytest.approx(1.2)


def test_stats_std_matches_sample_std():
    values = (0.1, 0.4, 0.25, 0.3)
    mean = sum(values) / 4
    reference = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert Stats(values).std == pytest.approx(reference)
    assert Stats((0.3,)).std is None


def test_combine():
    assert claims.combine([HOLDS, HOLDS]) == HOLDS
    assert claims.combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert claims.combine([HOLDS, NOT_MEASURED]) == INCONCLUSIVE
    assert claims.combine([NOT_MEASURED]) == NOT_MEASURED


# ---------------------------------------------------------------------------- fake results
def fake_eval(quality: float, seed: int):
    """Eval results shaped like climp.eval.evaluate's, every rate derived from `quality`."""
    q = quality + 0.01 * seed
    curve = lambda drop: {"levels": [0.0, 1.0, 2.0], "accuracy": [q, q - drop, q - 2 * drop], "level_label": "x"}
    side = lambda scale: {"scale": scale, "pixels_ratio": scale ** 2, "zero_shot_top1": q / scale,
                          "text_to_image_R@1": q / scale, "image_to_text_R@1": q / scale,
                          "flops_per_image": 1e6 * scale ** 2 / quality, "peak_activation_bytes": 1e5 * scale ** 2}
    recall = {"image_to_text_R@1": q, "text_to_image_R@1": q - 0.05}
    return {
        "zeroshot": {f"embedded/{t}": {"top1": q} for t in ("shape", "colour", "count", "position")},
        "retrieval": {"embedded/short": recall},
        "shifts": {"embedded/shape": {"contrast": curve(0.1), "low_pass": curve(0.2)}},
        "spurious": {"embedded/spurious_shape": {"worst_group_accuracy": q - 0.3, "average_accuracy": q}},
        "ood": {"shape vs phase_scrambled": {"aupr": q, "auroc": q}},
        "resolution": {"embedded": {"base_side": 64, "sides": {str(64 * s): side(s) for s in (1, 2, 4)}}},
        "dense": {"embedded/dense": {**recall, "captions_truncated": 0 if quality > 0.5 else 7}},
        "hubness": {"embedded/short": {"k_occurrence_skewness": 2.0 - q}},
    }


def fake_hessian(scale: float):
    grid = [-1.0 + 0.1 * i for i in range(31)]
    return {"eigen": {"top": [10.0 * scale]}, "trace": {"trace": 100.0 * scale},
            "density": {"grid": grid, "density": [math.exp(-g * g) for g in grid]},
            "negative_mass": {"fraction": 0.1 * scale, "uncertainty": 0.02, "bounds": [0.1 * scale - 0.02,
                              0.1 * scale + 0.02], "threshold_rel": 1e-2, "threshold": 0.1 * scale}}


def fake_bench(model):
    entry = lambda size: {"params": 1000, "flops": size ** 2, "peak_activation_bytes": size * 10,
                          "items_per_second": 100.0 / size, "seconds_per_batch": size / 100.0}
    return {"image": {str(s): entry(s) for s in (64, 128)}, "text": {str(n): entry(n) for n in (16, 32)}}


def fake_memory(math16: float, fused16: float = 1e6, side: int = 64):
    """Training-memory stage results: 1 MB at the training side, the given bytes at 16x pixels."""
    row = lambda scale, math, fused: {"scale": scale, "pixels_ratio": scale ** 2,  # noqa: E731
                                      "math": {"training_activation_bytes": math, "training_attention_kernels": []},
                                      "fused": {"training_activation_bytes": fused, "training_attention_kernels": []}}
    return {"train_side": side, "batch": 1, "sides": {str(side): row(1, 1e6, 1e6), str(4 * side): row(4, math16, fused16)}}


# training memory at 16x pixels: ViT with materialised attention keeps 3x what the Mamba models keep
MEMORY16 = {"climp-tiny-paper": 1e7, "climp-tiny": 1e7, "clip-vit-tiny": 3e7, "climp-mamba1d-tiny": 1e7}
QUALITY = {"climp-tiny-paper": 0.8, "climp-tiny": 0.7, "clip-vit-tiny": 0.5, "climp-mamba1d-tiny": 0.6}
CLAIM_MODELS = ["climp-tiny-paper", *MODELS]


class FakeStages:
    """Stage functions that record their calls; `fail_at` raises (an interruption) at that stage."""

    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at

    def make(self, stage):
        def fn(job):
            key = (job.model, job.seed, stage)
            if key == self.fail_at:
                raise KeyboardInterrupt("interrupted")
            self.calls.append(key)
            if stage == stages.TRAIN:
                return {"final_loss": 1.0, "checkpoint": f"ckpt-{job.model}-{job.seed}", "run_dir": str(job.out_dir)}
            assert job.upstream[stages.TRAIN]["checkpoint"] == f"ckpt-{job.model}-{job.seed}" if job.seed is not None else True
            if stage == stages.EVAL:
                return fake_eval(QUALITY[job.model], job.seed)
            if stage == stages.HESSIAN:
                return fake_hessian(2.0 if "climp" in job.model else 1.0)
            if stage == stages.MEMORY:
                return fake_memory(MEMORY16[job.model])
            return fake_bench(job.model)
        return fn

    def functions(self):
        return {s: self.make(s) for s in (*stages.SEED_STAGES, *stages.MODEL_STAGES)}


def small_preset(**changes):
    return dataclasses.replace(presets.get_preset("smoke"), **{"seeds": (0, 1, 2), **changes})


def test_ratio_checks_hold_only_at_the_papers_factor():
    """A cost claimed N times lower holds only if the measured baseline / subject ratio reaches N;
    a smaller advantage, or none, does not hold, with the ratio reported."""
    memory = claims.METRICS["train_memory_16x_math"]
    one = lambda v: Stats((v,))  # noqa: E731
    for subject, baseline, verdict, ratio in ((10.0, 50.0, HOLDS, 5.0), (10.0, 80.0, HOLDS, 8.0),
                                              (10.0, 49.0, FAILS, 4.9), (10.0, 5.0, FAILS, 0.5)):
        d = claims.decide_ratio(one(subject), one(baseline), memory, 5.0)
        assert (d.verdict, d.ratio) == (verdict, pytest.approx(ratio))
        assert f"measured {ratio:.2f}x" in d.note and "5x" in d.note
    assert claims.decide_ratio(one(0.0), one(3.0), memory, 5.0).verdict == HOLDS  # nothing kept at all


def test_memory_part_of_the_resolution_claim_is_decided_on_training_memory():
    """Everything else equal, the resolution claim follows the training-memory ratio at 16x pixels
    with materialised attention: 6x holds, 4x does not; fused attention and the inference peaks
    are reported as details."""
    runs = {m: {str(s): {"eval": fake_eval(QUALITY[m], s)} for s in (0, 1, 2)} for m in ("climp-tiny-paper", "clip-vit-tiny")}
    verdicts = {}
    for vit_math in (6e7, 4e7):
        per_model = {"climp-tiny-paper": {stages.MEMORY: fake_memory(1e7, fused16=1e7)},
                     "clip-vit-tiny": {stages.MEMORY: fake_memory(vit_math, fused16=0.5e7)}}
        (res,) = [c for c in claims.evaluate_claims(claims.all_claims(["climp-tiny-paper", "clip-vit-tiny"]), runs,
                                                    per_model) if c["id"] == "climp-resolution"]
        memory = next(c for c in res["checks"] if c["metric"] == "train_memory_16x_math")
        fused = next(c for c in res["details"] if c["metric"] == "train_memory_16x_fused")
        assert (memory["ratio"], memory["target_ratio"], fused["ratio"]) == (vit_math / 1e7, 5.0, 0.5)
        assert fused["verdict"] == FAILS
        verdicts[vit_math] = res["verdict"]
    assert verdicts == {6e7: HOLDS, 4e7: FAILS}
    # without the memory stage's results the memory check is not measured: the claim is open
    (res,) = [c for c in claims.evaluate_claims(claims.climp_claims(), runs) if c["id"] == "climp-resolution"]
    assert res["verdict"] == INCONCLUSIVE


# ---------------------------------------------------------------------------- claims from results
def test_claims_from_fake_runs():
    runs = {m: {str(s): {"eval": fake_eval(QUALITY[m], s), "hessian": fake_hessian(2.0 if "climp" in m else 1.0)}
                for s in (0, 1, 2)} for m in CLAIM_MODELS}
    per_model = {m: {stages.MEMORY: fake_memory(MEMORY16[m])} for m in CLAIM_MODELS}
    results = {c["id"]: c for c in claims.evaluate_claims(claims.all_claims(CLAIM_MODELS), runs, per_model)}
    assert results["climp-retrieval"]["checks"][0]["subject"] == "climp-tiny-paper"
    assert results["climp-retrieval"]["verdict"] == HOLDS  # 0.81 vs 0.51, std 0.01 each
    assert results["climp-hubness"]["verdict"] == HOLDS  # skewness 1.19 < 1.49
    # FLOPs are lower for climp (1e6/0.8 < 1e6/0.5) and retrieval better, but ViT keeps only 3x
    # the training memory at 16x pixels where the paper claims 5x: the claim does not hold
    res = results["climp-resolution"]
    checks = {c["metric"]: c for c in res["checks"]}
    assert checks["res4_flops"]["verdict"] == HOLDS and checks["res4_t2i_R@1"]["verdict"] == HOLDS
    assert checks["train_memory_16x_math"]["verdict"] == FAILS and checks["train_memory_16x_math"]["ratio"] == 3.0
    assert res["verdict"] == FAILS
    details = {c["metric"]: c["verdict"] for c in res["details"]}
    assert details["res4_memory"] == INCONCLUSIVE  # inference peaks equal: reported, not decisive
    # shift mean leaves the identity level out: contrast (q-0.1 + q-0.2)/2, low_pass (q-0.2 + q-0.4)/2
    shifted = next(c for c in results["climp-ood"]["checks"] if c["metric"] == "shift_mean")
    assert shifted["subject_stats"]["mean"] == pytest.approx(0.81 - 0.225)
    assert results["clip-mamba-hessian-climp-mamba1d-tiny"]["verdict"] == HOLDS
    zs = results["clip-mamba-zeroshot-climp-mamba1d-tiny"]
    assert zs["verdict"] == HOLDS and len(zs["details"]) == 4
    # shifts that were not evaluated are reported as not measured, not as failures
    details = {c["metric"]: c["verdict"] for c in results["clip-mamba-shifts-climp-tiny-paper"]["details"]}
    assert details["shift_contrast"] == HOLDS and details["shift_rotation"] == NOT_MEASURED
    # the pyramid variant: the same claims in extra rows, named as a variant, never replacing the paper's
    variant = results["climp-retrieval-climp-tiny"]
    assert variant["checks"][0]["subject"] == "climp-tiny" and variant["verdict"] == HOLDS  # 0.71 vs 0.51
    assert variant["statement"].startswith("[variant: pyramid pooling]") and "not the paper's" in variant["caveat"]
    assert "clip-mamba-shifts-climp-tiny" in results


def test_claims_need_their_models():
    ids = {c.id for c in claims.all_claims(["climp-mamba1d-tiny", "clip-vit-tiny"])}
    assert ids == {"clip-mamba-zeroshot-climp-mamba1d-tiny", "clip-mamba-shifts-climp-mamba1d-tiny",
                   "clip-mamba-hessian-climp-mamba1d-tiny"}
    assert claims.all_claims(["climp-tiny"]) == []
    variant_only = claims.all_claims(["climp-tiny", "clip-vit-tiny"])
    assert variant_only and all(c.id.endswith("-climp-tiny") and "[variant" in c.statement for c in variant_only)
    assert presets.DEFAULT_MODELS[0] == claims.CLIMP_MODEL == "climp-tiny-paper"


# ---------------------------------------------------------------------------- presets
def test_presets_are_valid_and_sized_as_promised():
    for preset in presets.PRESETS.values():
        preset.validate()
    quick, full = presets.get_preset("quick"), presets.get_preset("full")
    assert len(quick.seeds) == 1 and len(full.seeds) >= 3
    assert quick.budget_minutes <= 15 and full.budget_minutes <= 120
    assert full.train["steps"] > quick.train["steps"] and full.eval["num_samples"] > quick.eval["num_samples"]
    for preset in (quick, full):
        assert set(preset.eval_tasks) == set(TASKS)
        assert 2 in preset.eval["resolution_scales"] and 4 in preset.eval["resolution_scales"]
        assert set(presets.CLIP_MAMBA_SHIFTS) <= set(preset.eval["shifts"])
        assert preset.eval["num_samples"] >= preset.eval["hubness_k"]


def test_preset_validation_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown training config keys"):
        small_preset(train={"stepz": 3}).validate()
    with pytest.raises(ValueError, match="set per run"):
        small_preset(train={"seed": 3}).validate()
    with pytest.raises(ValueError, match="eval tasks"):
        small_preset(eval_tasks=("zeroshot", "nope")).validate()
    with pytest.raises(ValueError, match="Hessian"):
        small_preset(hessian={"top_k": 0}).validate()
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_preset("huge")


# ---------------------------------------------------------------------------- orchestration
def test_pipeline_runs_every_stage_once_then_reuses(tmp_path):
    fakes = FakeStages()
    preset = small_preset()
    first = pipeline.run_pipeline(preset, MODELS, tmp_path, stage_functions=fakes.functions(), progress=False)
    assert len(fakes.calls) == 3 * 3 * 3 + 3 * 2
    assert len(set(fakes.calls)) == len(fakes.calls)
    assert fakes.calls[:3] == [("climp-tiny", 0, "train"), ("climp-tiny", 0, "eval"), ("climp-tiny", 0, "hessian")]
    again = FakeStages()
    second = pipeline.run_pipeline(preset, MODELS, tmp_path, stage_functions=again.functions(), progress=False)
    assert again.calls == []
    assert all(s["reused"] for s in second["stages"])
    assert second["runs"] == first["runs"] and second["bench"] == first["bench"]


def test_interrupted_stage_reruns_and_finished_ones_are_skipped(tmp_path):
    preset = small_preset(seeds=(0,))
    broken = FakeStages(fail_at=("clip-vit-tiny", 0, "eval"))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(preset, MODELS, tmp_path, stage_functions=broken.functions(), progress=False)
    store = pipeline.StageStore(tmp_path)
    assert store.path("clip-vit-tiny", 0, "train").is_file()
    assert not store.path("clip-vit-tiny", 0, "eval").exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    resumed = FakeStages()
    pipeline.run_pipeline(preset, MODELS, tmp_path, stage_functions=resumed.functions(), progress=False)
    assert resumed.calls[0] == ("clip-vit-tiny", 0, "eval")  # its train record is reused as upstream
    assert ("climp-tiny", 0, "train") not in resumed.calls and ("clip-vit-tiny", 0, "train") not in resumed.calls
    assert len(resumed.calls) == 2 + 3 + 6  # vit eval + hessian, mamba1d's three, three benches and memories
    # a stage file deleted by hand is redone alone
    store.path("climp-tiny", 0, "hessian").unlink()
    redo = FakeStages()
    pipeline.run_pipeline(preset, MODELS, tmp_path, stage_functions=redo.functions(), progress=False)
    assert redo.calls == [("climp-tiny", 0, "hessian")]


def test_changed_settings_are_not_mixed_with_old_results(tmp_path):
    pipeline.run_pipeline(small_preset(seeds=(0,)), ["clip-vit-tiny"], tmp_path,
                          stage_functions=FakeStages().functions(), progress=False)
    longer = small_preset(seeds=(0,), train={**small_preset().train, "steps": 5})
    with pytest.raises(ValueError, match="other train settings"):
        pipeline.run_pipeline(longer, ["clip-vit-tiny"], tmp_path, stage_functions=FakeStages().functions(),
                              progress=False)


def test_train_stage_resumes_from_latest_and_trains_on_the_spurious_split(tmp_path, monkeypatch):
    import climp.train.trainer as trainer
    from climp.train.checkpoint import LATEST_FILE

    seen = {}

    def fake_train(config, components=None):
        seen.update(config=config, components=components)
        return {"checkpoint": "x", "final_loss": 1.0}

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(trainer, "build_components", lambda config: trainer.TrainComponents(
        model=None, tokenizer=None, train_dataset=types.SimpleNamespace(transform="T"), collate_fn=None))
    job = stages.Job("clip-vit-tiny", 3, presets.get_preset("smoke"), tmp_path)
    stages.train_stage(job)
    assert seen["config"].resume is None and seen["config"].seed == 3
    assert seen["config"].run_dir == tmp_path / "train" / "clip-vit-tiny-seed3"
    data = seen["components"].train_dataset
    assert data.rules.aligned_prob == pytest.approx(0.95) and data.transform == "T" and data.seed == 3
    pointer = seen["config"].run_dir / "checkpoints" / LATEST_FILE
    pointer.parent.mkdir(parents=True)
    pointer.write_text("step-2\n")
    stages.train_stage(job)
    assert seen["config"].resume == "latest"


def test_no_progress_silences_training_bar_without_changing_the_stage(monkeypatch, tmp_path):
    import climp.train.trainer as trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, components=None: seen.update(config=config) or {})
    preset = presets.get_preset("quick")
    stages.train_stage(stages.Job("clip-vit-tiny", 0, preset, tmp_path, progress=False))
    assert seen["config"].progress is False
    stages.train_stage(stages.Job("clip-vit-tiny", 0, preset, tmp_path))
    assert seen["config"].progress is True
    assert stages.stage_settings(stages.TRAIN, preset)["train"]["progress"] is True  # cache key unchanged


# ---------------------------------------------------------------------------- report
def test_report_has_tables_plots_and_json(tmp_path):
    results = reproduce("smoke", CLAIM_MODELS, tmp_path, seeds=[0, 1, 2], progress=False,
                        stage_functions=FakeStages().functions())
    text = (tmp_path / "REPORT.md").read_text()
    assert "## Verdicts" in text and "| paper | claim |" in text
    assert "better cross-modal retrieval than CLIP-ViT" in text and "✅ holds" in text
    assert "0.810 ± 0.010" in text  # climp-tiny-paper retrieval i->t over seeds: 0.80, 0.81, 0.82
    assert "[variant: pyramid pooling]" in text
    assert "Tower parameters: climp-tiny-paper 0.00M (image 0.00M, text 0.00M)" in text
    assert "## Metrics per model" in text and "## Efficiency benchmark" in text
    assert "## Training activation memory" in text and "| clip-vit-tiny | 256 | 16x | 28.61 |" in text
    assert "1e+07 vs 3e+07 (measured 3.00x, the paper's 5x)" in text and "| 3.00x | >= 5x | does not hold |" in text
    for png in ("metrics.png", "shifts.png", "resolution.png", "hessian_density.png", "efficiency.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
        assert f"]({png})" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["preset"] == "smoke" and saved["seeds"] == [0, 1, 2]
    assert {c["id"] for c in saved["claims"]} == {c.id for c in claims.all_claims(CLAIM_MODELS)}
    assert saved["metrics"]["retrieval_i2t_R@1"]["climp-tiny-paper"]["values"] == pytest.approx([0.8, 0.81, 0.82])
    assert saved["metrics"]["train_memory_16x_math"]["clip-vit-tiny"]["values"] == [3e7]
    assert saved["training_memory"]["clip-vit-tiny"]["sides"]["256"]["math"]["training_activation_bytes"] == 3e7
    summary = report.summary_text(results)
    assert summary.count("\n") == len(results["claims"]) and "holds" in summary


def test_reproduce_rejects_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        reproduce("smoke", ["climp-tiny", "nope"], tmp_path, progress=False, stage_functions=FakeStages().functions())


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path):
    """The real stages on two models for a couple of steps: the whole pipeline runs and resumes."""
    models = ["clip-vit-tiny", "climp-tiny"]
    results = reproduce("smoke", models, tmp_path, progress=False)
    assert (tmp_path / "REPORT.md").is_file() and (tmp_path / "hessian_density.png").is_file()
    assert {c["verdict"] for c in results["claims"]} <= {HOLDS, FAILS, INCONCLUSIVE}
    assert results["metrics"]["retrieval_i2t_R@1"]["climp-tiny"]["n"] == 1
    again = reproduce("smoke", models, tmp_path, progress=False)
    assert all(s["reused"] for s in again["timing"]["stages"])
    assert again["claims"] == results["claims"]


def test_reproduce_settings_from_flags_and_recipe(tmp_path):
    import argparse

    from climp.reproduce import command
    from climp.settings import from_args

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: smoke\nseeds: 3,4\nmodels: [climp-tiny]\n")
    s = from_args(command.ReproduceSettings, parser.parse_args(["--config", str(recipe), "--seeds", "5",
                                                                "--no-progress"]))
    assert (s.preset, s.models, s.seeds, s.progress, s.out) == ("smoke", ["climp-tiny"], [5], False, None)
    assert from_args(command.ReproduceSettings, parser.parse_args(["--config", str(recipe)])).seeds == [3, 4]
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "a,b"])
