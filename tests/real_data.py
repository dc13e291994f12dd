"""A small dataset a new user might bring: real photos and a real recording, no ShapesWorld.

Images are crops of the photos that ship with scikit-learn (`load_sample_images`: a temple in
China, a flower) and matplotlib (`grace_hopper.jpg`, a portrait); the audio is CPython's own test
recording of a plucked string (`test/audiodata/pluck-pcm16.wav`: 11025 Hz stereo, 0.3 s), repeated
one to three times with gaps. Questions are ones whose answer the media really decide:

- caption: "describe the photo." -> which photo the crop comes from, and its dominant colour;
- vqa: "what is the main colour of this photo?" -> the crop's dominant colour (`meta.answer`);
- audio: "how many plucks do you hear?" -> one / two / three (`meta.answer`).

Everything is returned as rows of a Hugging Face `datasets.Dataset` with inline PIL images and
audio arrays, as datasets on the Hub hold them; nothing is written in modalign's own format.
"""

from __future__ import annotations

import os
import random
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES = ("temple", "flower", "portrait")
COUNT_WORDS = ("one", "two", "three")
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 200, 50),
           "white": (235, 235, 235), "black": (20, 20, 20), "grey": (128, 128, 128), "brown": (130, 80, 40)}


def photos() -> dict[str, Image.Image]:
    """The three real photos, by name."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    temple, flower = load_sample_images().images  # (427, 640, 3) uint8 each
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        portrait = Image.open(handle).convert("RGB")
    return {"temple": Image.fromarray(temple), "flower": Image.fromarray(flower), "portrait": portrait}


def pluck() -> tuple[np.ndarray, int]:
    """CPython's recording of a plucked string: (samples, channels) float32 and its sample rate."""
    import soundfile

    path = Path(sysconfig.get_paths()["stdlib"]) / "test" / "audiodata" / "pluck-pcm16.wav"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CPython's test recordings are missing from this Python install")
    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return wave, rate


def dominant_colour(image: Image.Image) -> str:
    """The named colour nearest to the crop's median pixel."""
    median = np.median(np.asarray(image, dtype=np.float32).reshape(-1, 3), axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((median - np.array(COLOURS[name])) ** 2)))


def crops(image: Image.Image, count: int, size: int, rng: random.Random) -> list[Image.Image]:
    """`count` random square crops of side `size` (real photo content, not a resize of the whole)."""
    width, height = image.size
    out = []
    for _ in range(count):
        left, top = rng.randrange(0, width - size), rng.randrange(0, height - size)
        out.append(image.crop((left, top, left + size, top + size)))
    return out


def plucks(times: int, rate: int, wave: np.ndarray) -> np.ndarray:
    """The recording `times` times, 0.1 s of silence between: (samples, channels)."""
    gap = np.zeros((int(0.1 * rate), wave.shape[1]), dtype=wave.dtype)
    parts = [part for _ in range(times) for part in (wave, gap)][:-1]
    return np.concatenate(parts)


def _user(parts: list[dict], text: str) -> dict:
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def rows(crops_per_photo: int = 6, audio_per_count: int = 3, size: int = 96, seed: int = 0) -> list[dict]:
    """Rows with columns id, messages, images (PIL), audios ({"array", "sampling_rate"}), task, answer."""
    rng = random.Random(seed)
    out: list[dict] = []
    for name, photo in photos().items():
        for index, crop in enumerate(crops(photo, crops_per_photo, size, rng)):
            colour = dominant_colour(crop)
            out.append(dict(id=f"{name}-{index}-caption", task="caption", answer=None, images=[crop], audios=[],
                            messages=[_user([{"type": "image"}], "describe the photo."),
                                      _assistant(f"a {colour} part of a {name} photo.")]))
            out.append(dict(id=f"{name}-{index}-colour", task="vqa", answer=colour, images=[crop], audios=[],
                            messages=[_user([{"type": "image"}], "what is the main colour of this photo?"),
                                      _assistant(colour)]))
    wave, rate = pluck()
    for times, word in enumerate(COUNT_WORDS, start=1):
        for index in range(audio_per_count):
            clip = plucks(times, rate, wave) * (0.6 + 0.4 * rng.random())  # a different loudness each
            out.append(dict(id=f"pluck-{word}-{index}", task="audio", answer=word, images=[],
                            audios=[{"array": clip.T.copy(), "sampling_rate": rate}],
                            messages=[_user([{"type": "audio"}], "how many plucks do you hear?"),
                                      _assistant(word)]))
    return out


def hf_dataset(**kwargs):
    """The rows as a `datasets.Dataset` (images as the `Image` feature, decoded to PIL when read)."""
    import datasets

    table = rows(**kwargs)
    return datasets.Dataset.from_list(table).cast_column("images", datasets.Sequence(datasets.Image()))


def split_ids(table: list[dict], test_share: float = 0.25, seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and test ids, stratified by task."""
    rng = random.Random(seed)
    train, test = [], []
    for task in sorted({row["task"] for row in table}):
        ids = [row["id"] for row in table if row["task"] == task]
        rng.shuffle(ids)
        cut = max(1, round(len(ids) * test_share))
        test += ids[:cut]
        train += ids[cut:]
    return train, test


if __name__ == "__main__":  # a look at what the dataset holds
    for row in rows():
        print(row["id"], row["task"], row["answer"], [m["content"][-1]["text"] for m in row["messages"]])
    print(os.linesep.join(f"{k}: {v.size}" for k, v in photos().items()))


def write_preferences(folder: str | Path, table: list[dict], seed: int = 0) -> Path:
    """TRL preference rows for `table`'s rows, as a labelling tool would export them: `folder/pairs.jsonl`
    with media paths relative to that file (`img/<id>.png`, `audio/<id>.wav`). Chosen is the reference
    answer; rejected names another photo, colour or count."""
    import json

    import soundfile

    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in table:
        user, answer = row["messages"][0], row["messages"][1]["content"][0]["text"]
        images = []
        for index, image in enumerate(row["images"]):
            images.append(f"img/{row['id']}-{index}.png")
            image.save(folder / images[-1])
        audios = []
        for index, clip in enumerate(row["audios"]):
            audios.append(f"audio/{row['id']}-{index}.wav")
            soundfile.write(folder / audios[-1], np.asarray(clip["array"]).T, clip["sampling_rate"])
        lines.append({"id": row["id"], "prompt": [user], "images": images, "audios": audios,
                      "chosen": [_assistant(answer)], "rejected": [_assistant(_wrong(answer, rng))]})
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _wrong(answer: str, rng: random.Random) -> str:
    """The answer with its colour, photo name or count word swapped for another."""
    for group in (tuple(COLOURS), PHOTO_NAMES, COUNT_WORDS):
        for word in group:
            if word in answer.split() or word + "." in answer.split():
                return answer.replace(word, rng.choice([w for w in group if w != word]), 1)
    return answer + " and a dog"
