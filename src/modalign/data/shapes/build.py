"""Writing a ShapesWorld dataset in the JSONL + media-folder format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import soundfile

from modalign.data.dataset import write_examples
from modalign.data.records import Example, MediaRef, assistant_turn, user_turn
from modalign.data.shapes.audio import synth_audio
from modalign.data.shapes.language import ALL_KINDS, CAPTION_PROMPT, caption, noisy_caption, questions, references
from modalign.data.shapes.render import render_image
from modalign.data.shapes.world import Scene, sample_scene


def make_examples(
    scene: Scene, scene_id: str, image_path: str, audio_path: str, rng: random.Random,
    caption_noise: float = 0.0, questions_per_scene: int = 4, kinds: tuple[str, ...] = ALL_KINDS,
) -> list[Example]:
    """One caption example and `questions_per_scene` questions, each with the image and the audio.

    `kinds` ('image' and/or 'audio'): the media the examples carry; captions state only what they
    can perceive, questions only ask what they can answer, and `meta.modalities` records the kinds.
    """
    media = tuple(ref for ref in (MediaRef("image", image_path), MediaRef("audio", audio_path)) if ref.kind in kinds)
    n_image, n_audio = int("image" in kinds), int("audio" in kinds)
    base = {"world": "shapes", "scene": scene.to_dict(), "scene_id": scene_id}
    if kinds != ALL_KINDS:
        base["modalities"] = list(kinds)
    target, noisy = caption(scene, kinds), None
    if caption_noise and rng.random() < caption_noise:
        target, noisy = noisy_caption(scene, rng, kinds)
    out = [Example(
        id=f"{scene_id}-caption",
        messages=(user_turn(CAPTION_PROMPT, n_image, n_audio), assistant_turn(target)),
        media=media,
        meta={**base, "task": "caption", "answer": caption(scene, kinds), "references": references(scene, kinds),
              "noisy": noisy},
    )]
    for index, (task, question, answer) in enumerate(questions(scene, rng, questions_per_scene, kinds)):
        out.append(Example(
            id=f"{scene_id}-q{index}",
            messages=(user_turn(question, n_image, n_audio), assistant_turn(answer)),
            media=media,
            meta={**base, "task": task, "answer": answer, "noisy": None},
        ))
    return out


def build_shapes_dataset(
    root: str | Path, n_train: int, n_test: int, seed: int = 0, caption_noise: float = 0.0,
    questions_per_scene: int = 4, image_size: int = 48, sample_rate: int = 16000, modalities: str = "",
) -> Path:
    """Generate `root/{train,test}.jsonl` and their media; the same arguments give the same bytes.

    `modalities` ('' for both, 'image' or 'audio'): write only those media, captions and questions.

    `caption_noise` corrupts that share of the train captions only; test targets are clean,
    and no test scene equals a train scene.
    """
    from modalign.data.modalities import parse_modalities

    root, kinds = Path(root), parse_modalities(modalities)
    seen: set[str] = set()
    for split, count, noise in (("train", n_train, caption_noise), ("test", n_test, 0.0)):
        rng = random.Random(f"shapes-{seed}-{split}")
        examples: list[Example] = []
        while len(examples) < count * (1 + questions_per_scene):
            scene = sample_scene(rng)
            key = json.dumps(scene.to_dict(), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            scene_id = f"{split}-{len(examples) // (1 + questions_per_scene):05d}"
            image_path, audio_path = f"media/img/{scene_id}.png", f"media/audio/{scene_id}.wav"
            _write_media(root, scene, image_path, audio_path, rng, image_size, sample_rate, kinds)
            examples += make_examples(scene, scene_id, image_path, audio_path, rng, noise, questions_per_scene, kinds)
        write_examples(root, split, examples)
    settings = {"world": "shapes", "seed": seed, "n_train": n_train, "n_test": n_test, "caption_noise": caption_noise,
                "questions_per_scene": questions_per_scene, "image_size": image_size, "sample_rate": sample_rate}
    if kinds != ALL_KINDS:
        settings["modalities"] = list(kinds)
    (root / "world.json").write_text(json.dumps(settings, indent=2))
    return root


def _write_media(root: Path, scene: Scene, image_path: str, audio_path: str, rng: random.Random,
                 image_size: int, sample_rate: int, kinds: tuple[str, ...] = ALL_KINDS) -> None:
    if "image" in kinds:
        (root / image_path).parent.mkdir(parents=True, exist_ok=True)
        render_image(scene, image_size, rng).save(root / image_path, format="PNG")
    if "audio" in kinds:
        (root / audio_path).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / audio_path, synth_audio(scene, sample_rate, 1.0, rng), sample_rate, subtype="PCM_16")
