"""Best-of-N rejection sampling: winners are the reward's best, then SFT on them."""

from __future__ import annotations

import json

from modalign.data.dataset import read_examples
from modalign.recipes.bon import BoNConfig, run_bon
from modalign.rl.rewards import RULES


def test_bon_keeps_each_prompts_best_answer_and_fine_tunes(tmp_path, sft_model):
    model, data = sft_model
    summary = run_bon(BoNConfig(out=str(tmp_path / "bon"), policy=str(model), data=str(data),
                                reward_model="rule:shapes_gold", prompts=6, n=4, max_new_tokens=12, epochs=1.0,
                                batch_size=2, eval_examples=2))
    winners = [json.loads(l) for l in (tmp_path / "bon" / "winners.jsonl").read_text().splitlines()]
    examples = {e.id: e for e in read_examples(data, "train")}
    assert len(winners) == 6
    for row in winners:
        assert RULES["shapes_gold"](examples[row["example_id"]], row["answer"]) == row["score"] >= row["mean_score"]
    assert summary["winner_score_mean"] >= summary["sample_score_mean"]
    assert (tmp_path / "bon" / "sft" / "model" / "config.json").is_file() and "vqa_accuracy" in summary["eval"]
