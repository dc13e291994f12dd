"""`modalign demo --quick`: the whole loop runs and writes every promised number and the report."""

from __future__ import annotations

import json

import pytest

from modalign.recipes.demo import run_demo


@pytest.mark.slow
def test_quick_demo_writes_summary_and_report(tmp_path):
    summary = run_demo(out=str(tmp_path / "demo"), seed=0, quick=True)
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for stage, key in [("sft", "hallucination_rate"), ("sft", "vqa_accuracy"), ("rlhf", "hallucination_rate"),
                       ("rlhf", "vqa_accuracy"), ("rlhf", "kl_to_ref"), ("reward_model", "heldout_accuracy"),
                       ("annotators", "agreement")]:
        assert key in saved[stage], (stage, key)
    assert saved["wall_seconds"] == summary["wall_seconds"] > 0
    assert 0 < saved["cpu_seconds"] == summary["cpu_seconds"]
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "<audio controls" in page and "data:image/png;base64" in page and "hallucination_rate" in page
    from modalign.feedback.store import FeedbackStore

    rankings = FeedbackStore.sqlite(tmp_path / "demo" / "loop" / "feedback.db").count_judgments("ranking")
    assert saved["annotators"]["rankings"] == 3 * saved["annotators"]["prompts"] > 0
    assert rankings == sum(row["judgments"] for row in saved["rounds"]) > saved["annotators"]["rankings"]
    assert 0.0 <= saved["annotators"]["gold_accuracy"] <= 1.0
    assert [row["round"] for row in saved["rounds"]] == [1, 2]

    # --resume on a finished demo reads every stage back and writes the same numbers
    again = run_demo(resume=str(tmp_path / "demo"))
    assert again["rlhf"] == summary["rlhf"] and again["sft"] == summary["sft"]
    with pytest.raises(FileExistsError, match="--resume"):
        run_demo(out=str(tmp_path / "demo"))
