"""Rendering a scene to an RGB image with PIL."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from modalign.data.shapes.world import POSITIONS, Obj, Scene

RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
BACKGROUND = (200, 200, 200)
SIZE_FRACTION = {"small": 0.16, "large": 0.28}  # of the image side


def render_image(scene: Scene, size: int = 48, rng: random.Random | None = None) -> Image.Image:
    """Light-grey canvas; each object centred in its column with a small vertical jitter."""
    rng = rng or random.Random(0)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    column = size / len(POSITIONS)
    for obj in scene.objects:
        extent = SIZE_FRACTION[obj.size] * size
        cx = column * (POSITIONS.index(obj.position) + 0.5)
        cy = size / 2 + rng.uniform(-0.15, 0.15) * size
        _draw(draw, obj, cx, cy, extent / 2)
    return image


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, cx: float, cy: float, half: float) -> None:
    box = (cx - half, cy - half, cx + half, cy + half)
    colour = RGB[obj.colour]
    if obj.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif obj.shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
