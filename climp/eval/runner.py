"""`evaluate(model, tokenizer, preprocess, tasks, settings)`: run any subset of the evaluation
tasks on the embedded benchmark and on local real data, returning a JSON-ready dict."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from . import datasets as real
from .caption_shifts import evaluate_caption_shifts
from .dense_captions import evaluate_dense_retrieval
from .features import ImageFn, class_embeddings, clip_normalize, image_pipeline, pixels_from_image, split_preprocess
from .hubness import evaluate_hubness
from .ood_detection import evaluate_ood_detection
from .resolution import evaluate_resolution
from .retrieval import evaluate_retrieval
from .shape_bias import CueConflictFolder, evaluate_shape_bias
from .shifts import SHIFTS, get_shift, shift_op
from .spurious import evaluate_spurious
from .zeroshot import evaluate_zero_shot, zero_shot_logits
from ..config_mixin import FromDict
from ..settings import setting

TASKS = ("zeroshot", "retrieval", "shifts", "spurious", "ood", "resolution", "dense", "hubness", "shape_bias",
         "caption_shifts")
# Tasks that run on local files only (not part of the default task list).
FILE_TASKS = ("nocaps",)
# The settings naming each task's local data (the embedded benchmark serves every task in TASKS).
TASK_DATA = {"zeroshot": ("datasets",), "retrieval": ("retrieval_file",), "shifts": ("shift_dataset",),
             "spurious": (), "ood": ("ood_in_dataset",), "resolution": ("shift_dataset", "resolution_data"),
             "dense": ("dense_file",), "hubness": ("retrieval_file",), "shape_bias": ("cue_conflict_root",),
             "caption_shifts": ("retrieval_file",), "nocaps": ("nocaps_file",)}
RETRIEVAL_KS = (1, 5, 10)
EMBEDDED = "embedded"
SIZES, DATA, TASK_OPTIONS = "sizes", "data", "task options"


@dataclass
class EvalSettings(FromDict):
    """Data sizes and local data locations. `embedded` (None: only when no local data is named)
    adds the embedded benchmark's data to each task."""

    config_label = "eval settings"
    batch_size: int = setting(64, group=SIZES, help="images per forward pass")
    num_samples: int = setting(200, group=SIZES, help="embedded benchmark samples per task")
    seed: int = setting(0, group=SIZES, help="seed of the embedded data and of a model's random initialisation")
    resolution: Optional[int] = setting(None, group=SIZES, help=(
        "embedded benchmark side (default: the model's training side)"))
    captions_per_image: int = setting(5, group=SIZES, help="captions per image in embedded retrieval")
    dataset_root: Optional[str] = setting(None, group=DATA, metavar="DIR", help=(
        "root of local real datasets (nothing downloads)"))
    datasets: List[str] = setting(default_factory=list, group=DATA, flag="--dataset", list_style="append",
                                  metavar="NAME", help="real zero-shot dataset under --dataset-root (repeatable)")
    split: str = setting("test", group=DATA, help="split of the embedded benchmark and of real datasets")
    retrieval_file: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "JSON/CSV of (image, caption) for retrieval"))
    nocaps_file: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "NoCaps' COCO-style caption JSON (task nocaps: CLIMP's retrieval protocol)"))
    dense_file: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "JSON [{image, caption}] of long captions"))
    image_root: Optional[str] = setting(None, group=DATA, metavar="DIR", help=(
        "images of the caption files (default: their folder)"))
    ood_root: Optional[str] = setting(None, group=DATA, metavar="DIR", help=(
        "folder of OOD images (for the embedded shape task or --ood-in-dataset)"))
    ood_in_dataset: Optional[str] = setting(None, group=DATA, metavar="NAME", help=(
        "in-distribution dataset for --ood-root"))
    cue_conflict_root: Optional[str] = setting(None, group=DATA, metavar="DIR", help="Geirhos cue-conflict folder")
    shifts: List[str] = setting(default_factory=lambda: list(SHIFTS), group=TASK_OPTIONS, help=(
        "image shifts of the shifts task"))
    shift_dataset: Optional[str] = setting(None, group=DATA, metavar="NAME", help=(
        "real dataset (from --dataset) for shifts/resolution (default: the embedded shape task)"))
    resolution_scales: List[int] = setting(default_factory=lambda: [1, 2, 4], group=TASK_OPTIONS, help=(
        "multiples of the model's side in the resolution task"))
    resolution_data: Optional[str] = setting(None, group=DATA, metavar="PATH", help=(
        "real images for the resolution task: a caption CSV/JSON (image, caption; retrieval) or an "
        "ImageFolder with class folders (zero-shot), resized from the files to each side"))
    hubness_k: int = setting(10, group=TASK_OPTIONS, help="neighbourhood size of the hubness task")
    embedded: Optional[bool] = setting(None, group=DATA, help=(
        "evaluate the embedded benchmark too (default: only when no local data is named)"))

    @property
    def use_embedded(self) -> bool:
        if self.embedded is not None:
            return self.embedded
        return not any((self.datasets, self.retrieval_file, self.nocaps_file, self.dense_file, self.ood_root,
                        self.ood_in_dataset, self.cue_conflict_root, self.shift_dataset, self.resolution_data))

    def tasks_with_data(self) -> List[str]:
        """The tasks that have data to run on under these settings."""
        has = {task: any(getattr(self, name) for name in names) for task, names in TASK_DATA.items()}
        if self.use_embedded:
            return list(TASKS) + [task for task in FILE_TASKS if has[task]]
        return [task for task in TASKS + FILE_TASKS if has[task]]

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """ValueError for unknown tasks or tasks without data (before anything is built)."""
        unknown = [t for t in tasks if t not in TASKS + FILE_TASKS]
        if unknown or not tasks:
            raise ValueError(f"unknown or no eval tasks {unknown}; choose from {list(TASKS + FILE_TASKS)}")
        without = [t for t in tasks if t not in self.tasks_with_data()]
        if without:
            needs = "; ".join(f"{t} reads {' or '.join(TASK_DATA[t]) or 'only the embedded benchmark'}"
                              for t in without)
            raise ValueError(f"eval task(s) {without} have no data ({needs}): name their data (see `climp eval "
                             "--help`) or add the embedded benchmark with --embedded")

    def __post_init__(self) -> None:
        for name in self.shifts:
            get_shift(name)
        if self.datasets and not self.dataset_root:
            raise ValueError("datasets given without dataset_root")


def model_image_side(model: torch.nn.Module, default: int = 224) -> int:
    """The training side of the image tower, from the model config or the tower."""
    size = getattr(model, "config", {}).get("vision_cfg", {}).get("image_size") if hasattr(model, "config") else None
    size = size or getattr(model.visual, "image_size", None) or default
    return int(size if isinstance(size, int) else size[0])


def pixels_at_side(side: int) -> Callable[[Any], torch.Tensor]:
    """A real image (PIL or tensor) -> float pixels (3, side, side): its short side resized to
    `side` from the original, then centre-cropped (never upsampled from a smaller copy)."""
    from torchvision.transforms import v2

    ops = v2.Compose([v2.RGB(), v2.Resize(side, antialias=True), v2.CenterCrop(side)])
    return lambda image: pixels_from_image(ops(image))


def resized(pixels: torch.Tensor, side: int) -> torch.Tensor:
    if pixels.shape[-2:] == (side, side):
        return pixels
    return F.interpolate(pixels[None], size=(side, side), mode="bicubic", antialias=True, align_corners=False)[0]


class Evaluation:
    """One model's evaluation; each task method returns {data name: metrics}."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, preprocess: Optional[Callable],
                 settings: EvalSettings):
        from climp.data import synthetic
        self.synthetic = synthetic
        self.model, self.tokenizer, self.s = model.eval(), tokenizer, settings
        self.side = settings.resolution or model_image_side(model)
        if preprocess is not None:
            self.to_pixels, self.normalize = split_preprocess(preprocess)
        else:
            self.to_pixels = lambda im: resized(pixels_from_image(im), self.side)
            self.normalize = clip_normalize
        # the embedded scenes render at the requested side; the model's normalisation applies
        self.embedded_fn = image_pipeline(pixels_from_image, self.normalize)
        self.real_fn = image_pipeline(self.to_pixels, self.normalize)
        self._real_sets: Dict[str, real.ClassificationSet] = {}

    def embedded_tasks(self, side: Optional[int] = None) -> Dict[str, Any]:
        return self.synthetic.zero_shot_tasks(self.s.split, self.s.num_samples, side or self.side, self.s.seed)

    def embedded_retrieval(self, style: str = "short", side: Optional[int] = None):
        return self.synthetic.retrieval_set(self.s.split, self.s.num_samples, side or self.side, self.s.seed,
                                            caption_style=style, captions_per_image=self.s.captions_per_image)

    def real_set(self, name: str) -> real.ClassificationSet:
        if name not in self._real_sets:
            if not self.s.dataset_root:
                raise ValueError(f"dataset {name!r} needs --dataset-root")
            self._real_sets[name] = real.load_classification_set(name, self.s.dataset_root, split=self.s.split)
        return self._real_sets[name]

    def zeroshot(self) -> Dict[str, Any]:
        out = {f"{EMBEDDED}/{name}": evaluate_zero_shot(self.model, self.tokenizer, task, self.embedded_fn,
                                                        self.s.batch_size)
               for name, task in (self.embedded_tasks() if self.s.use_embedded else {}).items()}
        for name in self.s.datasets:
            out[name] = evaluate_zero_shot(self.model, self.tokenizer, self.real_set(name), self.real_fn,
                                           self.s.batch_size)
        return out

    def retrieval(self) -> Dict[str, Any]:
        out = {}
        if self.s.use_embedded:
            out[f"{EMBEDDED}/short"] = evaluate_retrieval(self.model, self.tokenizer, self.embedded_retrieval(),
                                                          self.embedded_fn, self.s.batch_size)
        if self.s.retrieval_file:
            data = real.CaptionDataset(self.s.retrieval_file, self.s.image_root)
            out[self.s.retrieval_file] = evaluate_retrieval(self.model, self.tokenizer, data, self.real_fn,
                                                            self.s.batch_size)
        return out

    def nocaps(self) -> Dict[str, Any]:
        """CLIMP's NoCaps protocol on its validation captions: image retrieval (caption -> image)
        and text retrieval (image -> any of its captions) recall at 1, 5 and 10."""
        if not self.s.nocaps_file:
            raise ValueError("task 'nocaps' needs nocaps_file (--nocaps-file): NoCaps' COCO-style caption JSON, "
                             "with the images under image_root (--image-root) or beside the file")
        data = real.CaptionDataset(self.s.nocaps_file, self.s.image_root)
        r = evaluate_retrieval(self.model, self.tokenizer, data, self.real_fn, self.s.batch_size, RETRIEVAL_KS)
        out: Dict[str, Any] = {f"image_retrieval_R@{k}": r[f"text_to_image_R@{k}"] for k in RETRIEVAL_KS}
        out.update({f"text_retrieval_R@{k}": r[f"image_to_text_R@{k}"] for k in RETRIEVAL_KS})
        out.update(num_images=r["num_images"], num_captions=r["num_captions"])
        return {self.s.nocaps_file: out}

    def shifts(self) -> Dict[str, Any]:
        """Top-1 accuracy per shift and level on the shift dataset."""
        if self.s.shift_dataset:
            task, to_pixels, name = self.real_set(self.s.shift_dataset), self.to_pixels, self.s.shift_dataset
        else:
            task, to_pixels, name = self.embedded_tasks()["shape"], pixels_from_image, f"{EMBEDDED}/shape"
        weights = class_embeddings(self.model, self.tokenizer, task.classnames, task.templates)
        curves: Dict[str, Any] = {}
        for shift_name in self.s.shifts:
            shift = get_shift(shift_name)
            accs = []
            for level in shift.levels:
                fn = image_pipeline(to_pixels, self.normalize, shift_op(shift_name, level, self.s.seed))
                logits, labels, _ = zero_shot_logits(self.model, self.tokenizer, task.classnames, task.templates,
                                                     task.dataset, fn, self.s.batch_size,
                                                     desc=f"{shift_name}@{level:g}", weights=weights)
                accs.append((logits.argmax(1) == labels).float().mean().item())
            curves[shift_name] = {"levels": list(shift.levels), "accuracy": accs, "level_label": shift.level_label}
        return {name: curves}

    def spurious(self) -> Dict[str, Any]:
        task = self.synthetic.spurious_task(self.s.split, self.s.num_samples, self.side, self.s.seed)
        result = evaluate_spurious(self.model, self.tokenizer, task, self.embedded_fn, self.s.batch_size)
        names = getattr(task, "group_names", None)
        if names:
            result["group_accuracy"] = {names[int(g)]: v for g, v in result["group_accuracy"].items()}
        return {f"{EMBEDDED}/{task.name}": result}

    def ood(self) -> Dict[str, Any]:
        """In-distribution: the embedded shape task (or ood_in_dataset); OOD: images under ood_root,
        else the same images fully phase-scrambled (no object shape left)."""
        if self.s.ood_in_dataset:
            task, in_fn = self.real_set(self.s.ood_in_dataset), self.real_fn
        else:
            task, in_fn = self.embedded_tasks()["shape"], self.embedded_fn
        if self.s.ood_root:
            ood_data, ood_fn, ood_name = real.ImageOnlyFolder(self.s.ood_root), self.real_fn, self.s.ood_root
        else:
            scrambled = shift_op("phase_scrambling", 180.0, self.s.seed)
            to_pixels = self.to_pixels if self.s.ood_in_dataset else pixels_from_image
            ood_data, ood_fn, ood_name = task.dataset, image_pipeline(to_pixels, self.normalize, scrambled), \
                "phase_scrambled"
        result = evaluate_ood_detection(self.model, self.tokenizer, task.classnames, task.templates, task.dataset,
                                        ood_data, in_fn, ood_fn, self.s.batch_size)
        return {f"{task.name} vs {ood_name}": result}

    def resolution(self) -> Dict[str, Any]:
        """The embedded benchmark (or --shift-dataset) at each side, and --resolution-data if set:
        a caption CSV/JSON (retrieval) or an ImageFolder (zero-shot), each image resized from the
        original file to every side."""
        def real_fn(side: int) -> ImageFn:
            return image_pipeline(pixels_at_side(side), self.normalize)
        out = {}
        if self.s.shift_dataset:
            task = self.real_set(self.s.shift_dataset)
            out[self.s.shift_dataset] = self._resolution(lambda side: task, None, real_fn)
        elif self.s.use_embedded:
            out[EMBEDDED] = self._resolution(lambda side: self.embedded_tasks(side)["shape"],
                                             lambda side: self.embedded_retrieval("short", side),
                                             lambda side: self.embedded_fn)
        if self.s.resolution_data:
            path = Path(self.s.resolution_data)
            if path.is_dir():
                folder = real.image_folder_set(path, path.name, None)
                out[str(path)] = self._resolution(lambda side: folder, None, real_fn)
            else:
                captions = real.CaptionDataset(path, self.s.image_root)
                out[str(path)] = self._resolution(None, lambda side: captions, real_fn)
        return out

    def _resolution(self, make_task, make_retrieval, fn_for_side) -> Dict[str, Any]:
        return evaluate_resolution(self.model, self.tokenizer, self.side, self.s.resolution_scales, make_task,
                                   fn_for_side, make_retrieval, self.s.batch_size)

    def dense(self) -> Dict[str, Any]:
        out = {}
        if self.s.use_embedded:
            out[f"{EMBEDDED}/dense"] = evaluate_dense_retrieval(self.model, self.tokenizer,
                                                                self.embedded_retrieval("dense"), self.embedded_fn,
                                                                self.s.batch_size)
        if self.s.dense_file:
            data = real.CaptionDataset(self.s.dense_file, self.s.image_root)
            out[self.s.dense_file] = evaluate_dense_retrieval(self.model, self.tokenizer, data, self.real_fn,
                                                              self.s.batch_size)
        return out

    def hubness(self) -> Dict[str, Any]:
        out = {}
        if self.s.use_embedded:
            out[f"{EMBEDDED}/short"] = evaluate_hubness(self.model, self.tokenizer, self.embedded_retrieval(),
                                                        self.embedded_fn, self.s.batch_size, self.s.hubness_k)
        if self.s.retrieval_file:
            data = real.CaptionDataset(self.s.retrieval_file, self.s.image_root)
            out[self.s.retrieval_file] = evaluate_hubness(self.model, self.tokenizer, data, self.real_fn,
                                                          self.s.batch_size, self.s.hubness_k)
        return out

    def caption_shifts(self) -> Dict[str, Any]:
        """Retrieval with the captions' format rewritten (punctuation, case, spaces)."""
        out = {}
        if self.s.use_embedded:
            out[f"{EMBEDDED}/short"] = evaluate_caption_shifts(self.model, self.tokenizer, self.embedded_retrieval(),
                                                               self.embedded_fn, self.s.batch_size)
        if self.s.retrieval_file:
            data = real.CaptionDataset(self.s.retrieval_file, self.s.image_root)
            out[self.s.retrieval_file] = evaluate_caption_shifts(self.model, self.tokenizer, data, self.real_fn,
                                                                 self.s.batch_size)
        return out

    def shape_bias(self) -> Dict[str, Any]:
        out = {}
        if self.s.use_embedded:
            data = self.synthetic.cue_conflict_set(self.s.num_samples, self.side, self.s.seed)
            out[f"{EMBEDDED}/cue_conflict"] = evaluate_shape_bias(self.model, self.tokenizer, data, data.classnames,
                                                                  data.templates, self.embedded_fn, self.s.batch_size)
        if self.s.cue_conflict_root:
            folder = CueConflictFolder(self.s.cue_conflict_root)
            out[self.s.cue_conflict_root] = evaluate_shape_bias(self.model, self.tokenizer, folder, folder.classnames,
                                                                real.DEFAULT_TEMPLATES, self.real_fn,
                                                                self.s.batch_size)
        return out


def evaluate(model: torch.nn.Module, tokenizer: Callable, preprocess: Optional[Callable],
             tasks: Sequence[str], settings: Optional[EvalSettings | Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Run the named tasks (see TASKS and FILE_TASKS) on the data the settings name, and on the embedded benchmark
    when `settings.use_embedded`; preprocess (PIL -> normalised tensor, a Compose ending in
    Normalize) is used for real data, None resizes to the model's side with CLIP normalisation."""
    if settings is None or isinstance(settings, Mapping):
        settings = EvalSettings.from_dict(dict(settings or {}))
    settings.check_tasks(tasks)
    run = Evaluation(model, tokenizer, preprocess, settings)
    return {task: getattr(run, task)() for task in tasks}
