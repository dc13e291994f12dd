"""Gold scorers of ShapesWorld answers, computed from the scene's ground truth.

Hallucination is measured CHAIR-style (Rohrbach et al. 2018, "Object Hallucination in
Image Captioning", sec. 3): every mentioned fact (an object's existence, its colour,
size and position; the number and pitch of beeps) is one mention, and the rate is the
share of mentions that the scene contradicts. Coverage is the share of the scene's true
facts that the caption states correctly.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Sequence

from modalign.config import ConfigError
from modalign.data.records import Example
from modalign.data.shapes.world import COLOURS, NUMBER_WORDS, PITCHES, POSITIONS, SHAPES, SIZES, Obj, Scene

_OBJECT = re.compile(
    rf"(?:\b({'|'.join(SIZES)})\s+)?(?:\b({'|'.join(COLOURS)})\s+)?\b({'|'.join(SHAPES)})s?\b"
    rf"(?:\s+(?:on|in)\s+the\s+({'|'.join(POSITIONS)})\b)?"
)
_SOUND = re.compile(
    rf"\b(?:({'|'.join(NUMBER_WORDS)}|\d+)\s+)?(?:({'|'.join(PITCHES)})\s+)?beeps?\b"
)


class ShapesTruthError(ConfigError):
    """A ShapesWorld-only scorer, rule or judge was given data without ShapesWorld ground truth."""


def truth_problem(example: Example, need_world: bool = True) -> str | None:
    """What ground truth `example` lacks for the gold scorers, or None: ShapesWorld records carry
    meta.world == "shapes", captions meta.scene, questions meta.answer.

    `need_world=False` checks only the ground-truth fields (the per-answer scorers, which also
    serve hand-made examples; up-front validation asks for meta.world too).
    """
    meta = example.meta
    if need_world and meta.get("world") != "shapes":
        return f"meta.world={meta['world']!r}" if "world" in meta else "no meta.world"
    if meta.get("task") == "caption" and not isinstance(meta.get("scene"), dict):
        return "a caption task without meta.scene"
    if meta.get("task") != "caption" and "answer" not in meta:
        return f"a {meta.get('task') or 'question'} task without meta.answer"
    return None


def require_shapes_truth(examples: Sequence[Example], who: str, alternative: str, need_world: bool = True) -> None:
    """Raise ShapesTruthError naming `who` and the first record without ShapesWorld ground truth.

    `alternative`: what the user should use instead, e.g. "for your data use judge=people|<reward>".
    """
    for example in examples:
        problem = truth_problem(example, need_world)
        if problem:
            raise ShapesTruthError(f"{who} needs ShapesWorld ground truth (meta.world=shapes), but record "
                                   f"{example.id!r} has {problem}; {alternative}")


@dataclass(frozen=True)
class MentionedObject:
    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass
class Mentions:
    objects: list[MentionedObject] = field(default_factory=list)
    beeps: list[int] = field(default_factory=list)
    pitches: list[str] = field(default_factory=list)


def parse_caption(text: str) -> Mentions:
    """Mentioned objects and sound facts; tolerant of missing words and repetitions."""
    text = text.lower()
    mentions = Mentions()
    for size, colour, shape, position in _OBJECT.findall(text):
        mentions.objects.append(MentionedObject(shape, colour or None, size or None, position or None))
    for number, pitch in _SOUND.findall(text):
        if number:
            mentions.beeps.append(int(number) if number.isdigit() else NUMBER_WORDS.index(number))
        if pitch:
            mentions.pitches.append(pitch)
    return mentions


def caption_facts(scene: Scene, mentions: Mentions, kinds: Sequence[str] = ("image", "audio")) -> dict[str, int]:
    """Counts: `mentions`, `hallucinated`, `true_facts`, `covered`.

    `kinds`: the media the caption's example carried (ShapesWorld written with `modalities`);
    the facts of a kind it did not carry are not true facts, and stating them is hallucinating.
    """
    if "image" not in kinds or "audio" not in kinds:
        return _facts_of_kinds(scene, mentions, kinds)
    mentioned = hallucinated = covered = 0
    unmatched = list(scene.objects)
    for obj in mentions.objects:
        match = _match(obj, unmatched)
        attributes = [(obj.colour, "colour"), (obj.size, "size"), (obj.position, "position")]
        said = [(value, name) for value, name in attributes if value is not None]
        mentioned += 1 + len(said)
        if match is None:
            hallucinated += 1 + len(said)
            continue
        unmatched.remove(match)
        wrong = sum(1 for value, name in said if getattr(match, name) != value)
        hallucinated += wrong
        covered += 1 + len(said) - wrong
    for beeps in set(mentions.beeps):
        mentioned, hallucinated = mentioned + 1, hallucinated + int(beeps != scene.beeps)
        covered += int(beeps == scene.beeps)
    for pitch in set(mentions.pitches):
        mentioned, hallucinated = mentioned + 1, hallucinated + int(pitch != scene.pitch)
        covered += int(pitch == scene.pitch)
    true_facts = 4 * len(scene.objects) + 2
    return {"mentions": mentioned, "hallucinated": hallucinated, "true_facts": true_facts, "covered": min(covered, true_facts)}


def _facts_of_kinds(scene: Scene, mentions: Mentions, kinds: Sequence[str]) -> dict[str, int]:
    """`caption_facts` of an example with one media kind: the other kind's mentions are all hallucinated."""
    seen = caption_facts(scene, Mentions(mentions.objects if "image" in kinds else [],
                                         mentions.beeps if "audio" in kinds else [],
                                         mentions.pitches if "audio" in kinds else []))
    unseen = (0 if "image" in kinds else sum(1 + sum(v is not None for v in (o.colour, o.size, o.position))
                                             for o in mentions.objects)) + \
             (0 if "audio" in kinds else len(set(mentions.beeps)) + len(set(mentions.pitches)))
    true_facts = 4 * len(scene.objects) * ("image" in kinds) + 2 * ("audio" in kinds)
    return {"mentions": seen["mentions"] + unseen, "hallucinated": seen["hallucinated"] + unseen,
            "true_facts": true_facts, "covered": min(seen["covered"], true_facts)}


def example_kinds(example: Example) -> tuple[str, ...]:
    """The media kinds a ShapesWorld example was written with (`meta.modalities`, default both)."""
    return tuple(example.meta.get("modalities") or ("image", "audio"))


def answer_facts(example: Example, answer: str) -> dict[str, int]:
    """`caption_facts` of an answer to a ShapesWorld caption example."""
    return caption_facts(Scene.from_dict(example.meta["scene"]), parse_caption(answer), example_kinds(example))


def _match(obj: MentionedObject, candidates: list[Obj]) -> Obj | None:
    same_shape = [c for c in candidates if c.shape == obj.shape]
    for key in ("position", "colour"):
        preferred = [c for c in same_shape if getattr(obj, key) is not None and getattr(c, key) == getattr(obj, key)]
        if preferred:
            return preferred[0]
    return same_shape[0] if same_shape else None


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, single spaces; digits become number words."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in text.split()]
    return " ".join(words)


def score_shapes(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """Gold metrics over ShapesWorld examples; a metric whose group is empty is left out."""
    require_shapes_truth(examples, "the ShapesWorld gold metrics",
                         "evaluate your data with BLEU/ROUGE, a reward model or a judge")
    totals = {"mentions": 0, "hallucinated": 0, "true_facts": 0, "covered": 0}
    captions_hallucinating = n_captions = 0
    correct: dict[str, list[bool]] = {"vqa_image": [], "vqa_audio": [], "vqa_both": []}
    for example, answer in zip(examples, answers):
        task = example.meta.get("task")
        if task == "caption":
            facts = answer_facts(example, answer)
            for key in totals:
                totals[key] += facts[key]
            n_captions += 1
            captions_hallucinating += int(facts["hallucinated"] > 0)
        elif task in correct:
            correct[task].append(normalize_answer(answer) == normalize_answer(str(example.meta["answer"])))
    metrics: dict[str, float] = {"n_captions": float(n_captions)}
    if n_captions:
        metrics["hallucination_rate"] = totals["hallucinated"] / max(1, totals["mentions"])
        metrics["coverage"] = totals["covered"] / max(1, totals["true_facts"])
        metrics["caption_hallucinated_share"] = captions_hallucinating / n_captions
    every = [c for group in correct.values() for c in group]
    metrics["n_questions"] = float(len(every))
    if every:
        metrics["vqa_accuracy"] = sum(every) / len(every)
    for task, name in (("vqa_image", "image_vqa_accuracy"), ("vqa_audio", "audio_accuracy"), ("vqa_both", "both_accuracy")):
        if correct[task]:
            metrics[name] = sum(correct[task]) / len(correct[task])
    return metrics
