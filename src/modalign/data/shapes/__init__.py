"""ShapesWorld: deterministic multimodal scenes with exact ground truth (see `world.py`)."""

from modalign.data.shapes.build import build_shapes_dataset, make_examples
from modalign.data.shapes.language import caption, noisy_caption, questions, references
from modalign.data.shapes.scorers import caption_facts, normalize_answer, parse_caption, score_shapes
from modalign.data.shapes.world import Obj, Scene, sample_scene

__all__ = [
    "Obj", "Scene", "build_shapes_dataset", "caption", "caption_facts", "make_examples", "noisy_caption",
    "normalize_answer", "parse_caption", "questions", "references", "sample_scene", "score_shapes",
]
