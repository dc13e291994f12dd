"""The `modalign` command: help without torch, one-line errors, the shapes tool."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from modalign.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("sft", "eval", "demo", "shapes"):
        assert command in result.output


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, modalign.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False False"


def test_config_error_is_one_line_without_traceback(tmp_path):
    result = runner.invoke(app, ["sft", "--set", "epoch=3", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "unknown config key 'epoch'" in result.output
    assert "Traceback" not in result.output


def test_bad_dataset_is_one_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"id": "r1", "messages": "oops"}\n')
    result = runner.invoke(app, ["sft", "--set", f"data={tmp_path}", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "train.jsonl:1" in result.output and "r1" in result.output


def test_help_config_lists_fields():
    result = runner.invoke(app, ["sft", "--help-config"])
    assert result.exit_code == 0 and "caption_noise" in result.output


def test_shapes_command_writes_a_dataset(tmp_path):
    result = runner.invoke(app, ["shapes", "--out", str(tmp_path / "d"), "--train", "3", "--test", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "train.jsonl").is_file()


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"modalign {version('modalign')}"


def test_a_long_error_stays_on_one_line(tmp_path):
    deep = tmp_path / ("a-very-long-folder-name-" * 6) / "data"
    result = runner.invoke(app, ["sft", "--set", f"data={deep}", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(deep) in result.output  # not wrapped at the terminal's width
