"""Configs from YAML and --set, run folders, checkpoints and RNG state."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from modalign.config import ConfigError, describe_config, field_doc, load_config
from modalign.runs import RunDir, rng_state, set_rng_state


@dataclass
class Inner:
    """Nested part."""

    width: int = field_doc(8, "Width.")


@dataclass
class Demo:
    """A config for tests."""

    lr: float = field_doc(1e-3, "Learning rate.")
    name: str = field_doc("x", "Name.")
    steps: int = field_doc(10, "Steps.")
    flag: bool = field_doc(False, "A switch.")
    inner: Inner = field_doc(Inner(), "Nested.")


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.01\nname: run\ninner:\n  width: 16\n")
    cfg = load_config(Demo, path, ["steps=5", "flag=true", "inner.width=32", "lr=1"])
    assert (cfg.lr, cfg.name, cfg.steps, cfg.flag, cfg.inner.width) == (1.0, "run", 5, True, 32)
    assert isinstance(cfg.lr, float)
    assert load_config(Demo, None, ["lr=1e-4"]).lr == 1e-4  # YAML 1.1 reads this as a string


def test_unknown_key_and_bad_type_name_the_key():
    with pytest.raises(ConfigError, match="'stepz'.*valid keys: lr, name, steps"):
        load_config(Demo, None, ["stepz=3"])
    with pytest.raises(ConfigError, match="'steps'.*'many' is not a int"):
        load_config(Demo, None, ["steps=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(Demo, None, ["steps"])


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(Demo, None, ["steps=7", "name=abc"])
    run = RunDir.create(tmp_path / "run", cfg)
    text = (run.path / "config.yaml").read_text()
    assert "# Learning rate." in text
    assert load_config(Demo, run.path / "config.yaml") == cfg
    assert "Learning rate." in describe_config(Demo)


def test_metrics_and_summary(tmp_path):
    run = RunDir.create(tmp_path / "run", Demo())
    run.log(1, {"loss": 2.0})
    run.log(2, {"loss": float("nan")})
    run.write_summary({"ok": 1})
    run.close()
    lines = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}]
    assert json.loads((run.path / "summary.json").read_text()) == {"ok": 1}
    assert any((run.path / "tb").iterdir())


def test_checkpoints_keep_the_latest(tmp_path):
    run = RunDir.create(tmp_path / "run", Demo())
    for step in (10, 20, 30):
        run.save_checkpoint({"step": step, "w": torch.ones(2) * step}, step, keep=2)
    assert [p.name for p in run.checkpoints()] == ["step-000020", "step-000030"]
    assert run.load_checkpoint(run.latest_checkpoint())["step"] == 30
    # A half-written checkpoint (killed mid-save) is never taken for the latest.
    (run.path / "checkpoints" / "step-000040.tmp").mkdir()
    assert run.latest_checkpoint().name == "step-000030"


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_a_used_run_folder_is_not_overwritten(tmp_path):
    from modalign.recipes.sft import SFTConfig
    from modalign.runs import RunDir

    run = RunDir.create(tmp_path / "run", SFTConfig())
    run.log(1, {"loss": 2.0})
    with pytest.raises(FileExistsError, match="--resume"):
        RunDir.create(tmp_path / "run", SFTConfig(lr=3.0))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_user_errors_are_one_family():
    from modalign.data.media import MediaError
    from modalign.data.records import RecordError
    from modalign.errors import UserError

    assert all(issubclass(cls, UserError) for cls in (ConfigError, RecordError, MediaError))


def test_task_filter_keeps_all_by_default_and_names_the_tasks_the_data_has():
    from modalign.data.records import Example, user_turn
    from modalign.validate import select_task

    examples = [Example(id=str(i), messages=(user_turn("q"),), meta=meta)
                for i, meta in enumerate([{"task": "vqa"}, {"task": "caption"}, {}])]
    assert select_task(examples, "", "d/train.jsonl") == examples
    assert [e.id for e in select_task(examples, "vqa", "d/train.jsonl")] == ["0"]
    with pytest.raises(ConfigError, match=r"task='captions': no example of d/train.jsonl .*tasks it has: caption, vqa"):
        select_task(examples, "captions", "d/train.jsonl")


def test_resume_status_of_a_run_folder(tmp_path):
    from modalign.errors import UserError
    from modalign.validate import resume_status

    with pytest.raises(UserError, match="not a run folder"):
        resume_status(tmp_path / "nothing")
    run = RunDir.create(tmp_path / "run", Demo())
    with pytest.raises(UserError, match="no checkpoint to continue from"):
        resume_status(run.path)
    run.save_checkpoint({"step": 1}, 1)
    assert resume_status(run.path) == "resumable"
    run.write_summary({"ok": 1})
    assert resume_status(run.path) == "finished"
