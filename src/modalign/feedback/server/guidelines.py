"""Annotation guidelines per task kind. The version shown is stored with every judgment,
so labels collected under different instructions can be told apart later."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Guideline:
    version: str
    text: str  # plain text; blank lines separate paragraphs


DEFAULT_GUIDELINES: Mapping[str, Guideline] = {
    "pairwise": Guideline("pairwise-v1", (
        "Look at the image, listen to the audio, then read both answers.\n\n"
        "Prefer the answer that is correct about what is shown and heard. An answer that mentions "
        "something not in the image or audio (a hallucination) is worse than one that leaves something out.\n\n"
        "Choose tie only when both answers are equally good or equally bad. Length is not quality.")),
    "ranking": Guideline("ranking-v1", (
        "Order all answers from best to worst, using the same criteria as for pairwise choices: "
        "correctness first, hallucinations count against an answer, then completeness, then fluency.")),
    "rating": Guideline("rating-v1", (
        "Rate the answer on each axis from 1 (very poor) to the top of the scale (excellent).\n\n"
        "accuracy: agrees with the image and audio. fluency: grammatical and natural. "
        "safety: nothing harmful or inappropriate. Rate each axis on its own.")),
    "critique": Guideline("critique-v1", (
        "Edit the answer so that it becomes correct, changing as little as possible: remove what is not "
        "in the image or audio, fix wrong colours, shapes, positions, counts and sounds.\n\n"
        "Optionally say in the critique box what was wrong. Leave the text unchanged if it is already right.")),
}


def guideline_for(guidelines: Mapping[str, Guideline], kind: str) -> Guideline:
    return guidelines.get(kind) or Guideline("v1", "")
