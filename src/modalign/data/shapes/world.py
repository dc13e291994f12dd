"""ShapesWorld scenes: 1-3 coloured shapes in three column slots, and a sound of beeps.

The image and the audio carry different facts: only the image shows the shapes, only
the audio tells how many beeps there are and how high they sound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
POSITIONS = ("left", "middle", "right")
PITCHES = ("low", "high")
MAX_BEEPS = 3
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Obj:
    """One shape of a scene."""

    shape: str
    colour: str
    size: str
    position: str

    def to_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position}


@dataclass(frozen=True)
class Scene:
    """The ground truth of one example: objects left to right, and the beeps."""

    objects: tuple[Obj, ...]
    beeps: int
    pitch: str

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects], "beeps": self.beeps, "pitch": self.pitch}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Scene":
        objects = tuple(Obj(**o) for o in raw["objects"])
        return cls(objects=objects, beeps=int(raw["beeps"]), pitch=str(raw["pitch"]))

    def at(self, position: str) -> Obj | None:
        return next((o for o in self.objects if o.position == position), None)

    def with_shape(self, shape: str) -> list[Obj]:
        return [o for o in self.objects if o.shape == shape]


def sample_scene(rng: random.Random) -> Scene:
    """1-3 objects in distinct column slots (so 'the shape on the left' is unambiguous)."""
    count = rng.randint(1, len(POSITIONS))
    slots = sorted(rng.sample(range(len(POSITIONS)), count))
    objects = tuple(
        Obj(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), POSITIONS[slot]) for slot in slots
    )
    return Scene(objects=objects, beeps=rng.randint(1, MAX_BEEPS), pitch=rng.choice(PITCHES))
