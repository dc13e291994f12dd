"""The text side of ShapesWorld: captions, questions, hallucinated captions, references."""

from __future__ import annotations

import random

from typing import Sequence

from modalign.data.shapes.world import COLOURS, MAX_BEEPS, NUMBER_WORDS, PITCHES, POSITIONS, SHAPES, SIZES, Obj, Scene

ALL_KINDS = ("image", "audio")
# The media kinds each task needs (a dataset written with fewer kinds leaves the others out).
TASK_KINDS = {"caption": (), "vqa_image": ("image",), "vqa_audio": ("audio",), "vqa_both": ("image", "audio")}

CAPTION_PROMPT = "describe the scene."
NOISE_KINDS = ("extra_object", "wrong_colour", "wrong_beeps", "wrong_pitch")


def where(position: str) -> str:
    """'on the left', 'in the middle', 'on the right'."""
    return f"{'in' if position == 'middle' else 'on'} the {position}"


def object_phrase(obj: Obj) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {where(obj.position)}"


def sound_phrase(beeps: int, pitch: str) -> str:
    return f"{NUMBER_WORDS[beeps]} {pitch} beep{'s' if beeps != 1 else ''}."


def caption(scene: Scene, kinds: Sequence[str] = ALL_KINDS) -> str:
    """Canonical caption: objects left to right, then the sound (only what `kinds` can perceive)."""
    return _render(scene.objects, scene.beeps, scene.pitch, kinds)


def _render(objects: Sequence[Obj], beeps: int, pitch: str, kinds: Sequence[str]) -> str:
    parts = [", ".join(object_phrase(o) for o in objects) + "."] if "image" in kinds else []
    parts += [sound_phrase(beeps, pitch)] if "audio" in kinds else []
    return " ".join(parts)


def references(scene: Scene, kinds: Sequence[str] = ALL_KINDS) -> list[str]:
    """Valid captions for BLEU / ROUGE: canonical, sound first, and objects right to left."""
    if "image" not in kinds or "audio" not in kinds:  # one part: the two orders are one caption
        reverse = _render(tuple(reversed(scene.objects)), scene.beeps, scene.pitch, kinds)
        return list(dict.fromkeys([caption(scene, kinds), reverse]))
    objects = ", ".join(object_phrase(o) for o in scene.objects)
    reverse = ", ".join(object_phrase(o) for o in reversed(scene.objects))
    sound = sound_phrase(scene.beeps, scene.pitch)
    return [caption(scene), f"{sound} {objects}.", f"{reverse}. {sound}"]


def noisy_caption(scene: Scene, rng: random.Random, kinds: Sequence[str] = ALL_KINDS) -> tuple[str, str]:
    """A caption with exactly one hallucination, as noisy web captions have; returns (text, kind).

    With fewer `kinds` the hallucination is one the caption can state (no wrong beeps in an image-only caption).
    """
    noise = NOISE_KINDS if tuple(kinds) == ALL_KINDS else [
        k for k in NOISE_KINDS if ("image" in kinds) == (k in ("extra_object", "wrong_colour"))]
    kind = rng.choice(noise)
    objects, beeps, pitch = list(scene.objects), scene.beeps, scene.pitch
    if kind == "extra_object":
        free = [p for p in POSITIONS if scene.at(p) is None]
        position = rng.choice(free) if free else rng.choice(POSITIONS)
        present = {o.shape for o in objects}
        absent = [s for s in SHAPES if s not in present] or list(SHAPES)
        objects.append(Obj(rng.choice(absent), rng.choice(COLOURS), rng.choice(SIZES), position))
        objects.sort(key=lambda o: POSITIONS.index(o.position))
    elif kind == "wrong_colour":
        index = rng.randrange(len(objects))
        old = objects[index]
        objects[index] = Obj(old.shape, rng.choice([c for c in COLOURS if c != old.colour]), old.size, old.position)
    elif kind == "wrong_beeps":
        beeps = rng.choice([n for n in range(1, MAX_BEEPS + 1) if n != beeps])
    else:
        pitch = next(p for p in PITCHES if p != pitch)
    return _render(objects, beeps, pitch, kinds), kind


def questions(scene: Scene, rng: random.Random, count: int,
              kinds: Sequence[str] = ALL_KINDS) -> list[tuple[str, str, str]]:
    """`count` (task, question, answer) triples: ~50% image, ~30% audio, ~20% both (of those `kinds` can answer)."""
    makers = [(_image_question, 0.5), (_audio_question, 0.3), (_both_question, 0.2)]
    if tuple(kinds) != ALL_KINDS:
        needs = {_image_question: "vqa_image", _audio_question: "vqa_audio", _both_question: "vqa_both"}
        makers = [(m, w) for m, w in makers if set(TASK_KINDS[needs[m]]) <= set(kinds)]
    out = []
    for _ in range(count):
        maker = rng.choices([m for m, _ in makers], weights=[w for _, w in makers])[0]
        out.append(maker(scene, rng))
    return out


def _image_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    unique = [o for o in scene.objects if len(scene.with_shape(o.shape)) == 1]
    kinds = ["count", "shape_at", "exists", "colour_at"]
    if unique:
        kinds += ["colour_of", "size_of"]
    kind = rng.choice(kinds)
    if kind == "count":
        return "vqa_image", "how many shapes are there?", NUMBER_WORDS[len(scene.objects)]
    if kind == "shape_at":
        position = rng.choice(POSITIONS)
        obj = scene.at(position)
        return "vqa_image", f"what shape is {where(position)}?", obj.shape if obj else "nothing"
    if kind == "colour_at":
        obj = rng.choice(scene.objects)
        return "vqa_image", f"what colour is the shape {where(obj.position)}?", obj.colour
    if kind == "exists":
        if rng.random() < 0.5:
            obj = rng.choice(scene.objects)
            colour, shape = obj.colour, obj.shape
        else:
            colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        present = any(o.colour == colour and o.shape == shape for o in scene.objects)
        return "vqa_image", f"is there a {colour} {shape}?", "yes" if present else "no"
    obj = rng.choice(unique)
    if kind == "colour_of":
        return "vqa_image", f"what colour is the {obj.shape}?", obj.colour
    return "vqa_image", f"what size is the {obj.shape}?", obj.size


def _audio_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        return "vqa_audio", "how many beeps are there?", NUMBER_WORDS[scene.beeps]
    return "vqa_audio", "are the beeps high or low?", scene.pitch


def _both_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    shapes, beeps = len(scene.objects), scene.beeps
    if rng.random() < 0.5:
        return "vqa_both", "are there as many beeps as shapes?", "yes" if shapes == beeps else "no"
    return "vqa_both", "are there more beeps than shapes?", "yes" if beeps > shapes else "no"
