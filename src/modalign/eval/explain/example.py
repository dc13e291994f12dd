"""Every attribution of one example, and the model it is asked of.

`load_target` opens a reward-model folder (it holds `scalar_head.safetensors`) or a policy folder;
`explain_example` runs the asked methods on one subject and returns a JSON-ready dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from modalign.eval.explain.modality import ablation, integrated_gradients
from modalign.eval.explain.regions import audio_occlusion, image_occlusion
from modalign.eval.explain.target import ExplainError, Subject, Target
from modalign.eval.explain.tokens import token_credit

METHODS = ("ablation", "ig", "occlusion", "audio", "tokens")
# the modality each method needs from the model (and, per example, from its media)
NEEDS = {"occlusion": "image", "audio": "audio"}


def load_target(folder: str | Path, head: str = "", token: int = -1) -> tuple[Target, Any]:
    """(Target, processor) of a reward model or a policy folder."""
    from modalign.models.policy import load_policy
    from modalign.reward.model import HEAD_FILE, ScalarHeadModel

    folder = Path(folder)
    if (folder / HEAD_FILE).is_file():
        model = ScalarHeadModel.load(folder)
        if head and head not in model.head_names:
            raise ExplainError(f"head={head!r}: the reward model {folder} has heads {', '.join(model.head_names)}")
        index = model.head_names.index(head) if head else 0
        processor = load_policy_processor(folder)
        return Target(model, "reward", head=index), processor
    if head:
        raise ExplainError(f"head={head!r} is for reward models; {folder} is a policy (no {HEAD_FILE})")
    policy = load_policy(folder)
    return Target(policy.model, "policy", token=None if token < 0 else token), policy.processor


def load_policy_processor(folder: Path):
    from modalign.models.policy import load_processor

    return load_processor(folder)


def model_modalities(processor) -> set[str]:
    """The media kinds the model's processor takes (an image processor, an audio feature extractor)."""
    kinds = set()
    if getattr(processor, "image_processor", None) is not None:
        kinds.add("image")
    if getattr(processor, "feature_extractor", None) is not None or getattr(processor, "audio_processor", None):
        kinds.add("audio")
    return kinds


def check_methods(methods: Sequence[str], processor, model_name: str) -> None:
    """One clear error for an unknown method or one the model cannot take (no audio encoder asked for audio)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ExplainError(f"methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if not methods:
        raise ExplainError(f"methods: name at least one of {', '.join(METHODS)}")
    kinds = model_modalities(processor)
    for method in methods:
        if method in NEEDS and NEEDS[method] not in kinds:
            raise ExplainError(f"methods: {method} attributes the {NEEDS[method]}, but {model_name} has no "
                               f"{NEEDS[method]} input (its processor takes {', '.join(sorted(kinds)) or 'text only'}); "
                               f"drop {method} from methods")


def explain_example(target: Target, subject: Subject, processor, methods: Sequence[str], grid: int = 3,
                    audio_windows: int = 10, ig_steps: int = 16, others: Sequence[Subject] = (),
                    contrast: Subject | None = None, occlusion_fill: str = "mean",
                    occlusion_others: Sequence[Subject] = ()) -> dict[str, Any]:
    """The asked attributions of one subject; a method whose media the example lacks is skipped (and said).

    `others`: other subjects whose media are the ablation's baseline (`modality.ablation`); none: blank/silent.
    `contrast`: the same example with another answer: the occlusion heatmap is of the score difference;
    `occlusion_fill`: what an occluded cell shows (`regions.IMAGE_BASELINES`); with `others`, the same cell of
    `occlusion_others`' images in turn.
    """
    target.check_token(subject)
    tokenizer = processor.tokenizer
    out: dict[str, Any] = {"example_id": subject.example_id, "answer": subject.answer, "target": target.describe(),
                           "modalities": subject.modalities(), "skipped": {}}
    present = set(subject.modalities())
    for method in methods:
        if method in NEEDS and NEEDS[method] not in present:
            out["skipped"][method] = f"the example has no {NEEDS[method]}"
        elif method == "ablation":
            out["ablation"] = ablation(target, subject, tokenizer.pad_token_id, others)
        elif method == "ig":
            out["ig"] = integrated_gradients(target, subject, tokenizer.pad_token_id, ig_steps)
        elif method == "occlusion":
            out["occlusion"] = image_occlusion(target, subject, grid, fill=occlusion_fill, contrast=contrast,
                                                others=occlusion_others)
        elif method == "audio":
            out["audio"] = audio_occlusion(target, subject, audio_windows)
        elif method == "tokens":
            out["tokens"] = token_credit(target, subject, tokenizer)
    return out
