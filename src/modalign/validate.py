"""Checks of a command's input, run before its run folder exists.

Recipes call these in their first lines: a mistake in the data (both splits, every media
file), the policy, the reward or the feedback store ends as one `error:` line naming the file,
record or config key, and leaves no run folder behind, so the corrected command runs with the
same `--out`. Each check raises a `UserError` (or its kin `ConfigError`, `RecordError`,
`MediaError`) and returns what it read, so the recipe does not read it twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from modalign.config import ConfigError
from modalign.data.media import MediaError
from modalign.data.records import Example, RecordError, message_text
from modalign.errors import UserError, first_line

# The built-in model's media markers: typed into a message's text they would be read as media
# placeholders and no longer match the record's media files.
MEDIA_MARKERS = {"<image>": "image", "<audio>": "audio"}
POLICY_FILES = ("config.json", "adapter_config.json")  # a saved model, or a `peft` LoRA adapter


# ---- run folders -----------------------------------------------------------------------------
def check_new_run(out: str | Path, dist: Any = None) -> Path:
    """`out` as a Path, unless it already holds a run (starting over there would mix two runs).

    `dist` (`modalign.dist.Processes`): the main process's view for all, so that every process stops
    alike (none left waiting for the main one), before the main process creates the folder.
    """
    path = Path(out)
    held = (path / "config.yaml").is_file()
    if dist.broadcast(held) if dist is not None else held:  # FileExistsError, as `RunDir.create` raises it
        raise FileExistsError(f"{path} already holds a run: continue it with --resume {path} or pick another --out")
    return path


def resume_status(folder: str | Path) -> str:
    """'finished' for a run that wrote summary.json, 'resumable' for one with a checkpoint; else an error."""
    from modalign.runs import RunDir

    path = Path(folder)
    if not (path / "config.yaml").is_file():
        raise UserError(f"--resume {path}: not a run folder (no config.yaml)")
    if (path / "summary.json").is_file():
        return "finished"
    if RunDir(path).latest_checkpoint() is None:
        raise UserError(f"--resume {path}: the run has no checkpoint to continue from (it stopped before its "
                        f"first one); start it again with another --out")
    return "resumable"


# ---- data --------------------------------------------------------------------------------------
def read_split(root: str | Path, split: str, key: str = "data", modalities: str = "") -> list[Example]:
    """Every example of `root/<split>.jsonl` (only the `modalities` media kinds, `data.modalities`), with no
    literal media marker in their text; none is an error."""
    from modalign.data.dataset import read_examples, split_path

    if not str(root):
        raise ConfigError(f"{key} is empty: set it to a dataset folder")
    if not Path(root).is_dir():
        raise UserError(f"{key}: dataset folder {root} does not exist")
    where = split_path(root, split)
    try:
        examples = read_examples(root, split, modalities)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    if not examples:
        raise UserError(f"{where} holds no examples")
    check_text(examples, where)
    return examples


def select_task(examples: Sequence[Example], task: str, where: str | Path, key: str = "task") -> list[Example]:
    """The examples whose meta.task is `task` ('' keeps all); a task no example has is an error listing those it has."""
    if not task:
        return list(examples)
    chosen = [e for e in examples if e.meta.get("task") == task]
    if not chosen:
        tasks = sorted({str(e.meta["task"]) for e in examples if "task" in e.meta})
        found = f"the tasks it has: {', '.join(tasks)}" if tasks else "no record has meta.task"
        raise ConfigError(f"{key}={task!r}: no example of {where} has meta.task {task!r} ({found}); "
                          f"set {key}='' for all examples")
    return chosen


def check_text(examples: Sequence[Example], where: str | Path) -> None:
    """No message text holds a literal `<image>`/`<audio>`: media go in placeholder parts, one per file."""
    for example in examples:
        for index, message in enumerate(example.messages):
            text = message_text(message)
            for marker, kind in MEDIA_MARKERS.items():
                if marker in text:
                    raise RecordError(f"{where}: record {example.id!r}: messages[{index}] text holds a literal "
                                      f"{marker}; put a {{'type': '{kind}'}} part in 'content' (one per file in "
                                      f"'media') instead of typing the marker")


def check_answers(examples: Sequence[Example], where: str | Path, needed_by: str = "SFT") -> None:
    """Every example ends with the assistant's answer (what SFT, or `needed_by`, trains on)."""
    for example in examples:
        if example.answer is None:
            raise RecordError(f"{where}: record {example.id!r} has no answer: {needed_by} needs its last message "
                              f"to be the assistant's")


def check_media(root: str | Path, examples: Sequence[Example], where: str | Path) -> dict[tuple[str, str], float]:
    """Decode every image and audio file of `examples` as training will; returns each clip's seconds by (record, path).

    A corrupt test image fails here, not after training.
    """
    from modalign.data.media import load_audio, load_image

    seconds: dict[tuple[str, str], float] = {}
    seen: set[str] = set()
    for example in examples:
        for ref in example.media:
            if ref.path in seen:
                continue
            seen.add(ref.path)
            try:
                if ref.kind == "image":
                    load_image(ref, root, example.id)
                else:
                    seconds[(example.id, ref.path)] = len(load_audio(ref, root, example.id)) / 16000
            except MediaError as err:
                raise MediaError(f"{where}: {err}") from None
    return seconds


def check_dataset(root: str | Path, splits: Sequence[str], task: str = "", answers: Sequence[str] = (),
                  key: str = "data", modalities: str = "") -> dict[str, list[Example]]:
    """Read `splits` of `root` (each filtered to `task`), check their text, and that the examples of the
    `answers` splits end with an answer (what SFT trains on).

    Returns {split: examples}; `check_dataset_media` then decodes their media.
    """
    from modalign.data.dataset import split_path

    found: dict[str, list[Example]] = {}
    for split in dict.fromkeys(splits):  # a split named twice is read once
        where = split_path(root, split)
        examples = select_task(read_split(root, split, key, modalities), task, where)
        if split in answers:
            check_answers(examples, where)
        found[split] = examples
    return found


def check_dataset_media(root: str | Path, splits: dict[str, list[Example]]) -> dict[tuple[str, str], float]:
    """`check_media` over every split read by `check_dataset`; the clips' seconds by (record, path)."""
    from modalign.data.dataset import split_path

    seconds: dict[tuple[str, str], float] = {}
    for split, examples in splits.items():
        seconds |= check_media(root, examples, split_path(root, split))
    return seconds


def check_audio_window(seconds: dict[tuple[str, str], float], processor: Any, key: str = "policy") -> None:
    """Every clip fits the policy's audio window, for a processor that has one (the built-in model's) and
    does not cut longer clips (`audio_overflow=truncate` gives `max_seconds` None)."""
    extractor = getattr(processor, "feature_extractor", None)
    samples, rate = getattr(extractor, "num_samples", None), getattr(extractor, "sampling_rate", None)
    if not samples or not rate or getattr(extractor, "max_seconds", samples / rate) is None:
        return
    window = samples / rate
    for (record, path), length in seconds.items():
        if length > window + 1e-6:
            raise MediaError(f"record {record!r}: audio {path} is {length:.2f} s, the {key} reads at most {window:g} s "
                             f"(set audio_seconds, or audio_overflow=truncate, when training the built-in model)")


def check_fast_path(policy: Any, examples: Sequence[Example], media: Any) -> dict:
    """The load-time self-check of a Hugging Face policy (`models.hf.self_check`): on the first examples its
    fast path (cached media features, shared prompt cache, packing) must give the model's own log-probs and
    greedy answers, or the policy falls back to the generic path. Returns the record for `self_check.json`."""
    from modalign.models.hf.self_check import self_check
    from modalign.ui import console

    record = self_check(policy, examples, media)
    check = record["self_check"]
    if check["path"] != "builtin":
        console.print(f"self-check: {check['path']} path (max |log-prob difference| {check['max_abs_diff']:.2g}, "
                      f"tolerance {check['tolerance']:g})", highlight=False)
    return record


def load_policy_for(location: str, examples: Sequence[Example], media: Any,
                    audio_seconds: dict[tuple[str, str], float], device: Any = "cpu") -> tuple[Any, dict]:
    """The policy, loaded and checked against the data before any copy of it is made (reference, critic): its
    audio window (`check_audio_window`) and, on `device` (where it is moved), its fast path (`check_fast_path`).
    Returns (policy, self-check record)."""
    policy = load_checked_policy(location)
    check_audio_window(audio_seconds, policy.processor)
    policy.model.to(device)
    return policy, check_fast_path(policy, examples, media)


# ---- policy, reward, store ----------------------------------------------------------------------
def check_policy(location: str, key: str = "policy") -> None:
    """Fail fast on a policy that cannot load: empty, a folder without config.json, a mistyped folder, or a
    hub id that is neither cached nor reachable (offline)."""
    if not location:
        raise ConfigError(f"{key} is empty: set it to a saved policy folder or hub id")
    path = Path(location)
    if path.exists():
        if not path.is_dir() or not any((path / name).is_file() for name in POLICY_FILES):
            raise UserError(f"{key} {location!r}: {path} has no config.json: not a saved model")
        return
    if not _hub_id_loadable(location):
        raise UserError(f"{key} {location!r}: no such folder, and it is not a hub id that can be loaded offline")


def _hub_id_loadable(name: str) -> bool:
    """A well-formed hub id that is cached, or that the hub may serve (not in offline mode)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    if any(isinstance(try_to_load_from_cache(name, file), str) for file in POLICY_FILES):
        return True
    return not constants.HF_HUB_OFFLINE


def load_checked_policy(location: str, key: str = "policy", dtype: Any = None):
    """`load_policy` after `check_policy`; a model that cannot load (e.g. an unsupported architecture,
    or a hub id with no network) is one error naming `key` and the folder."""
    from modalign.models.policy import load_policy

    check_policy(location, key)
    try:
        return load_policy(location, dtype)
    except (ValueError, OSError) as err:
        if isinstance(err, UserError):
            raise
        if not Path(location).exists():
            raise UserError(f"{key} {location!r}: no such folder, and it is not a hub id that can be loaded "
                            f"offline ({first_line(err)})") from err
        raise UserError(f"{key} {location!r}: cannot be loaded: {first_line(err)}") from err


def check_reward(spec: str, examples: Sequence[Example] = (), key: str = "reward_model"):
    """The reward source of `spec` (loaded: a reward model's folder is read here), after checking that it can
    score `examples` (`rl.rewards.check_reward`: ShapesWorld rules need ShapesWorld ground truth, `py:`
    functions load); a bad spec names `key`."""
    from modalign.rl.rewards import check_reward as check_terms
    from modalign.rl.rewards import reward_source_from

    if not spec.strip():
        raise ConfigError(f"{key} is empty: set it to a reward-model folder, rule:<name>, py:<file.py>:<function> "
                          f"or a weighted sum of those")
    check_terms(spec, examples, key)
    try:
        return reward_source_from(spec)
    except UserError:
        raise
    except (ValueError, OSError) as err:
        raise ConfigError(f"{key}={spec!r}: {first_line(err)}") from None


def check_store(location: str, min_votes: int = 1, decided: bool = False, key: str = "store") -> int:
    """The number of preference pairs in a feedback store (an SQLAlchemy URL, a feedback.db, or a folder holding
    one) or of rows in a TRL preference .jsonl; none is an error.

    `decided`: count only pairs with a winner (DPO leaves ties out).
    """
    if not location:
        raise ConfigError(f"{key} is empty: set it to a feedback store (a feedback.db path or an SQLAlchemy URL) "
                          f"or a TRL preference .jsonl")
    if Path(location).is_dir():  # a folder `modalign import` wrote
        if not (Path(location) / "feedback.db").is_file():
            raise FileNotFoundError(f"{key} {location!r}: the folder holds no feedback.db")
        location = str(Path(location) / "feedback.db")
    if "://" not in location and not Path(location).is_file():
        raise FileNotFoundError(f"{key} {location!r}: no such file (a feedback.db or a TRL preference .jsonl)")
    if location.endswith(".jsonl"):  # every row read as the recipe will (media in place), nothing written
        from modalign.feedback.trl_import import check_preference_file

        count = check_preference_file(location)
        if not count:
            raise UserError(f"{key} {location!r}: the TRL preference file holds no rows")
        return count
    from sqlalchemy.exc import SQLAlchemyError

    from modalign.feedback.store_spec import masked, open_store

    store = open_store(location, key=key, must_exist=True)  # a URL it cannot open: one error naming key and URL
    try:
        pairs = [p for p in store.preference_pairs(min_votes) if not (decided and p.tie)]
    except SQLAlchemyError as err:
        raise UserError(f"{key} {masked(location)!r}: not a readable feedback store ({first_line(err)})") from None
    if not pairs:
        kind = "decided (not tied) preference pairs" if decided else "pairwise or ranking judgments"
        raise UserError(f"{key} {masked(location)!r}: the feedback store holds no {kind} with at least {min_votes} vote(s) "
                        f"(min_votes)")
    return len(pairs)


def check_fusion(fusion: str, key: str = "fusion") -> None:
    """The built-in model's fusion is one it has."""
    from modalign.models.tinyvlm.configuration import FUSIONS

    if fusion not in FUSIONS:
        raise ConfigError(f"{key}={fusion!r}: choose one of {', '.join(FUSIONS)}")


def registered(get: Any, name: str, key: str) -> Any:
    """`get(name)` from a registry (losses, objectives); an unknown name is an error naming `key`."""
    try:
        return get(name)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{key}={name!r}: {first_line(err)}") from None
