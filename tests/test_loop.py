"""`modalign loop`: rounds of sample -> feedback -> reward model -> RL -> evaluate, resumable; active selection;
feedback from people through the annotation app's queue (answered here by simulated raters over HTTP)."""

from __future__ import annotations

import json
import random
import threading

import httpx
import pytest

from modalign.data.dataset import read_examples
from modalign.data.records import Completion
from modalign.feedback.select import CandidatePair, candidate_pairs, select_pairs
from modalign.feedback.store import FeedbackStore
from modalign.recipes.loop import LoopConfig, run_loop

TINY = dict(prompts_per_round=6, samples_per_prompt=3, reward_steps=4, rl_steps=2, prompts_per_step=2,
            rl_samples_per_prompt=2, max_new_tokens=8, eval_examples=4, eval_samples=2, kl_budget=5.0)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loop_rounds_chain_and_resume(sft_model, tmp_path):
    model, data = sft_model
    cfg = LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(data), rounds=2, **TINY)
    summary = run_loop(cfg)
    rows = lines(tmp_path / "loop" / "rounds.jsonl")
    assert [row["round"] for row in rows] == [1, 2]
    assert rows[1]["policy"] == rows[0]["model"]  # round 2 starts from round 1's policy
    assert all(row["judgments"] > 0 for row in rows)
    held = FeedbackStore.sqlite(tmp_path / "loop" / "feedback.db").count_judgments()
    assert held == summary["judgments"] == sum(row["judgments"] for row in rows)
    assert "hallucination_rate" in summary["start"] and "hallucination_rate" in rows[-1]["eval"]
    for stage in ("samples.jsonl", "feedback.json", "reward/summary.json", "rl/summary.json", "eval.json"):
        assert (tmp_path / "loop" / "round-2" / stage).is_file(), stage

    done = (tmp_path / "loop" / "round-1" / "rl" / "summary.json").stat().st_mtime_ns
    more = run_loop(LoopConfig(**{**cfg.__dict__, "rounds": 3}))  # resume: only round 3 runs
    assert (tmp_path / "loop" / "round-1" / "rl" / "summary.json").stat().st_mtime_ns == done
    assert [row["round"] for row in more["rounds"]] == [1, 2, 3]
    assert more["rounds"][:2] == rows
    with pytest.raises(Exception, match="other settings"):
        run_loop(LoopConfig(**{**cfg.__dict__, "lr": 1.0}))


def pair(example, a, b, margin):
    return CandidatePair(example, Completion(example.id, a, "p", {}), Completion(example.id, b, "p", {}), margin)


def test_margin_selection_takes_the_closest_pairs(sft_model):
    _, data = sft_model
    e1, e2, e3 = read_examples(data, "train")[:3]
    grouped = [[pair(e1, "x", "y", 0.9), pair(e1, "x", "z", 0.2)], [pair(e2, "x", "y", 0.05)], [pair(e3, "x", "y", 0.5)]]
    chosen = select_pairs(grouped, 2, "margin", seed=0)
    assert [(p.example.id, p.priority) for p in chosen] == [(e2.id, 0.05), (e1.id, 0.2)]
    assert len(select_pairs(grouped, 2, "random", seed=0)) == 2
    assert len({p.example.id for p in select_pairs(grouped, 3, "random", seed=1)}) == 3  # one pair per prompt


def test_candidate_pairs_are_the_distinct_answers_of_a_prompt(sft_model):
    _, data = sft_model
    e1, e2 = read_examples(data, "train")[:2]
    texts = ["a", "a", "b", "c", "c", "c"]
    completions = [Completion(e.id, t, "p", {}) for e, t in zip([e1] * 3 + [e2] * 3, texts)]
    grouped = candidate_pairs([e1, e2], completions, 3, scores=[0.0, 1.0, 3.0, 0, 0, 0])
    assert [(p.a.text, p.b.text, p.priority) for p in grouped[0]] == [("a", "b", 2.0)]  # the later "a" (score 1)
    assert grouped[1] == []  # one distinct answer: no pair


def simulated_annotator(base_url, token, data, stop):
    """A rater at the keyboard: takes the next task over HTTP and picks the answer with the higher gold utility."""
    from modalign.feedback.simulated import gold_utility

    examples = {e.id: e for e in read_examples(data, "train")}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        while not stop.is_set():
            task = client.get("/api/next").json()["task"]
            if task is None:
                stop.wait(0.2)
                continue
            a, b = (gold_utility(examples[task["example_id"]], c["text"]) for c in task["candidates"])
            choice = "a" if a > b else "b" if b > a else "tie"
            client.post(f"/api/tasks/{task['id']}/judgment", json={"choice": choice}).raise_for_status()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_loop_waits_for_people_and_trains_on_their_judgments(sft_model, tmp_path, request, backend):
    """The loop's default store (OUT/feedback.db), and `store=` a PostgreSQL database that the app serves."""
    from annotation_support import thread_server

    from modalign.feedback.server import create_account

    model, data = sft_model
    out = tmp_path / "loop"
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else ""
    store = FeedbackStore(url) if url else FeedbackStore.sqlite(out / "feedback.db")
    tokens = {name: create_account(store, name) for name in ("ann", "bob")}
    stop = threading.Event()
    with thread_server(store.url) as base_url:
        raters = [threading.Thread(target=simulated_annotator, args=(base_url, token, data, stop), daemon=True)
                  for token in tokens.values()]
        for rater in raters:
            rater.start()
        try:
            summary = run_loop(LoopConfig(out=str(out), policy=str(model), data=str(data), rounds=1, judge="people",
                                          annotators="ann,bob", overlap=2, selection="random", pairs_per_round=4,
                                          store=url, **TINY))
        finally:
            stop.set()
    tasks = json.loads((out / "round-1" / "tasks.json").read_text())["task_ids"]
    judged = [j for j in store.judgments(kind="pairwise") if j.task_id in set(tasks)]
    assert 0 < len(tasks) <= 4 and len(judged) == 2 * len(tasks)  # overlap 2: both answered every task
    assert summary["rounds"][0]["judgments"] == len(judged)
    assert json.loads((out / "round-1" / "reward" / "summary.json").read_text())["train_pairs"] > 0
    assert (out / "feedback.db").is_file() == (backend == "sqlite")  # nothing written beside a named store
    if backend == "postgres":
        assert summary["feedback"] == store.display_url and ":***@" in summary["feedback"]  # password masked


def test_ensemble_priority_is_minus_the_members_disagreement(sft_model):
    _, data = sft_model
    e = read_examples(data, "train")[0]
    completions = [Completion(e.id, t, "p", {}) for t in ("x", "y")]
    # member 1: r(x) = r(y) -> P(x > y) = 0.5; member 2: r(x) - r(y) = 2 -> 0.8808; std (n-1) = 0.3808 / sqrt 2
    grouped = candidate_pairs([e], completions, 2, scores=[[0.0, 0.0], [2.0, 0.0]])
    assert grouped[0][0].priority == pytest.approx(-0.26927, abs=1e-4)


def test_top_selection_pairs_the_best_answer_with_its_least_certain_rival(sft_model):
    _, data = sft_model
    e = read_examples(data, "train")[0]
    completions = [Completion(e.id, t, "p", {}) for t in ("best", "sure loser", "close rival")]
    # mean rewards 2, -1, 1.5: "best" is the top; members agree it beats "sure loser" (by 3 each) but
    # disagree on "close rival" (by 0 and by 1)
    scores = [[2.0, -1.0, 2.0], [2.0, -1.0, 1.0]]
    grouped = candidate_pairs([e], completions, 3, scores=scores, against_top=True)
    assert [(p.a.text, p.b.text) for p in grouped[0]] == [("best", "sure loser"), ("best", "close rival")]
    chosen = select_pairs(grouped, 1, "top", seed=0)
    assert {chosen[0].a.text, chosen[0].b.text} == {"best", "close rival"}
    # the favourite is not always shown first: sides are a coin flip per pair (no built-in position bias)
    firsts = [select_pairs(grouped, 1, "top", seed=s)[0].a.text for s in range(40)]
    assert 10 <= firsts.count("best") <= 30


@pytest.mark.parametrize("selection", ["ensemble", "top"])
def test_loop_with_ensemble_selection(sft_model, tmp_path, selection):
    model, data = sft_model
    summary = run_loop(LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(data), rounds=2,
                                  selection=selection, pairs_per_round=3, ensemble_members=2, **TINY))
    assert all(0 < row["feedback"]["prompts"] <= 3 for row in summary["rounds"])  # pairs judged: the budget
