"""Iterative DPO: each round samples from the previous round's policy, trains from it, and a rerun resumes by round."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from modalign.config import ConfigError, load_config
from modalign.data.dataset import read_examples
from modalign.feedback.judgments import PairwiseJudgment
from modalign.feedback.simulated import gold_utility
from modalign.feedback.store import FeedbackStore
from modalign.models.policy import load_policy
from modalign.recipes.dpo import DPOConfig
from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo
from modalign.rl.rewards import RULES


def config(out, sft_model, **overrides) -> IterativeDPOConfig:
    model, data = sft_model
    fields = dict(out=str(out), policy=str(model), data=str(data), task="caption", rounds=2, prompts_per_round=6,
                  samples_per_prompt=2, batch_size=2, lr=1e-3, max_new_tokens=10, eval_examples=2)
    return IterativeDPOConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, sft_model):
    out = tmp_path_factory.mktemp("iterative") / "run"
    return out, run_iterative_dpo(config(out, sft_model))


def judged_candidates(store: FeedbackStore) -> list:
    """Every candidate a stored judgment names."""
    named = [j.ranking if hasattr(j, "ranking") else (j.candidate_a, j.candidate_b) for j in store.judgments()]
    ids = {i for candidates in named for i in candidates}
    return [store.get_candidate(i) for i in sorted(ids)]


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_round_samples_from_and_trains_from_the_previous_rounds_policy(two_rounds, sft_model):
    out, summary = two_rounds
    sft, data = str(sft_model[0]), sft_model[1]
    round1_model = str(out / "round-1" / "dpo" / "model")
    rows = lines(out / "rounds.jsonl")
    assert [row["round"] for row in rows] == [1, 2] and summary["rounds"] == rows
    assert [row["policy"] for row in rows] == [sft, round1_model]
    # the reference (= starting policy) of round 2 is round 1's model
    assert load_config(DPOConfig, out / "round-1" / "dpo" / "config.yaml").policy == sft
    assert load_config(DPOConfig, out / "round-2" / "dpo" / "config.yaml").policy == round1_model
    # each round's store holds its own answers only; the all-rounds store holds both rounds'
    round_stores = [FeedbackStore.sqlite(out / f"round-{r}" / "feedback.db") for r in (1, 2)]
    assert {c.policy_version for c in judged_candidates(round_stores[0])} == {sft}
    assert {c.policy_version for c in judged_candidates(round_stores[1])} == {round1_model}
    everything = FeedbackStore.sqlite(out / "feedback.db")
    assert {c.policy_version for c in judged_candidates(everything)} == {sft, round1_model}
    assert everything.count_judgments() == sum(s.count_judgments() for s in round_stores) == summary["judgments"]
    assert [row["judgments"] for row in rows] == [s.count_judgments() for s in round_stores]
    # disjoint prompts; the logged score is the mean gold utility of every sampled answer
    examples = {e.id: e for e in read_examples(data, "train")}
    samples = [lines(out / f"round-{r}" / "samples.jsonl") for r in (1, 2)]
    prompts = [{s["example_id"] for s in round_samples} for round_samples in samples]
    assert len(prompts[0]) == len(prompts[1]) == 6 and not prompts[0] & prompts[1]
    for row, round_samples in zip(rows, samples):
        gold = [gold_utility(examples[s["example_id"]], s["text"]) for s in round_samples]
        assert [s["score"] for s in round_samples] == pytest.approx(gold)
        assert row["sample_score_mean"] == pytest.approx(sum(gold) / len(gold))
        dpo = json.loads((out / f"round-{row['round']}" / "dpo" / "summary.json").read_text())
        assert row["pairs"] == dpo["pairs"] > 0 and row["eval"] == dpo["eval"]
        assert 0.0 <= row["eval"]["hallucination_rate"] <= 1.0
    # the final policy is round 2's, trained away from both SFT and round 1
    assert summary["model"] == str(out / "round-2" / "dpo" / "model") and summary["eval"] == rows[-1]["eval"]
    weights = [load_policy(path).model.state_dict() for path in (sft, round1_model, summary["model"])]
    for earlier in weights[:2]:
        assert any(not torch.equal(earlier[k], weights[2][k]) for k in earlier)


def test_a_reward_judge_pairs_the_best_and_worst_distinct_answers(tmp_path, sft_model):
    data, spec = sft_model[1], "rule:shapes_gold + rule:format"
    summary = run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=1, prompts_per_round=10,
                                       samples_per_prompt=4, judge=spec))
    examples = {e.id: e for e in read_examples(data, "train")}

    def score(example_id: str, text: str) -> float:
        return RULES["shapes_gold"](examples[example_id], text) + RULES["format"](examples[example_id], text)

    samples = lines(tmp_path / "run" / "round-1" / "samples.jsonl")
    assert len(samples) == 40 and all(s["score"] == pytest.approx(score(s["example_id"], s["text"])) for s in samples)
    store = FeedbackStore.sqlite(tmp_path / "run" / "round-1" / "feedback.db")
    judgments = store.judgments()
    assert 0 < len(judgments) == len({j.example_id for j in judgments})  # at most one pair per prompt
    for judgment in judgments:
        assert isinstance(judgment, PairwiseJudgment) and judgment.choice == "a"
        assert judgment.annotator == f"reward:{spec}"
        chosen, rejected = (store.get_candidate(i).text for i in (judgment.candidate_a, judgment.candidate_b))
        scores = [s["score"] for s in samples if s["example_id"] == judgment.example_id]
        assert score(judgment.example_id, chosen) == pytest.approx(max(scores))
        assert score(judgment.example_id, rejected) == pytest.approx(min(scores)) and min(scores) < max(scores)
    undecided = {s["example_id"] for s in samples} - {j.example_id for j in judgments}
    for example_id in undecided:  # prompts left out are exactly those whose answers all tie
        assert len({s["score"] for s in samples if s["example_id"] == example_id}) == 1
    row = summary["rounds"][0]
    assert row["score"] == spec and row["pairs"] == len(judgments)
    assert row["sample_score_mean"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))


def test_a_round_whose_answers_all_tie_is_a_clear_error(tmp_path, sft_model):
    # the fixture's barely trained policy names no shape yet, so rule:shapes_gold scores every answer 0
    with pytest.raises(ConfigError, match=r"round 1: judge 'rule:shapes_gold' decided no pair among 6 prompts x 2"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=1, judge="rule:shapes_gold"))
    assert {s["score"] for s in lines(tmp_path / "run" / "round-1" / "samples.jsonl")} == {0.0}
    assert FeedbackStore.sqlite(tmp_path / "run" / "feedback.db").count_judgments() == 0


def test_a_bad_judge_is_a_clear_error_before_any_work(tmp_path, sft_model):
    with pytest.raises(ConfigError, match=r"judge='rule:nope': no rule named 'nope'"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, judge="rule:nope"))
    missing = tmp_path / "no_reward_model"
    with pytest.raises(ConfigError, match=f"judge='{missing}'"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, judge=str(missing)))
    with pytest.raises(ConfigError, match="prompts_per_round"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=3, prompts_per_round=20))
    assert not (tmp_path / "run").exists()


def test_prompt_reuse_draws_each_round_from_the_whole_split():
    from modalign.recipes.iterative_dpo import round_prompts

    prompts = list(range(10))  # stand-ins: only their order is drawn
    disjoint = [round_prompts(prompts, r, 5, seed=3) for r in (1, 2)]
    assert sorted(disjoint[0] + disjoint[1]) == prompts  # two rounds of 5 split the 10 between them
    reused = [round_prompts(prompts, r, 5, seed=3, reuse=True) for r in (1, 2, 3)]
    assert reused[0] == disjoint[0]  # round 1 is the same either way
    assert all(len(set(chosen)) == 5 for chosen in reused)  # no prompt twice within a round
    assert reused[1] != reused[2] and set(reused[1]) & set(reused[0])  # later rounds draw afresh, may share
    whole = [round_prompts(prompts, r, 10, seed=3, reuse=True) for r in (1, 2, 3)]
    assert all(sorted(chosen) == prompts for chosen in whole)  # 3 rounds x 10 from 10 prompts


def test_prompt_reuse_runs_rounds_over_the_whole_split(tmp_path, sft_model):
    captions = [e for e in read_examples(sft_model[1], "train") if e.meta["task"] == "caption"]
    # every round judges all the caption prompts: more than disjoint rounds could have
    summary = run_iterative_dpo(config(tmp_path / "run", sft_model, prompts_per_round=len(captions),
                                       prompt_reuse=True))
    assert [row["prompts"] for row in summary["rounds"]] == [len(captions)] * 2
    for r in (1, 2):
        store = FeedbackStore.sqlite(tmp_path / "run" / f"round-{r}" / "feedback.db")
        assert {j.example_id for j in store.judgments()} <= {e.id for e in captions}
    assert {s["example_id"] for s in lines(tmp_path / "run" / "round-2" / "samples.jsonl")} == {e.id for e in captions}


def test_prompt_reuse_needs_only_one_round_of_prompts(tmp_path, sft_model):
    # the fixture data holds fewer than 3 x 20 caption prompts but at least 20; more than it holds is still an error
    with pytest.raises(ConfigError, match="fewer than prompts_per_round"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, rounds=3, prompts_per_round=10_000, prompt_reuse=True))
    with pytest.raises(ConfigError, match="rpo_alpha=-0.5"):
        run_iterative_dpo(config(tmp_path / "run", sft_model, rpo_alpha=-0.5))
    assert not (tmp_path / "run").exists()


def test_a_rerun_skips_finished_rounds_and_continues_a_killed_one(two_rounds, sft_model):
    out, summary = two_rounds
    everything = FeedbackStore.sqlite(out / "feedback.db")
    judgments = everything.count_judgments()
    round1 = (out / "round-1" / "dpo" / "summary.json").read_text()
    # nothing deleted: every round is skipped, nothing is added, the summary is the same
    assert run_iterative_dpo(config(out, sft_model)) == summary
    assert json.loads((out / "summary.json").read_text()) == summary
    assert everything.count_judgments() == judgments
    # killed during round 2's DPO: that DPO run alone is done again
    (out / "round-2" / "dpo" / "summary.json").unlink()
    again = run_iterative_dpo(config(out, sft_model))
    assert (out / "round-1" / "dpo" / "summary.json").read_text() == round1
    assert everything.count_judgments() == judgments and len(lines(out / "rounds.jsonl")) == 2
    assert again["rounds"][1]["pairs"] == summary["rounds"][1]["pairs"]
    # killed while round 2 collected feedback (after it reached out/feedback.db): not stored twice
    shutil.rmtree(out / "round-2")
    again = run_iterative_dpo(config(out, sft_model))
    assert everything.count_judgments() == judgments
    assert FeedbackStore.sqlite(out / "round-2" / "feedback.db").count_judgments() == summary["rounds"][1]["judgments"]
    assert [row["round"] for row in lines(out / "rounds.jsonl")] == [1, 2]
    # other settings on the same folder are refused, naming the field
    with pytest.raises(ConfigError, match="seed: 0 -> 1"):
        run_iterative_dpo(config(out, sft_model, seed=1))
