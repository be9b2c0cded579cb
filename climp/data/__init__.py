"""Data: the embedded synthetic-scenes benchmark, real-data sources, and batch collation."""
from .collate import Batch, ImageTextCollate, TruncatingTokenizer
from .images import load_image, to_rgb
from .scenes import (BACKGROUNDS, COLOUR_RGB, HELDOUT_COMBOS, POSITIONS, SHAPES,
                     SIZES, SPURIOUS_BACKGROUND, Scene, SceneObject, render_scene)
from .sources import (SKIP_REASONS, CsvDataset, ImageFolderCaptions, SkipCounter, Skipped,
                      webdataset_pipeline)
from .synthetic import (COLOUR_TEMPLATES, COLOURS, COUNT_CLASSNAMES, COUNT_TEMPLATES,
                        POSITION_TEMPLATES, SHAPE_TEMPLATES, SPLITS, TEMPLATES, CueConflictSet,
                        RetrievalSet, SyntheticScenes, ZeroShotTask, cue_conflict_set,
                        multi_resolution, retrieval_set, spurious_task, zero_shot_tasks)

__all__ = [
    "SHAPES", "COLOURS", "COLOUR_RGB", "SIZES", "POSITIONS", "BACKGROUNDS", "HELDOUT_COMBOS",
    "SPURIOUS_BACKGROUND", "COUNT_CLASSNAMES", "SPLITS", "TEMPLATES", "SHAPE_TEMPLATES",
    "COLOUR_TEMPLATES", "COUNT_TEMPLATES", "POSITION_TEMPLATES", "Scene", "SceneObject",
    "render_scene", "SyntheticScenes", "ZeroShotTask", "zero_shot_tasks", "spurious_task",
    "retrieval_set", "cue_conflict_set", "multi_resolution", "RetrievalSet", "CueConflictSet",
    "CsvDataset", "ImageFolderCaptions", "webdataset_pipeline", "SkipCounter", "SKIP_REASONS",
    "ImageTextCollate", "Batch", "TruncatingTokenizer", "Skipped", "load_image", "to_rgb",
]
