"""A new user's first hour, as the docs tell it: every command of docs/your-data.md and docs/plugins.md.

The user's files are real: a `datasets.DatasetDict` saved to disk with inline PIL photos (crops of
scikit-learn's and matplotlib's sample photos) and audio arrays (CPython's recording of a plucked
string), TRL preference rows whose media paths are relative to the file, and the reward and judge
functions the docs show (`my_rewards.py`, `my_judge.py`, taken from the pages' code blocks). Each
`modalign ...` line of the pages then runs through the command line, in order, in that folder.
Nothing is ShapesWorld in docs/your-data.md.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import real_data
from modalign.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
runner = CliRunner()


def bash_commands(page: Path) -> list[str]:
    """The `modalign ...` lines of the page's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("modalign ")]


def python_files(page: Path) -> dict[str, str]:
    """Files the page shows: a python block right after a line naming it (`` `name.py`: ``)."""
    return dict(re.findall(r"`([\w./-]+\.py)`:\s*\n\s*```python\n(.*?)```", page.read_text(), flags=re.S))


def run_page(page: Path, folder: Path, monkeypatch) -> list[str]:
    """Run every command of `page` in `folder`; each must exit 0. Returns the commands."""
    monkeypatch.chdir(folder)
    commands = bash_commands(page)
    for command in commands:
        started = time.perf_counter()
        result = runner.invoke(app, shlex.split(command)[1:])
        print(f"{time.perf_counter() - started:6.1f} s  {command}")  # shown with -s: where the page's time goes
        assert result.exit_code == 0, f"{page.name}: {command}\n{result.output}\n{result.exception!r}"
    return commands


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """What the user brings: my_dataset/ (save_to_disk), prefs/pairs.jsonl with media beside it, the plug-ins."""
    import datasets

    folder = tmp_path_factory.mktemp("new_user")
    table = real_data.rows()
    train_ids, test_ids = real_data.split_ids(table)
    full = real_data.hf_dataset()
    splits = {name: full.filter(lambda row, ids=set(ids): row["id"] in ids)
              for name, ids in (("train", train_ids), ("test", test_ids))}
    datasets.DatasetDict(splits).save_to_disk(str(folder / "my_dataset"))
    real_data.write_preferences(folder / "prefs", [row for row in table if row["id"] in set(train_ids)])
    for name, text in python_files(DOCS / "plugins.md").items():
        (folder / name).write_text(text)
    return folder


def test_your_data_page_runs_end_to_end(user_folder, monkeypatch):
    commands = run_page(DOCS / "your-data.md", user_folder, monkeypatch)
    assert [c.split()[1] for c in commands] == ["import", "sft", "reward", "grpo", "dpo", "iterative-dpo", "eval",
                                                 "eval", "report"]
    data, runs = user_folder / "data" / "mine", user_folder / "runs"

    # imported: ids kept, task/answer in meta, media content-addressed once, no ShapesWorld anywhere
    records = [json.loads(line) for split in ("train", "test") for line in (data / f"{split}.jsonl").open()]
    assert len(records) == 45 and {r["meta"]["task"] for r in records} == {"caption", "vqa", "audio"}
    assert all(r["meta"].get("world") != "shapes" for r in records)
    assert {r["id"] for r in records} == {row["id"] for row in real_data.rows()}
    media = [p for p in (data / "media").rglob("*") if p.is_file()]
    assert len(media) == len({m["path"] for r in records for m in r["media"]})

    # the reward model and DPO read the pairs where they are: no media copied into their runs
    for run in ("reward", "dpo"):
        assert not [p for p in (runs / run).rglob("*") if p.suffix in (".png", ".wav", ".jpg")]
    reward = json.loads((runs / "reward" / "summary.json").read_text())
    assert reward["train_pairs"] + reward["heldout_pairs"] == 35  # one pair per train example (10 are test)

    # GRPO logged the py: reward and the reward model as separate terms
    grpo_lines = [json.loads(line) for line in (runs / "grpo" / "metrics.jsonl").open()]
    terms = {key for line in grpo_lines for key in line if key.startswith("reward/")}
    assert "reward/py:my_rewards.py:says_the_answer" in terms and "reward/runs/reward/model" in terms

    # the judge's rankings are in the iterative DPO's store, with the judge as annotator
    from modalign.feedback.store import FeedbackStore

    store = FeedbackStore.sqlite(runs / "idpo" / "feedback.db")
    assert store.count_judgments() > 0
    assert {j.annotator for j in store.judgments()} == {"py:my_judge.py:closest_to_reference"}

    # evaluation: greedy, accuracy where meta.answer exists, by task and modality; the win rate
    evaluation = json.loads((runs / "eval-dpo" / "summary.json").read_text())
    metrics = evaluation["metrics"]
    print({key: round(value, 3) for key, value in metrics.items() if key.endswith(("accuracy", "bleu"))})
    assert metrics["greedy"] == 1.0
    for key in ("exact_match", "normalized_accuracy", "task/vqa/normalized_accuracy",
                "task/audio/normalized_accuracy", "task/caption/bleu", "modality/image/bleu", "modality/audio/bleu"):
        assert 0.0 <= metrics[key] <= 100.0, key
    compared = json.loads((runs / "dpo-vs-sft" / "summary.json").read_text())["win_rate"]
    assert compared["win_rate"] + compared["tie_rate"] + compared["loss_rate"] == pytest.approx(1.0)
    assert compared["wins"] + compared["ties"] + compared["losses"] == len(evaluation_ids(runs / "dpo-vs-sft"))

    # one report for the four runs, self-contained
    page = (user_folder / "report.html").read_text()
    for run in ("sft", "grpo", "dpo", "eval-dpo"):
        assert run in page
    assert page.count("<img") >= 4 and "data:image/png;base64," in page and "<audio" in page


def evaluation_ids(run: Path) -> list[str]:
    return [json.loads(line)["example_id"] for line in (run / "samples.jsonl").open()]


def test_plugins_page_runs(tmp_path, monkeypatch):
    for name, text in python_files(DOCS / "plugins.md").items():
        (tmp_path / name).write_text(text)
    commands = run_page(DOCS / "plugins.md", tmp_path, monkeypatch)
    assert {c.split()[1] for c in commands} == {"shapes", "sft", "grpo", "iterative-dpo", "loop"}
