"""A six-example dataset that is not ShapesWorld: images, audio, text only, three tasks, `meta.answer`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

from modalign.data.dataset import write_examples
from modalign.data.records import Example, MediaRef

# (id, task, media kinds, question, meta.answer, reference answer)
ROWS = [
    ("q1", "vqa", ("image",), "how many dogs?", "two", "two"),
    ("q2", "vqa", ("image",), "what colour is the car?", "red", "red"),
    ("q3", "vqa", ("audio",), "what animal is heard?", "a dog", "a dog"),
    ("c1", "caption", ("image", "audio"), "describe the scene.", "a red circle", "a red circle"),
    ("c2", "caption", ("image",), "describe the picture.", "a blue square", "a blue square"),
    ("n1", "count", (), "how many is 1 + 2?", ["3", "three"], "3"),
]


def six_examples() -> list[Example]:
    """The six examples; media paths point into `media/` of the folder `write_six` writes."""
    examples = []
    for example_id, task, kinds, question, answer, reference in ROWS:
        content = [{"type": kind} for kind in kinds] + [{"type": "text", "text": question}]
        media = tuple(MediaRef(kind, f"media/{example_id}.{'png' if kind == 'image' else 'wav'}") for kind in kinds)
        messages = ({"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": reference}]})
        examples.append(Example(example_id, messages, media, {"task": task, "answer": answer}))
    return examples


def write_six(root: Path) -> Path:
    """The dataset folder: test.jsonl plus a 48x48 PNG per image and a 0.5 s 16 kHz WAV per clip."""
    rng = np.random.default_rng(0)
    (root / "media").mkdir(parents=True, exist_ok=True)
    examples = six_examples()
    for example in examples:
        for ref in example.media:
            if ref.kind == "image":
                Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / ref.path)
            else:
                tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
                soundfile.write(root / ref.path, tone, 16000, subtype="PCM_16")
    write_examples(root, "test", examples)
    return root
