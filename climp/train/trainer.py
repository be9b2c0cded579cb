"""The training loop: `train(config) -> results` for `climp train` and `climp reproduce`.

Gradient accumulation (`accum_freq` > 1) accumulates *features*, as open_clip does, so the
contrastive loss sees the whole accumulated batch as negatives: a no-grad pass caches every
micro-batch's features, then each micro-batch is re-encoded with gradients, spliced into the
cached features and back-propagated through the full loss. The sum of these backward passes
is the gradient of the large-batch loss (exactly, for models without dropout).
`logit_scale`/`logit_bias` take their gradient from the last micro-batch only, so they are
not counted `accum_freq` times.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, NoReturn, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from climp.models.weights import load_state_dict_strict

from . import checkpoint as ckpt
from .config import TrainConfig
from .data import BatchStream, open_train_source
from .distributed import (DistributedContext, barrier, gather_objects, init_distributed,
                          mean_across_ranks, min_across_ranks, shutdown_distributed,
                          sum_across_ranks)
from .ema import ModelEma
from .loss import MAX_LOGIT_SCALE, create_loss, logit_init_overrides
from .metrics_log import MetricsLogger, count_records, plot_loss_curve, read_metrics, truncate_metrics
from .optim import create_optimizer, create_scheduler
from .precision import autocast, grad_scaler
from .quick_eval import quick_evaluate
from .resume_checks import (apply_hyperparameters, changed_settings, check_before_building,
                            check_resume_settings, convert_batch_position, describe, hyperparameters)
from .stopping import StopRequest, TrainingStopped

FINAL_LOSS_STEPS = 20  # the reported final loss is the mean over this many last steps


@dataclass
class TrainComponents:
    """Everything the loop trains on; built from the config by `build_components` or given."""

    model: nn.Module
    tokenizer: Callable[[List[str]], torch.Tensor]
    train_dataset: Any
    collate_fn: Callable[[Sequence[Any]], Any]
    zero_shot_tasks: Mapping[str, Any] = field(default_factory=dict)
    retrieval_set: Any = None  # a dataset, or {name: dataset} (metrics prefixed "<name>/")
    model_cfg: Dict[str, Any] = field(default_factory=dict)


def nominal_size_override(config: TrainConfig) -> dict:
    """The model's nominal image size set to the training resolution, so that a checkpoint records
    the side it was trained at (evaluation's 1x, `pyramid_grid`'s pooling grid). A ViT started from
    an image checkpoint keeps the checkpoint's position grid and resizes it at run time instead."""
    from climp.models.factory import get_model_config

    if config.image_pretrained and get_model_config(config.model)["vision_cfg"].get("type") == "vit":
        return {}
    return {"vision_cfg": {"image_size": config.resolution}}


def build_components(config: TrainConfig) -> TrainComponents:
    """Model, tokenizer, training data and held-out eval data named by `config` (lazy imports)."""
    import climp
    from climp.data import synthetic
    from climp.data.collate import ImageTextCollate, TruncatingTokenizer
    from climp.models.clip import check_image_size
    from climp.models.factory import get_model_config
    from climp.transforms import transform_from_config

    for side in config.sides or (config.resolution,):
        check_image_size(get_model_config(config.model)["vision_cfg"], side, config.model)
    model, _, preprocess_val = climp.create_model_and_transforms(
        config.model, image_size=config.resolution, image_pretrained=config.image_pretrained,
        text_pretrained=config.text_pretrained, **nominal_size_override(config),
        **logit_init_overrides(config.loss))
    train_side = max(config.sides) if config.sides else config.resolution  # batches resized down from it
    preprocess_train = transform_from_config(train_side, True, model.config.get("preprocess_cfg"))
    if config.lock_image >= 0:
        model.lock_image_tower(config.lock_image)
    if config.lock_text >= 0:
        model.lock_text_tower(config.lock_text)
    tokenizer = TruncatingTokenizer(climp.get_tokenizer(model), config.max_caption_tokens or None)
    if config.data == "synthetic":
        train_dataset = synthetic.SyntheticScenes(
            split="train", num_samples=config.train_samples, resolution=train_side,
            seed=config.seed, caption_style=config.caption_style, transform=preprocess_train,
            partial_captions=config.partial_captions, hard_negatives=config.hard_negatives,
            object_scale=config.object_scale,
            hard_negative_attributes=tuple(a.strip() for a in config.hard_negative_attributes.split(",")))
    else:
        train_dataset = open_train_source(config.train_data, preprocess_train, config.csv_img_key,
                                          config.csv_caption_key, config.csv_separator, config.seed,
                                          allow_pipe=config.allow_pipe)
    tasks, retrieval = eval_sets(config, preprocess_val)
    return TrainComponents(model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                           collate_fn=ImageTextCollate(tokenizer.tokenizer, config.max_caption_tokens or None,
                                                      config.sides),
                           zero_shot_tasks=tasks, retrieval_set=retrieval, model_cfg=model.config)


def eval_sets(config: TrainConfig, transform: Callable) -> tuple:
    """(zero-shot tasks, {name: retrieval set}) of the evaluation: the --val-data's (zero-shot
    task "val" or retrieval set "val") and the embedded benchmark's when `config.embedded_eval`."""
    from climp.data import synthetic

    from .val_data import open_val_source

    tasks: Dict[str, Any] = {}
    retrieval: Dict[str, Any] = {}
    if config.embedded_eval:
        tasks.update(synthetic.zero_shot_tasks(split="test", num_samples=config.eval_samples,
                                               resolution=config.resolution, seed=config.seed,
                                               transform=transform, object_scale=config.object_scale))
        retrieval[""] = synthetic.retrieval_set(split="test", num_samples=config.retrieval_samples,
                                                resolution=config.resolution, seed=config.seed,
                                                transform=transform, object_scale=config.object_scale)
    if config.val_data:
        task, pairs = open_val_source(config.val_data, transform, config.csv_img_key,
                                      config.csv_caption_key, config.csv_separator, config.allow_pipe)
        if task is not None:
            tasks["val"] = task
        if pairs is not None:
            retrieval["val"] = pairs
    return tasks, retrieval


def smoothed_loss(recent: Sequence[float], last: float) -> Dict[str, Any]:
    """The final loss as the mean over the last steps (one batch's loss is noisy), with the
    window and the last step's own loss."""
    values = list(recent) or [last]
    return {"final_loss": sum(values) / len(values), "final_loss_steps": len(values),
            "last_step_loss": last}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _features(out: Mapping[str, Any]) -> tuple:
    return out["image_features"], out["text_features"]


class Trainer:
    """One training run on this process's rank; `run()` returns the final results dict."""

    def base_lr(self) -> float:
        """The scheduled learning rate before per-tower multipliers."""
        group = self.optimizer.param_groups[0]
        return self.config.lr * group["lr"] / group["initial_lr"] if group["initial_lr"] else 0.0

    def __init__(self, config: TrainConfig, components: Optional[TrainComponents] = None,
                 context: Optional[DistributedContext] = None):
        self.config = config
        self.context = context or init_distributed(config.device)
        self.device = self.context.device
        _seed_everything(config.seed)  # identical initial weights on every rank
        self.components = components or build_components(config)
        _seed_everything(config.seed + self.context.rank)  # independent dropout per rank
        self.model = self.components.model.to(self.device)
        self.autocast = lambda: autocast(config.precision, self.device)
        self.scaler = grad_scaler(config.precision, self.device)
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.ddp_model: nn.Module = self.model
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        # What the training steps call; evaluation, EMA and checkpoints use self.model itself.
        self.train_model: nn.Module = torch.compile(self.ddp_model) if config.compile else self.ddp_model
        self.loss_fn = create_loss(config.loss, local_loss=config.local_loss,
                                   gather_with_grad=config.gather_with_grad,
                                   rank=self.context.rank, world_size=self.context.world_size)
        self.optimizer = create_optimizer(
            self.model, config.lr, config.weight_decay, (config.beta1, config.beta2), config.eps,
            lr_multipliers={"visual.": config.lr_image_mult, "text.": config.lr_text_mult})
        self.scheduler = create_scheduler(self.optimizer, config.warmup, config.steps)
        self.ema = ModelEma(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        self.samples_seen = 0
        # the last steps' losses behind the reported final loss; saved, so a resumed run reports
        # the same final loss as an uninterrupted one
        self.recent_losses: Deque[float] = deque(maxlen=FINAL_LOSS_STEPS)
        self.last_saved_step: Optional[int] = None
        self.resume_history: List[Dict[str, Any]] = []
        self.stream = BatchStream(self.components.train_dataset, self.components.collate_fn,
                                  config.batch_size, self.context.rank, self.context.world_size,
                                  config.seed, config.accum_freq, config.workers,
                                  equalize=lambda size: min_across_ranks(size, self.context))
        self.checkpoint_root = config.run_dir / "checkpoints"
        self.train_seconds = 0.0
        self.stop_request = StopRequest(announce=self.context.is_main)
        self._recover_checkpoints()
        if config.resume:
            self.resume(config.resume)
        self.logger = (MetricsLogger(config.run_dir, config.tensorboard,
                                     purge_step=self.step + 1 if config.resume else None)
                       if self.context.is_main else None)

    # ----------------------------------------------------------------- state
    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.accum_freq * self.context.world_size

    @property
    def eval_model(self) -> nn.Module:
        """The EMA weights when EMA is on (evaluation follows CLIP-Mamba), else the live model."""
        return self.ema.module if self.ema is not None else self.model

    def _recover_checkpoints(self) -> None:
        """Finish or clean up what a crash during a save left in the checkpoint directory."""
        if self.context.is_main:
            for note in ckpt.recover(self.checkpoint_root):
                print(f"climp: {note}")
        barrier(self.context)

    def save(self) -> None:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        rng_states = [ckpt.rng_state_from_bytes(b)
                      for b in gather_objects(ckpt.rng_state_bytes(), self.context)]
        if self.context.is_main:
            state = {
                "step": self.step,
                "samples_seen": self.samples_seen,
                "recent_losses": list(self.recent_losses),
                "resume_history": self.resume_history,
                "metrics_records": count_records(self.config.run_dir / "metrics.jsonl"),
                "data": self.stream.position,
                "world_size": self.context.world_size,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema_updates": self.ema.updates if self.ema is not None else None,
                "rng": rng_states,
                "train_seconds": self.train_seconds,
            }
            # model_name/model_cfg are what climp.load_checkpoint rebuilds the model from.
            sidecar = {"model_name": self.config.model, "model_cfg": self.components.model_cfg,
                       "train": self.config.to_dict()}
            if self.resume_history:  # settings changed by --resume-override, and from which step
                sidecar["resume_overrides"] = self.resume_history
            ckpt.save_checkpoint(self.checkpoint_root, self.step, self.model.state_dict(), sidecar,
                                 state, self.ema.state_dict() if self.ema is not None else None)
        self.last_saved_step = self.step
        barrier(self.context)

    def resume(self, spec: str) -> None:
        """Restore weights, optimiser, schedule, scaler, EMA, RNG and data position. Run settings
        that differ from the checkpoint's are an error unless `resume_override` is set; then the
        new values are used from here on and recorded in the checkpoints' `resume_overrides`."""
        point = ckpt.load_for_resume(spec, self.checkpoint_root)
        directory, loaded, state = point.directory, point.loaded, point.state
        saved = loaded.config.get("train", {})
        changes = changed_settings(saved, self.config, state["world_size"], self.context.world_size)
        check_resume_settings(changes, self.config.resume_override, directory)
        load_state_dict_strict(self.model, loaded.weights, f"checkpoint {directory}")
        if self.ema is not None:
            self._restore_ema(loaded.ema_weights, state, directory)
        fresh = hyperparameters(self.optimizer)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if changes:
            apply_hyperparameters(self.optimizer, self.scheduler, fresh)
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        saved_micro_batch = saved.get("batch_size", self.config.batch_size) * state["world_size"]
        self.samples_seen = state.get("samples_seen",
                                      self.step * saved_micro_batch * saved.get("accum_freq", 1))
        self.train_seconds = state.get("train_seconds", 0.0)
        self.recent_losses.extend(state.get("recent_losses", []))
        self.resume_history = list(state.get("resume_history", []))
        self.stream.epoch = state["data"]["epoch"]
        self.stream.batch_in_epoch = convert_batch_position(
            state["data"]["batch_in_epoch"], saved_micro_batch, self.config.batch_size * self.context.world_size)
        if self.context.rank < len(state["rng"]):
            ckpt.restore_rng_state(state["rng"][self.context.rank])
        if changes:
            self.resume_history.append({"step": self.step,
                                        "changes": {k: [old, new] for k, (old, new) in changes.items()}})
            if self.context.is_main:
                warnings.warn(f"resuming from {directory} with changed settings (--resume-override): "
                              f"{describe(changes)}", UserWarning)
        if self.context.is_main:
            truncate_metrics(self.config.run_dir / "metrics.jsonl", self.step, state.get("metrics_records"))

    def _restore_ema(self, ema_weights: Optional[Dict[str, torch.Tensor]], state: Mapping[str, Any],
                     directory: Any) -> None:
        if ema_weights is not None:
            load_state_dict_strict(self.ema.module, ema_weights, f"EMA of checkpoint {directory}")
            self.ema.updates = state["ema_updates"]
        elif self.config.resume_override:  # EMA switched on now: it starts from the restored weights
            self.ema.module.load_state_dict(self.model.state_dict())
        else:
            raise ValueError(f"checkpoint {directory} has no EMA weights but --ema-decay is set")

    # ------------------------------------------------------------------ step
    def _to_device(self, batch: Sequence[torch.Tensor]) -> tuple:
        images, texts = batch
        return images.to(self.device, non_blocking=True), texts.to(self.device, non_blocking=True)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _accumulated_loss(self, micro_batches: List[tuple]) -> torch.Tensor:
        """Feature-accumulation step over several micro-batches; returns the (same) loss value."""
        with torch.no_grad(), self.autocast():
            cached = [_features(self.model(images, texts)) for images, texts in micro_batches]
        last = len(micro_batches) - 1
        for j, (images, texts) in enumerate(micro_batches):
            sync = self.ddp_model.no_sync() if self.context.enabled and j < last else contextlib.nullcontext()
            with sync:
                with self.autocast():
                    out = self.train_model(images, texts)
                    image_feats = [f[0] for f in cached]
                    text_feats = [f[1] for f in cached]
                    image_feats[j], text_feats[j] = _features(out)
                    scale, bias = out["logit_scale"], out.get("logit_bias")
                    if j < last:
                        scale = scale.detach()
                        bias = bias.detach() if bias is not None else None
                    loss = self.loss_fn(torch.cat(image_feats), torch.cat(text_feats), scale, bias)
                self._backward(loss)
        return loss.detach()

    def train_step(self, micro_batches: List[Any]) -> torch.Tensor:
        """One optimiser step; returns the loss averaged over ranks."""
        self.model.train()
        micro_batches = [self._to_device(b) for b in micro_batches]
        self.optimizer.zero_grad(set_to_none=True)
        if len(micro_batches) == 1:
            with self.autocast():
                out = self.train_model(*micro_batches[0])
                loss = self.loss_fn(out["image_features"], out["text_features"],
                                    out["logit_scale"], out.get("logit_bias"))
            self._backward(loss)
            loss = loss.detach()
        else:
            loss = self._accumulated_loss(micro_batches)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        # samples actually trained on: skipped samples leave micro-batches smaller, and after
        # equalisation every rank's micro-batch has the same size
        self.samples_seen += sum(len(images) for images, _ in micro_batches) * self.context.world_size
        return mean_across_ranks(loss.float(), self.context)

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> Dict[str, float]:
        """Quick zero-shot and retrieval metrics on rank 0 (other ranks wait and get {})."""
        metrics: Dict[str, float] = {}
        if self.context.is_main:
            metrics = quick_evaluate(self.eval_model, self.components.tokenizer,
                                     self.components.zero_shot_tasks, self.components.retrieval_set,
                                     self.autocast)
            self.logger.log({"step": self.step, "kind": "eval", **metrics}, prefix="eval")
        barrier(self.context)
        return metrics

    # ------------------------------------------------------------------- run
    def run(self) -> Dict[str, Any]:
        """Train to `config.steps`, evaluate, write results.json and the loss curve. SIGINT or
        SIGTERM stops after the current step with a checkpoint (raises TrainingStopped)."""
        with self.stop_request.installed():
            return self._run()

    def _run(self) -> Dict[str, Any]:
        config = self.config
        run_start = time.perf_counter()
        bar = tqdm(total=config.steps, initial=self.step, desc=f"train {config.model}",
                   disable=not (config.progress and self.context.is_main), dynamic_ncols=True)
        window_start, window_steps = time.perf_counter(), 0
        while self.step < config.steps:
            step_start = time.perf_counter()
            loss = self.train_step(self.stream.next_step())
            self.train_seconds += time.perf_counter() - step_start
            window_steps += 1
            bar.update(1)
            self.recent_losses.append(loss.item())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; "
                                         f"{_nan_loss_hint(config.precision)}")
            if self.step % config.log_every == 0 or self.step == config.steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": self.step, "epoch": self.stream.epoch, "loss": loss.item(),
                    "lr": self.base_lr(),
                    "logit_scale": self.model.logit_scale.exp().item(),
                    "samples_per_s": window_steps * self.global_batch / max(elapsed, 1e-9),
                    "time": time.time(),
                }
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                samples_s=f"{record['samples_per_s']:.0f}")
                if self.logger is not None:
                    self.logger.log(record)
                window_start, window_steps = time.perf_counter(), 0
            if config.eval_every and self.step % config.eval_every == 0 and self.step < config.steps:
                self.evaluate()
            if config.save_every and self.step % config.save_every == 0 and self.step < config.steps:
                self.save()
            if self.stop_request.agreed(self.context):
                self._stop(bar)
        bar.close()
        self.save()
        if self.stop_request.agreed(self.context):
            self._stop(bar)
        metrics = self.evaluate()
        data_report = self._data_report()
        results: Dict[str, Any] = {}
        if self.context.is_main:
            results = self._write_results(metrics, smoothed_loss(self.recent_losses, self._last_loss()), data_report,
                                          time.perf_counter() - run_start)
            self.logger.close()
        return results

    def _last_loss(self) -> float:
        """The last step's loss (saved with the window, so also after resuming at the final step)."""
        return self.recent_losses[-1] if self.recent_losses else float("nan")

    def _data_report(self) -> Dict[str, Any]:
        """Skipped samples by reason (distinct samples, merged over ranks) and cut captions."""
        from climp.data.sources import SkipCounter

        own = self.stream.skips
        merged = SkipCounter()
        for records in gather_objects(own.records() if own is not None else [], self.context):
            merged.merge(records)
        counts = merged.counts()
        counts["bad_sample"] += sum_across_ranks(own.unkeyed if own is not None else 0, self.context)
        counts = {reason: n for reason, n in counts.items() if n}
        return {"skipped_samples": sum(counts.values()), "skipped_by_reason": counts,
                "truncated_captions": sum_across_ranks(self.stream.truncated_captions, self.context),
                "max_caption_tokens": self.config.max_caption_tokens}

    def _stop(self, bar: Any) -> NoReturn:
        """After a stop signal: save this step (unless just saved), flush logs, raise TrainingStopped."""
        bar.close()
        if self.last_saved_step != self.step:
            self.save()
        if self.logger is not None:
            self.logger.close()
        raise TrainingStopped(self.stop_request.signal_name, self.step, self.config.steps,
                              str(self.checkpoint_root / ckpt.checkpoint_name(self.step)))

    def _write_results(self, metrics: Dict[str, float], final_loss: Mapping[str, Any],
                       data_report: Mapping[str, Any], wall_seconds: float) -> Dict[str, Any]:
        config = self.config
        results = {
            "model": config.model,
            "loss": config.loss,
            "steps": self.step,
            "global_batch": self.global_batch,
            "samples_seen": self.samples_seen,
            "world_size": self.context.world_size,
            **final_loss,
            "train_seconds": self.train_seconds,
            "wall_seconds": wall_seconds,
            "ema": self.ema is not None,
            **data_report,
            "metrics": metrics,
            "checkpoint": str(ckpt.resolve_checkpoint("latest", self.checkpoint_root)),
        }
        run_dir = config.run_dir
        (run_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
        records = read_metrics(run_dir / "metrics.jsonl")
        plot_loss_curve(records, run_dir / "loss_curve.png", title=f"{config.model} ({config.loss} loss)")
        return results


def _nan_loss_hint(precision: str) -> str:
    if precision == "fp32":
        return "lower --lr or lengthen --warmup"
    return "lower --lr or use --precision fp32"


def format_results(results: Mapping[str, Any]) -> str:
    """The end-of-run table: zero-shot accuracies and R@1 both ways, plus run facts."""
    metrics = results["metrics"]
    rows = [(f"zero-shot {name[len('zeroshot_'):]} accuracy", f"{100 * value:.1f}%")
            for name, value in metrics.items() if name.startswith("zeroshot_")]
    for key, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
        for k in (1, 5, 10):
            if f"{key}_R@{k}" in metrics:
                rows.append((f"{label} R@{k}", f"{100 * metrics[f'{key}_R@{k}']:.1f}%"))
    for prefix in sorted({name.split("/")[0] for name in metrics if "/" in name}):
        for key, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
            for level in ("", "class_"):
                if f"{prefix}/{level}{key}_R@1" in metrics:
                    kind = " (class-level)" if level else ""
                    rows.append((f"{prefix} {label} R@1{kind}", f"{100 * metrics[f'{prefix}/{level}{key}_R@1']:.1f}%"))
    if not metrics:
        rows.append(("evaluation", "none: give --val-data or --eval-embedded"))
    window = results.get("final_loss_steps", 1)
    rows += [(f"final loss (mean of last {window} steps)", f"{results['final_loss']:.4f}"),
             ("training time", f"{results['train_seconds']:.0f} s"),
             ("wall time incl. evaluation", f"{results['wall_seconds']:.0f} s"),
             ("samples seen", f"{results['samples_seen']}")]
    for reason, count in results.get("skipped_by_reason", {}).items():
        rows.append((f"samples skipped: {reason}", str(count)))
    if results.get("truncated_captions"):
        rows.append((f"captions cut to {results['max_caption_tokens']} tokens", str(results["truncated_captions"])))
    width = max(len(name) for name, _ in rows)
    lines = [f"{results['model']} ({results['loss']} loss, {results['steps']} steps)"]
    lines += [f"  {name:<{width}}  {value:>8}" for name, value in rows]
    return "\n".join(lines)


def train(config: Union[TrainConfig, Mapping[str, Any]],
          components: Optional[TrainComponents] = None) -> Dict[str, Any]:
    """Run one training job (single process or one torchrun rank) and return its results.

    Rank 0 returns the results dict (also written to `<run_dir>/results.json`); other ranks
    return {}. A process group started here is shut down at the end.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    check_before_building(config)
    started_group = not torch.distributed.is_initialized()
    try:
        return Trainer(config, components).run()
    finally:
        if started_group:
            shutdown_distributed()
