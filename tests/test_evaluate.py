"""Evaluation on any data: answer accuracy (VQA normalisation), per task and modality, greedy by default,
exact KL to a reference, win rate; gold ShapesWorld metrics where the data has them."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from eval_data import six_examples, write_six
from typer.testing import CliRunner

from modalign.cli import app
from modalign.data.dataset import read_examples
from modalign.data.records import Completion
from modalign.eval.generation import evaluate_split
from modalign.eval.metrics import breakdown_table, score_completions
from modalign.eval.text_metrics import exact_match, normalize_vqa, vqa_match
from modalign.eval.win_rate import win_rate
from modalign.models.policy import load_policy
from modalign.recipes.evaluate import EvalConfig
from modalign.rl.kl import kl_exact, kl_k3_per_answer

runner = CliRunner()

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def wrong_colour(answer: str) -> str:
    """The caption with its first colour word swapped for one that is not in it."""
    for colour in COLOURS:
        if colour in answer:
            return answer.replace(colour, next(c for c in COLOURS if c not in answer), 1)
    raise AssertionError(f"no colour in {answer!r}")


def test_every_sample_of_a_prompt_counts(sft_model):
    _, data = sft_model
    caption = next(e for e in read_examples(data, "test") if e.meta["task"] == "caption")
    right = Completion(caption.id, caption.answer, "p", {})
    wrong = Completion(caption.id, wrong_colour(caption.answer), "p", {})
    assert score_completions([caption], [right])["caption_hallucinated_share"] == 0.0
    assert score_completions([caption], [wrong])["caption_hallucinated_share"] == 1.0
    both = score_completions([caption, caption], [right, wrong])
    assert both["caption_hallucinated_share"] == 0.5 and both["n_captions"] == 2.0


def test_evaluate_split_scores_k_samples_per_prompt(sft_model, tmp_path):
    model_dir, data = sft_model
    n_test = len(read_examples(data, "test"))
    metrics = evaluate_split(load_policy(model_dir), data, "test", max_new_tokens=8, samples_per_example=3,
                             temperature=1.0, samples_path=tmp_path / "samples.jsonl")
    assert metrics["n_examples"] == 3 * n_test
    assert metrics["temperature"] == 1.0 and metrics["samples_per_prompt"] == 3 and metrics["greedy"] == 0
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * n_test


def test_vqa_normalisation_and_exact_match():
    assert normalize_vqa("Two dogs.") == "2 dogs"
    assert normalize_vqa("  The RED one!") == "red 1"
    assert normalize_vqa("1,000") == "1000" and normalize_vqa("2.5") == "2.5"
    assert normalize_vqa("an apple, please?") == "apple please"
    assert normalize_vqa("dont know") == "don't know" and normalize_vqa("t-shirt") == "t shirt"
    assert exact_match(" red ", "red") and not exact_match("Red", "red") and not exact_match("red.", "red")
    assert vqa_match("Red.", "red") and vqa_match("three", "3") and not vqa_match("red car", "red")


PREDICTIONS = {"q1": "2", "q2": "red", "q3": "cat", "c1": "a red circle", "c2": "The blue square.", "n1": "Three"}


def test_per_task_and_per_modality_breakdown_of_six_examples():
    examples = six_examples()
    metrics = score_completions(examples, [Completion(e.id, PREDICTIONS[e.id], "p", {}) for e in examples])
    # exact: q2, c1; normalised: all but q3 ("Three" matches the alternative "3", "2" matches "two")
    assert metrics["n_examples"] == 6 and metrics["n_answers"] == 6
    assert metrics["exact_match"] == pytest.approx(2 / 6) and metrics["normalized_accuracy"] == pytest.approx(5 / 6)
    by_task = breakdown_table(metrics, "task")
    assert set(by_task) == {"vqa", "caption", "count"}
    assert by_task["vqa"]["n_examples"] == 3
    assert by_task["vqa"]["exact_match"] == pytest.approx(1 / 3) and by_task["vqa"]["normalized_accuracy"] == pytest.approx(2 / 3)
    assert by_task["caption"]["exact_match"] == 0.5 and by_task["caption"]["normalized_accuracy"] == 1.0
    assert by_task["count"]["exact_match"] == 0.0 and by_task["count"]["normalized_accuracy"] == 1.0
    by_modality = breakdown_table(metrics, "modality")
    assert set(by_modality) == {"image", "audio", "image+audio", "text"}
    assert by_modality["image"]["n_examples"] == 3 and by_modality["image"]["exact_match"] == pytest.approx(1 / 3)
    assert by_modality["image"]["normalized_accuracy"] == 1.0
    assert by_modality["audio"]["normalized_accuracy"] == 0.0 and by_modality["image+audio"]["exact_match"] == 1.0
    assert by_modality["text"]["exact_match"] == 0.0 and by_modality["text"]["normalized_accuracy"] == 1.0
    assert by_task["caption"]["bleu"] > 0 and "hallucination_rate" not in metrics  # not ShapesWorld: no gold


def test_data_without_tasks_is_one_group_named_all():
    examples = [dataclasses.replace(e, meta={"answer": e.meta["answer"]}) for e in six_examples()]
    metrics = score_completions(examples, [Completion(e.id, PREDICTIONS[e.id], "p", {}) for e in examples])
    assert breakdown_table(metrics, "task") == {"all": breakdown_table(metrics, "task")["all"]}
    assert breakdown_table(metrics, "task")["all"]["normalized_accuracy"] == pytest.approx(5 / 6)


def test_win_rate_counts_and_standard_errors():
    out = win_rate(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0]))
    assert (out["wins"], out["ties"], out["losses"]) == (2, 1, 1)
    assert out["win_rate"] == 0.5 and out["win_rate_se"] == pytest.approx(math.sqrt(0.25 / 4))
    assert out["tie_rate"] == 0.25 and out["tie_rate_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))
    assert out["win_rate_ties_half"] == pytest.approx(0.625)
    same = win_rate(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), same_answer=[True, False])
    assert (same["wins"], same["ties"]) == (0, 2)  # the same text ties whatever the judge says


def test_exact_kl_is_the_hand_computed_value():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0.1438
    assert float(kl_exact(p.log(), q.log())) == pytest.approx(expected, abs=1e-6)
    assert float(kl_exact(q.log(), q.log())) == 0.0
    logits = torch.randn(4, 3, 11)
    assert (kl_exact(logits, torch.randn(4, 3, 11)) >= 0).all()


def test_per_answer_kl_is_k3_and_never_negative():
    # the policy gives its sampled tokens less mass than the reference does: the k1 sum is negative
    logprobs = torch.log(torch.tensor([[0.2, 0.5, 0.9]]))
    ref_logprobs = torch.log(torch.tensor([[0.4, 0.5, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is past the answer's end
    assert float(((logprobs - ref_logprobs) * mask).sum()) < 0
    expected = (2.0 - 1.0 - math.log(2.0)) + 0.0  # r = 0.4 / 0.2 on the first token, r = 1 on the second
    assert float(kl_k3_per_answer(logprobs, ref_logprobs, mask)[0]) == pytest.approx(expected)


def invoke_eval(*args: str):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 0, result.output
    return result


def test_eval_on_own_data_is_greedy_with_accuracy_per_task(sft_model, tmp_path):
    model_dir, _ = sft_model
    data = write_six(tmp_path / "own")
    assert EvalConfig().temperature == 0.0 and EvalConfig().data == ""
    for seed in (0, 1):
        invoke_eval("--policy", str(model_dir), "--data", str(data), "--out", str(tmp_path / f"e{seed}"),
                    "--set", f"seed={seed}", "--set", "max_new_tokens=6")
    summary = json.loads((tmp_path / "e0" / "summary.json").read_text())
    assert summary["decoding"] == {"temperature": 0.0, "samples_per_prompt": 1.0, "greedy": 1.0}
    metrics = summary["metrics"]
    assert metrics["n_answers"] == 6 and 0.0 <= metrics["normalized_accuracy"] <= 1.0
    assert {"task/vqa/exact_match", "task/caption/bleu", "modality/image+audio/normalized_accuracy"} <= set(metrics)
    assert "hallucination_rate" not in metrics and (tmp_path / "e0" / "config.yaml").is_file()
    # greedy: another seed gives the same answers
    answers = [[json.loads(line)["text"] for line in (tmp_path / f"e{s}" / "samples.jsonl").read_text().splitlines()]
               for s in (0, 1)]
    assert answers[0] == answers[1] and len(answers[0]) == 6


def test_eval_says_when_it_samples(sft_model, tmp_path):
    model_dir, _ = sft_model
    data = write_six(tmp_path / "own")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"policy: {model_dir}\ndata: {data}\ntemperature: 0.8\nsamples_per_prompt: 2\nmax_new_tokens: 4\n")
    result = invoke_eval("--config", str(cfg), "--out", str(tmp_path / "e"))
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["decoding"] == {"temperature": 0.8, "samples_per_prompt": 2.0, "greedy": 0.0}
    assert summary["metrics"]["n_examples"] == 12 and "temperature 0.8, 2 per prompt" in result.output


def test_eval_help_config_lists_the_fields():
    result = invoke_eval("--help-config")
    assert "EvalConfig" in result.output and "reference" in result.output and "judge" in result.output


@pytest.mark.parametrize("args, message", [
    ([], "--data"),
    (["--set", "task=nope"], "task='nope'"),
    (["--set", "compare=x"], "compare and judge go together"),
    (["--set", "samples_per_prompt=2"], "temperature 0"),
    (["--set", "compare=runs/typo/model", "--set", "judge=rule:format"], "compare 'runs/typo/model': no such folder"),
])
def test_eval_mistakes_are_one_line_before_any_work(sft_model, tmp_path, args, message):
    model_dir, _ = sft_model
    data = [] if not args else ["--data", str(write_six(tmp_path / "own"))]
    result = runner.invoke(app, ["eval", "--policy", str(model_dir), *data, "--out", str(tmp_path / "e"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "e").exists()


def test_kl_to_a_reference_is_exact_and_zero_against_itself(sft_model, tmp_path):
    model_dir, _ = sft_model
    data = write_six(tmp_path / "own")
    moved = load_policy(model_dir)
    with torch.no_grad():
        for parameter in moved.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    moved.save(tmp_path / "moved")
    for name, reference in (("self", model_dir), ("moved", tmp_path / "moved")):
        invoke_eval("--policy", str(model_dir), "--data", str(data), "--out", str(tmp_path / name),
                    "--set", f"reference={reference}", "--set", "max_new_tokens=6")
    itself = json.loads((tmp_path / "self" / "summary.json").read_text())
    moved_summary = json.loads((tmp_path / "moved" / "summary.json").read_text())
    assert itself["kl_estimator"].startswith("exact")
    assert itself["metrics"]["kl_to_ref"] == pytest.approx(0.0, abs=1e-5)
    assert moved_summary["metrics"]["kl_to_ref"] > 1e-3 and moved_summary["metrics"]["kl_to_ref_per_token"] > 0


def test_win_rate_of_a_policy_against_itself_is_all_ties(sft_model, tmp_path):
    model_dir, _ = sft_model
    data = write_six(tmp_path / "own")
    result = invoke_eval("--policy", str(model_dir), "--data", str(data), "--out", str(tmp_path / "e"),
                         "--set", f"compare={model_dir}", "--set", "judge=rule:length_penalty + rule:format",
                         "--set", "max_new_tokens=6")
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["win_rate"]["ties"] == summary["win_rate"]["n_prompts"] == 6
    assert summary["win_rate"]["win_rate"] == 0.0 and summary["win_rate"]["win_rate_se"] == 0.0
    assert summary["metrics_compare"]["n_examples"] == 6 and "A vs B" in result.output


def test_gold_metrics_only_on_shapesworld_asked_for_by_name(sft_model, tmp_path):
    model_dir, _ = sft_model
    invoke_eval("--policy", str(model_dir), "--data", "shapes", "--out", str(tmp_path / "e"),
                "--set", "shapes_test_scenes=1", "--set", "max_new_tokens=6")
    metrics = json.loads((tmp_path / "e" / "summary.json").read_text())["metrics"]
    assert "hallucination_rate" in metrics and "vqa_accuracy" in metrics  # gold, from the scenes
    assert "task/caption/normalized_accuracy" in metrics and "modality/image+audio/n_examples" in metrics
