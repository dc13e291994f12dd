"""The bad-input table: every user mistake is one `error:` line naming what is wrong, exit code 2,
and no run folder left behind (or an existing run's files untouched).

Each row runs the real CLI on a tiny dataset of its own (no ShapesWorld: no `meta.task`, plain
photos-like images and a WAV clip) and, where a policy is needed, a tiny saved built-in model.
Most rows fail before any model is loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modalign.cli import app

runner = CliRunner()


# ---- a tiny user dataset, store and policy -----------------------------------------------------
def _record(rid: str, text: str, answer: str | None = "a plain answer.",
            image: str | None = "media/a.png", audio: str | None = None) -> dict:
    content = ([{"type": "image"}] if image else []) + ([{"type": "audio"}] if audio else [])
    content.append({"type": "text", "text": text})
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    media = [{"kind": kind, "path": path} for kind, path in (("image", image), ("audio", audio)) if path]
    return {"id": rid, "messages": messages, "media": media}


def _write(root: Path, split: str, records: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _make_dataset(root: Path, train: list[dict] | None = None, test: list[dict] | None = None) -> Path:
    """Images a.png (good) and broken.png (cut), a 0.5 s and a 1.5 s clip; splits as given (default: 4 + 2 good)."""
    from modalign.data.media import save_audio

    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(media / "a.png")
    good = (media / "a.png").read_bytes()
    (media / "broken.png").write_bytes(good[: len(good) // 2])  # a truncated file
    tone = np.sin(np.linspace(0, 400, 24000)).astype(np.float32) * 0.3
    save_audio(tone[:8000], media / "short.wav", 16000)
    save_audio(tone, media / "long.wav", 16000)  # 1.5 s: beyond the built-in model's 1 s window
    _write(root, "train", train if train is not None else [_record(f"t{i}", "what is shown?") for i in range(4)])
    _write(root, "test", test if test is not None else [_record(f"e{i}", "what is shown?") for i in range(2)])
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Datasets, feedback stores and policy folders the rows point at, keyed by name."""
    from modalign.data.records import Completion, Example
    from modalign.feedback.judgments import PairwiseJudgment
    from modalign.feedback.store import FeedbackStore
    from modalign.models.policy import create_tinyvlm

    base = tmp_path_factory.mktemp("bad_inputs")
    good = _make_dataset(base / "good")
    w = {"base": base, "good": good}
    w["empty_train"] = _make_dataset(base / "empty_train", train=[])
    w["empty_test"] = _make_dataset(base / "empty_test", test=[])
    w["no_test"] = _make_dataset(base / "no_test")
    (w["no_test"] / "test.jsonl").unlink()
    w["marker"] = _make_dataset(base / "marker", train=[_record("t0", "ok"), _record("typed", "look at <image> here")])
    w["no_answer"] = _make_dataset(base / "no_answer", train=[_record("t0", "ok"), _record("open", "ok", answer=None)])
    w["broken_test"] = _make_dataset(base / "broken_test",
                                     test=[_record("e0", "ok"), _record("bad", "ok", image="media/broken.png")])
    w["long_audio"] = _make_dataset(base / "long_audio", train=[_record("t0", "ok", audio="media/short.wav"),
                                                              _record("longclip", "ok", audio="media/long.wav")])
    corpus = ["what is shown?", "a plain answer.", "ok"] * 10
    w["policy"] = create_tinyvlm(corpus, vocab_size=280, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, vision_hidden_size=16, audio_hidden_size=16, vision_layers=1,
                                 audio_layers=1).save(base / "policy")
    w["alien"] = base / "alien"
    w["alien"].mkdir()
    (w["alien"] / "config.json").write_text(json.dumps({"model_type": "no_such_architecture_xyz"}))
    examples = [Example.from_dict(r) for r in [_record(f"t{i}", "what is shown?") for i in range(2)]]
    w["empty_store"] = base / "empty.db"
    FeedbackStore.sqlite(w["empty_store"]).add_examples(examples, root=good)
    w["tied_store"] = base / "tied.db"
    store = FeedbackStore.sqlite(w["tied_store"])
    store.add_examples(examples, root=good)
    ids = store.add_candidates([Completion("t0", "one."), Completion("t0", "two.")])
    store.add_judgments([PairwiseJudgment(example_id="t0", annotator="ann", candidate_a=ids[0], candidate_b=ids[1],
                                          choice="tie")])
    w["not_a_db"] = base / "pairs.db"
    w["not_a_db"].write_text("not a database\n")
    w["bad_pairs"] = base / "prefs" / "pairs.jsonl"  # row 2 has no rejected answer
    w["bad_pairs"].parent.mkdir()
    good_row = {"prompt": [{"role": "user", "content": "hi?"}], "chosen": [{"role": "assistant", "content": "hi."}],
                "rejected": [{"role": "assistant", "content": "no."}]}
    w["bad_pairs"].write_text(json.dumps(good_row) + "\n" + json.dumps({**good_row, "rejected": None}) + "\n")
    w["run"] = base / "finished"  # a finished run: its files must stay byte-identical
    w["run"].mkdir()
    for name, text in (("config.yaml", "lr: 0.001\n"), ("metrics.jsonl", '{"step": 1}\n'),
                       ("summary.json", '{"stage": "sft"}')):
        (w["run"] / name).write_text(text)
    w["stopped"] = base / "stopped"  # a run killed before its first checkpoint
    (w["stopped"] / "checkpoints").mkdir(parents=True)
    (w["stopped"] / "config.yaml").write_text((Path(__file__).parents[1] / "configs" / "sft.yaml").read_text())
    return w


TINY_SFT = ["hidden_size=16", "num_layers=1", "num_heads=2", "encoder_layers=1", "vocab_size=280", "max_steps=1"]

# id, command builder (world -> (args, the folder that must not be created or changed)), words the line must hold
CASES = [
    ("empty train split", lambda w: (["sft", "--set", f"data={w['empty_train']}"], None),
     ["train.jsonl", "no examples"]),
    ("empty eval split", lambda w: (["grpo", "--set", f"data={w['empty_test']}", "--set", "reward_model=rule:format",
                                     "--set", f"policy={w['policy']}"], None), ["test.jsonl", "no examples"]),
    ("missing eval split", lambda w: (["sft", "--set", f"data={w['no_test']}"], None),
     ["test.jsonl", "splits found: train"]),
    ("literal <image> in user text", lambda w: (["sft", "--set", f"data={w['marker']}"], None),
     ["train.jsonl", "'typed'", "messages[0]", "<image>"]),
    ("record with no answer (sft)", lambda w: (["sft", "--set", f"data={w['no_answer']}"], None),
     ["train.jsonl", "'open'", "no answer"]),
    ("corrupt test image", lambda w: (["sft", "--set", f"data={w['broken_test']}", *_sets(TINY_SFT)], None),
     ["test.jsonl", "'bad'", "media/broken.png", "corrupt"]),
    ("audio over the model's window", lambda w: (["sft", "--set", f"data={w['long_audio']}", *_sets(TINY_SFT)], None),
     ["'longclip'", "media/long.wav", "1.50 s", "reads at most 1 s"]),
    ("record with no answer (ppo-ptx)", lambda w: (["ppo", *_sets(_rl(w)), "--set", f"data={w['no_answer']}",
                                                    "--set", "ptx_coef=1.0"], None),
     ["train.jsonl", "'open'", "PPO-ptx"]),
    ("prompt longer than max_length (sft)", lambda w: (["sft", "--set", f"data={w['good']}",
                                                        *_sets(TINY_SFT + ["max_length=4"])], None),
     ["record 't0'", "the prompt alone takes", "'messages'", "max_length is 4"]),
    ("bad fusion", lambda w: (["sft", "--set", f"data={w['good']}", "--set", "fusion=late"], None), ["fusion='late'"]),
    ("unknown rule", lambda w: (["grpo", *_sets(_rl(w)), "--set", "reward_model=rule:nope"], None),
     ["reward_model='rule:nope'", "no rule named 'nope'"]),
    ("unknown rule in a weighted sum", lambda w: (["rloo", *_sets(_rl(w)), "--set",
                                                   "reward_model=0.5*rule:format + 1.0*rule:nope"], None),
     ["reward_model=", "rule:nope"]),
    ("mistyped reward-model folder", lambda w: (["grpo", *_sets(_rl(w)), "--set",
                                                 f"reward_model={w['base']}/rewrd/model"], None),
     ["reward_model=", "rewrd/model"]),
    ("mistyped reference policy", lambda w: (["ppo", *_sets(_rl(w)), "--set", f"reference={w['base']}/sft/modle"],
                                             None), ["reference", "sft/modle", "no such folder"]),
    ("no reward given", lambda w: (["ppo", *_sets(_rl(w)[:-1])], None), ["reward_model is empty"]),
    ("task no example has", lambda w: (["grpo", *_sets(_rl(w)), "--set", "task=caption"], None),
     ["task='caption'", "train.jsonl", "no record has meta.task"]),
    ("mistyped policy folder", lambda w: (["grpo", *_sets(_rl(w)), "--set", f"policy={w['base']}/sftt/model"], None),
     ["sftt/model", "no such folder, and it is not a hub id that can be loaded offline"]),
    ("uncached hub id offline", lambda w: (["sft", "--set", f"data={w['good']}", "--set", "policy=someorg/no-model"],
                                           None), ["'someorg/no-model'", "not a hub id that can be loaded offline"]),
    ("policy folder without config.json", lambda w: (["grpo", *_sets(_rl(w)), "--set", f"policy={w['good']}"], None),
     ["has no config.json"]),
    ("unsupported architecture", lambda w: (["grpo", *_sets(_rl(w)), "--set", f"policy={w['alien']}"], None),
     ["alien'", "cannot be loaded"]),
    ("dpo without store", lambda w: (["dpo", "--set", f"policy={w['policy']}"], None), ["store is empty"]),
    ("dpo store that does not exist", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set",
                                                  f"store={w['base']}/nope.db"], None), ["nope.db", "no such file"]),
    ("store folder without feedback.db", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set",
                                                     f"store={w['good']}"], None), ["holds no feedback.db"]),
    ("zero pairs in the store", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set",
                                            f"store={w['empty_store']}"], None), ["empty.db", "no decided"]),
    ("only tied pairs (dpo)", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set",
                                          f"store={w['tied_store']}"], None), ["tied.db", "no decided"]),
    ("zero pairs (reward)", lambda w: (["reward", "--set", f"policy={w['policy']}", "--set",
                                        f"store={w['empty_store']}"], None), ["empty.db", "no pairwise or ranking"]),
    ("a bad row in a TRL preference file", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set",
                                                       f"store={w['bad_pairs']}"], None), ["pairs.jsonl:2", "rejected"]),
    ("store that is no database", lambda w: (["reward", "--set", f"policy={w['policy']}", "--set",
                                              f"store={w['not_a_db']}"], None),
     ["pairs.db", "not a readable feedback store"]),
    ("iterative-dpo: task no example has", lambda w: (["iterative-dpo", "--set", f"policy={w['policy']}", "--set",
                                                       f"data={w['good']}", "--set", "task=caption"], None),
     ["task='caption'", "no record has meta.task"]),
    ("loop: empty train split", lambda w: (["loop", "--set", f"policy={w['policy']}", "--set",
                                            f"data={w['empty_train']}"], None), ["train.jsonl", "no examples"]),
    ("bon: unknown rule", lambda w: (["bon", "--set", f"policy={w['policy']}", "--set", f"data={w['good']}",
                                      "--set", "reward_model=rule:nope"], None), ["reward_model='rule:nope'"]),
    ("unknown dpo loss", lambda w: (["dpo", "--set", f"policy={w['policy']}", "--set", f"store={w['tied_store']}",
                                     "--set", "loss=nope"], None), ["loss='nope'"]),
    ("dataset folder that does not exist", lambda w: (["grpo", *_sets(_rl(w)), "--set", f"data={w['base']}/nodata"],
                                                      None), ["nodata", "does not exist"]),
    ("--out holding a run", lambda w: (["sft", "--set", f"data={w['good']}"], w["run"]), ["already holds a run"]),
    ("--resume without checkpoints", lambda w: (["sft", "--resume", str(w["stopped"])], w["stopped"]),
     ["stopped", "no checkpoint"]),
    ("--resume of a folder that is no run", lambda w: (["grpo", "--resume", str(w["good"])], w["good"]),
     ["not a run folder"]),
]


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def _rl(w) -> list[str]:
    """A valid online-RL setting on the user dataset (the reward last, so rows can drop it)."""
    return [f"policy={w['policy']}", f"data={w['good']}", "steps=1", "reward_model=rule:format"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("build, words", [pytest.param(b, words, id=name) for name, b, words in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing(world, tmp_path, monkeypatch, build, words):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without network
    args, existing = build(world)
    out = existing or tmp_path / "run"
    before = _snapshot(existing) if existing else None
    if "--resume" not in args:
        args = [*args, "--out", str(out)]
    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    if existing:
        assert _snapshot(existing) == before  # the existing folder's files are byte-identical
    else:
        assert not out.exists()  # no run folder left behind: the corrected command runs with the same --out


def test_resume_of_a_finished_run_does_nothing(world):
    before = _snapshot(world["run"])
    result = runner.invoke(app, ["sft", "--resume", str(world["run"])])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"run {world['run']} is finished (summary.json); nothing to resume"
    assert _snapshot(world["run"]) == before


def test_the_corrected_command_runs_with_the_same_out(world, tmp_path):
    """After a failed command, fixing the mistake is enough: the same --out is free."""
    out = tmp_path / "sft"
    failed = runner.invoke(app, ["sft", "--set", f"data={world['marker']}", "--out", str(out)])
    assert failed.exit_code == 2 and not out.exists()
    data = tmp_path / "fixed"
    shutil.copytree(world["marker"], data)
    _write(data, "train", [_record("t0", "ok"), _record("typed", "look at this here")])
    fixed = runner.invoke(app, ["sft", "--set", f"data={data}", *_sets(TINY_SFT + ["eval_examples=1",
                                "max_new_tokens=2"]), "--out", str(out)])
    assert fixed.exit_code == 0, fixed.output + repr(fixed.exception)
    assert (out / "summary.json").is_file() and (out / "model" / "config.json").is_file()
    assert "Loading weights" not in fixed.output and "Writing model shards" not in fixed.output


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    """Only the user-error family is one line: a programming error is not swallowed."""
    import modalign.recipes.sft as sft

    def broken(cfg, resume=None):
        raise KeyError("a bug")

    monkeypatch.setattr(sft, "run_sft", broken)
    result = runner.invoke(app, ["sft", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_defaults_work_on_data_without_tasks(world, tmp_path):
    """The user's data has no meta.task: GRPO's default (all tasks) trains on it and evaluates every test example."""
    out = tmp_path / "grpo"
    result = runner.invoke(app, ["grpo", *_sets(_rl(world) + ["prompts_per_step=2", "samples_per_prompt=2",
                                                              "max_new_tokens=4"]), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1
    samples = (out / "samples" / "eval.jsonl").read_text().splitlines()
    assert {json.loads(line)["example_id"] for line in samples} == {"e0", "e1"}


def test_in_a_real_process_the_error_is_the_only_output(world, tmp_path):
    """Outside CliRunner too (library warnings, logging): an unsupported architecture prints one line, exit 2."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "modalign.cli", "grpo", *_sets(_rl(world)), "--set", f"policy={world['alien']}",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: policy '{world['alien']}': cannot be loaded") and not out.exists()
