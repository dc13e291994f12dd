"""`modalign report RUN...`: one self-contained page for any run folders, side by side."""

from __future__ import annotations

import json
import re

from eval_data import write_six
from typer.testing import CliRunner

from modalign.cli import app
from modalign.eval.run_report import load_run, write_runs_report

runner = CliRunner()


def fake_run(folder, stage, logged, summary):
    """A run folder as the recipes leave it: config.yaml, metrics.jsonl, summary.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"# {stage}\nlr: {summary['lr']}\nseed: 0\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": step, **row}) + "\n"
                                                  for step, row in enumerate(logged, start=1)))
    (folder / "summary.json").write_text(json.dumps({"stage": stage, **summary}))
    return folder


def two_runs(tmp_path):
    first = fake_run(tmp_path / "run-a", "grpo", [{"grpo/reward_mean": 0.1, "grpo/loss": 2.0},
                                                  {"grpo/reward_mean": 0.3, "grpo/loss": 1.5}],
                     {"lr": 0.001, "final_loss": 1.5, "eval": {"n_examples": 6.0, "exact_match": 0.3333,
                                                                "task/vqa/exact_match": 0.25, "task/vqa/n_examples": 4.0,
                                                                "modality/image/bleu": 12.5}})
    second = fake_run(tmp_path / "run-b", "rloo", [{"rloo/reward_mean": 0.2, "rloo/kl_to_ref": 0.0, "lr": 1e-3},
                                                   {"rloo/reward_mean": 0.5, "rloo/kl_to_ref": 0.1, "lr": 1e-3}],
                      {"lr": 0.0005, "steps": 2, "eval": {"n_examples": 6.0, "exact_match": 0.6667}})
    return first, second


def test_two_runs_side_by_side_with_an_image_per_curve(tmp_path):
    first, second = two_runs(tmp_path)
    page = write_runs_report([first, second], tmp_path / "report.html").read_text()
    # four curves: reward_mean (both runs overlaid: each recipe's namespace is dropped), loss, kl_to_ref, lr
    assert len(re.findall(r'<figure><img src="data:image/png;base64,', page)) == 4
    for caption in ("reward_mean", "loss", "kl_to_ref", "lr"):
        assert f"<figcaption>{caption}</figcaption>" in page
    for shown in ("run-a", "run-b", "final_loss", "0.3333", "0.6667", "run-a: eval, by task", "run-a: eval, by modality"):
        assert shown in page, shown
    assert "Settings that differ" in page and "0.0005" in page  # lr differs, seed does not
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_curves_overlay_runs_of_different_algorithms(tmp_path):
    first, second = two_runs(tmp_path)
    assert set(load_run(first).curves["run"]) == {"reward_mean", "loss"}
    assert set(load_run(second).curves["run"]) == {"reward_mean", "kl_to_ref", "lr"}
    assert load_run(second).curves["run"]["reward_mean"] == [(1, 0.2), (2, 0.5)]


def test_report_of_real_runs_shows_answers_beside_their_media(sft_model, tmp_path):
    model_dir, _ = sft_model
    data = write_six(tmp_path / "own")
    result = runner.invoke(app, ["eval", "--policy", str(model_dir), "--data", str(data), "--out", str(tmp_path / "e"),
                                 "--set", "max_new_tokens=6"])
    assert result.exit_code == 0, result.output
    sft_run = model_dir.parent
    result = runner.invoke(app, ["report", str(sft_run), str(tmp_path / "e"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    eval_run = load_run(tmp_path / "e")
    assert eval_run.data_root == data and list(eval_run.samples) == ["samples"]
    sft_answers, eval_answers = page.split("<h2>Sample answers: sft</h2>")[1].split("<h2>Sample answers: e</h2>")
    assert eval_answers.count("<audio controls") == 2 and eval_answers.count("<img src=") == 4  # q3, c1; q1, q2, c1, c2
    assert sft_answers.count("<audio controls") == 1  # the ShapesWorld scene's beeps
    assert "how many dogs?" in eval_answers and "3 | three" in eval_answers  # meta.answer's alternatives
    assert "normalized_accuracy" in page and "hallucination_rate" in page  # sft evaluated on ShapesWorld


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "is not a run folder" in output and "Traceback" not in output
    assert not (tmp_path / "r.html").exists()
