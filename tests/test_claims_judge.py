"""The ask primitive, claim verification, its cache and the judge reward (issue 19)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from modalign.data.dataset import read_examples
from modalign.feedback.judges.ask import Query, question_example, score_options
from modalign.models.inputs import MediaStore, encode_sft_example
from modalign.models.policy import create_tinyvlm
from modalign.reward.model import answer_token_logprobs

CORPUS = ["a large red circle on the left, a small blue square on the right. two high beeps.",
          "describe the scene.", "is there a red circle? yes no", "are there two beeps? yes no"] * 20
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            vision_hidden_size=32, audio_hidden_size=32, vision_layers=1, audio_layers=1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny ShapesWorld (train examples) and an untrained built-in policy."""
    from modalign.data.shapes import build_shapes_dataset

    root = build_shapes_dataset(tmp_path_factory.mktemp("claims") / "data", n_train=3, n_test=1, seed=0,
                                questions_per_scene=1)
    return root, read_examples(root, "train"), create_tinyvlm(CORPUS, vocab_size=200, seed=0, **TINY)


def count_calls(model, name: str) -> list:
    """Wrap `model.<name>` so each call is recorded (its first argument's batch size)."""
    calls, original = [], getattr(model, name)

    def counted(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()))
        calls.append(first.shape[0])
        return original(*args, **kwargs)

    setattr(model, name, counted)
    return calls


def plain_logprob(policy, media, query: Query, option: str) -> float:
    """The option's log-likelihood by hand: one unpacked forward of prompt + option, media from pixels."""
    encoded = encode_sft_example(policy.processor, media, question_example(query), 512, option)
    ids = encoded.input_ids.unsqueeze(0)
    logits = policy.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=encoded.pixel_values,
                          input_values=encoded.input_values).logits
    mask = torch.zeros_like(ids)
    mask[0, encoded.prompt_length :] = 1
    return float(answer_token_logprobs(logits, ids, mask).sum())


@pytest.mark.parametrize("packed", [True, False])
def test_score_options_equal_summed_token_logprobs_of_a_plain_forward(shapes, monkeypatch, packed):
    root, examples, policy = shapes
    if not packed:  # the path of models that cannot pack a prompt with its options
        monkeypatch.setattr("modalign.feedback.judges.ask.supports_shared_prefix", lambda model: False)
    media = MediaStore(root)
    captions = [e for e in examples if e.meta["task"] == "caption"]
    queries = [Query(captions[0], "is there a red circle?"), Query(captions[0], "are there two beeps?"),
               Query(captions[1], "is there a red circle?")]
    options = ["yes", "no", "a red circle"]
    encodes = count_calls(policy.model, "encode_media")
    scores = score_options(policy, queries, options, media)
    assert scores.shape == (3, 3)
    assert encodes == [2]  # one call, one row per distinct example: the two questions on captions[0] share it
    policy.model.encode_media = type(policy.model).encode_media.__get__(policy.model)
    with torch.no_grad():
        policy.model.eval()
        expected = torch.tensor([[plain_logprob(policy, media, q, o) for o in options] for q in queries])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-4)
    assert (scores < 0).all()
    assert not torch.equal(scores[0], scores[1])  # the question changes the scores


# ---- claims ------------------------------------------------------------------------------

from modalign.config import ConfigError  # noqa: E402
from modalign.data.records import Completion  # noqa: E402
from modalign.feedback.collect import write_feedback  # noqa: E402
from modalign.feedback.judges.cache import ClaimCache  # noqa: E402
from modalign.feedback.judges.claims import (  # noqa: E402
    ClaimJudge, ClaimJudgeSpec, ClaimResult, claim_score, judge_with_claims)
from modalign.feedback.judges.splitters import Claim, sentence_claims, shapes_claims  # noqa: E402
from modalign.feedback.store import FeedbackStore  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "nothing")


def test_the_shapes_splitter_asks_each_stated_fact_as_shapesworld_asks_it(shapes):
    claims = shapes_claims(shapes[1][0], "a large red circle on the left, a small circle. two high beeps.")
    assert claims == [
        Claim("a circle on the left", "what shape is on the left?", SHAPES, "circle"),
        Claim("the shape on the left is red", "what colour is the shape on the left?", COLOURS, "red"),
        Claim("the circle is large", "what size is the circle?", ("small", "large"), "large"),
        Claim("there is a circle"),  # no colour, no position: the template's yes/no question
        Claim("the circle is small", "what size is the circle?", ("small", "large"), "small"),
        Claim("there are two beeps", "how many beeps are there?", ("one", "two", "three"), "two"),
        Claim("the beeps are high", "are the beeps high or low?", ("low", "high"), "high"),
    ]


def test_the_sentence_splitter_cuts_at_sentence_ends_commas_and_and():
    text = "A dog sits on the grass and a cat sleeps. The sky is blue, clear; no clouds."
    assert sentence_claims(None, text) == ["A dog sits on the grass", "a cat sleeps", "The sky is blue", "clear",
                                           "no clouds"]


def test_a_claims_spec_parses_its_options_and_refuses_bad_ones(tmp_path):
    template = tmp_path / "q.txt"
    template.write_text("does the picture show that {claim}?")
    spec = ClaimJudgeSpec.parse(f"claims:self?splitter=sentences&template={template}&refute=3")
    assert (spec.model, spec.splitter, spec.refute_weight, spec.is_self) == ("self", "sentences", 3.0, True)
    assert spec.template_text() == "does the picture show that {claim}?"
    for bad in ("claims:", "claims:self?colour=red", "claims:self?refute=lots"):
        with pytest.raises(ConfigError, match="judge"):
            ClaimJudgeSpec.parse(bad)
    template.write_text("no placeholder")
    with pytest.raises(ConfigError, match="no {claim} placeholder"):
        spec.template_text()


def test_rlaif_v_scoring_counts_refuted_claims_only():
    said = [Claim(f"there is a {s}") for s in ("circle", "square", "triangle", "star")]
    results = [ClaimResult(c, answer, 0.5) for c, answer in zip(said, ("yes", "yes", "yes", "no"))]  # 3 verified
    spec = ClaimJudgeSpec.parse("claims:self?verified=0&refute=1")
    assert (spec.verified_weight, spec.refute_weight) == (0.0, 1.0)
    assert claim_score(results, spec.verified_weight, spec.refute_weight) == -1.0  # RLAIF-V: -refuted
    assert claim_score(results) == 3 - 2 * 1  # the default: verified - 2 x refuted
    extra = results + [ClaimResult(Claim("there is a heart"), "yes", 0.9)]  # one more verified claim
    assert claim_score(extra) == 4 - 2 * 1 and claim_score(extra, 0.0, 1.0) == -1.0  # pays by default only
    with pytest.raises(ConfigError, match="verified='x' is not a number"):
        ClaimJudgeSpec.parse("claims:self?verified=x")

def forward_calls(model) -> list:
    """Record every forward pass of `model` (the judge's cost)."""
    calls, original = [], model.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = counted
    return calls


def test_cached_claims_are_not_asked_again(shapes):
    root, examples, policy = shapes
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "tiny")
    example = next(e for e in examples if e.meta["task"] == "caption")
    first = ["a large red circle on the left. two high beeps.", "a large red circle on the left. one high beep."]
    calls = forward_calls(policy.model)
    verdicts = judge.verify([example, example], first)
    # 5 distinct questions (shape, colour, size on the left; beeps; pitch): the shared ones asked once,
    # in one forward per options set (shapes, colours, sizes, counts, pitches)
    assert judge.cache.asked == 5 and len(calls) == 5
    assert [len(v.results) for v in verdicts] == [5, 5]
    again = judge.verify([example, example], list(reversed(first)))
    assert judge.cache.asked == 5 and len(calls) == 5  # nothing asked: every claim came from the cache
    assert [v.to_dict() for v in again] == [v.to_dict() for v in reversed(verdicts)]
    judge.verify([example], ["a small red circle on the left."])  # "small": the size question, answered already
    assert judge.cache.asked == 5 and len(calls) == 5
    judge.verify([example], ["a large red circle on the left, a red square on the right."])
    assert judge.cache.asked == 7 and len(calls) == 7  # new: shape and colour on the right
    other = ClaimJudge(policy, MediaStore(root), "shapes", "another judge", cache=judge.cache)
    other.verify([example], first[:1])  # another judge's answers are its own: asked again
    assert judge.cache.asked == 12
    del policy.model.forward


def test_scores_pairs_and_ties_follow_the_verified_and_refuted_claims(shapes, tmp_path):
    root, examples, policy = shapes
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "tiny")
    example = next(e for e in examples if e.meta["task"] == "caption")
    red, blue, green = ("a large red circle on the left.", "a large blue circle on the left.",
                        "a large green circle on the left.")
    judge_says = {"what shape is on the left?": "circle", "what colour is the shape on the left?": "red",
                  "what size is the circle?": "large"}
    for claim in shapes_claims(example, red) + shapes_claims(example, blue) + shapes_claims(example, green):
        answer = judge_says[claim.question]  # the judge's log-likelihoods, put in its cache: nothing is asked
        judge.cache.put({judge._key(example, claim): [0.0 if o == answer else -5.0 for o in claim.options]})
    calls = forward_calls(policy.model)
    completions = [Completion(example.id, text) for text in (red, blue, green, red)]
    feedback, scores = judge_with_claims(judge, [example], completions, k=4)
    assert calls == [] and scores == [3.0, 0.0, 0.0, 3.0]  # 3 verified; 2 verified - 2 x 1 refuted
    pairs = [([c.text for c in group], order, tie) for group, ((_, order),), tie in
             zip(feedback.groups, feedback.verdicts, feedback.ties)]
    assert pairs == [([red, blue], (0, 1), False), ([red, green], (0, 1), False), ([blue, green], (0, 1), True)]
    store = FeedbackStore.sqlite(tmp_path / "feedback.db")
    write_feedback(store, feedback, str(root))
    stored = store.judgments()
    assert [j.choice for j in stored] == ["a", "a", "tie"] and {j.annotator for j in stored} == {"claims:tiny"}
    provenance = stored[0].provenance
    assert provenance["judge"] == "claims:tiny" and provenance["template_sha256"] == judge.template_sha
    assert [a["score"] for a in provenance["answers"]] == [3.0, 0.0]
    refuted = [c for c in provenance["answers"][1]["claims"] if not c["verified"]]
    assert refuted == [{"claim": "the shape on the left is blue", "question": "what colour is the shape on the left?",
                        "expected": "blue", "answer": "red", "p_expected": round(math.exp(-5) / (1 + 3 * math.exp(-5)), 4),
                        "verified": False}]
    del policy.model.forward


def test_iterative_dpo_with_claims_self_stores_the_policys_own_verdicts(tmp_path, sft_model):
    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    model, data = sft_model
    out = tmp_path / "run"
    summary = run_iterative_dpo(IterativeDPOConfig(
        out=str(out), policy=str(model), data=str(data), task="caption", rounds=1, prompts_per_round=6,
        samples_per_prompt=3, batch_size=2, max_new_tokens=16, eval_examples=1,
        judge="claims:self?splitter=sentences"))  # the tiny SFT's answers are not yet ShapesWorld's grammar
    judgments = FeedbackStore.sqlite(out / "feedback.db").judgments()
    assert summary["judgments"] == len(judgments) > 0
    assert {j.annotator for j in judgments} == {f"claims:{model}"}  # round 1's policy: the SFT one
    for judgment in judgments:
        answers = judgment.provenance["answers"]
        scores = [answer["score"] for answer in answers]
        assert judgment.choice == ("tie" if scores[0] == scores[1] else "a") and scores[0] >= scores[1]
        for answer in answers:
            assert answer["score"] == answer["verified"] - 2 * answer["refuted"]
            assert all(c["question"] == "" and c["expected"] == "yes" for c in answer["claims"])  # the template's
    asked = (out / "claims-cache.jsonl").read_text().splitlines()
    assert len(asked) == len({json.loads(line)["key"] for line in asked}) > 0  # each question asked once


def test_a_judge_reward_scores_answers_by_their_claims_and_reuses_its_cache(shapes):
    from modalign.rl.rewards import ClaimJudgeSource, bind_judges, reward_source_from

    root, examples, policy = shapes
    source = reward_source_from("0.5*judge:claims:self + 1*rule:format")
    bind_judges(source, policy, MediaStore(root))
    example = next(e for e in examples if e.meta["task"] == "caption")
    answers = ["a large red circle on the left.", "a small blue square on the right. two low beeps."]
    rewards = source([example, example], answers, None, None)
    claims = source.parts[0][2]
    assert isinstance(claims, ClaimJudgeSource) and claims.judge.name.endswith("@start")  # a frozen copy judges
    expected = ClaimJudge(policy, MediaStore(root), "shapes", "check").scores([example, example], answers)
    torch.testing.assert_close(rewards, 0.5 * torch.tensor(expected) + 1.0)
    asked = claims.judge.cache.asked
    source([example], answers[:1], None, None)
    assert claims.judge.cache.asked == asked  # scored from the cache
    with pytest.raises(ConfigError, match="judge:claims"):
        reward_source_from("judge:model:x")


@pytest.mark.parametrize("selection", ["all", "random"])
def test_a_loop_round_with_claims_self_judges_and_trains_on_the_verdicts(tmp_path, sft_model, selection):
    from modalign.recipes.loop import LoopConfig, run_loop

    model, data = sft_model
    out = tmp_path / "loop"
    summary = run_loop(LoopConfig(
        out=str(out), policy=str(model), data=str(data), rounds=1, judge="claims:self?splitter=sentences",
        selection=selection, pairs_per_round=4, prompts_per_round=4, samples_per_prompt=3, reward_steps=4,
        rl_steps=1, prompts_per_step=2, rl_samples_per_prompt=2, max_new_tokens=8, eval_examples=2, eval_samples=1))
    judgments = FeedbackStore.sqlite(out / "feedback.db").judgments()
    assert summary["judgments"] == len(judgments) > 0
    assert {j.annotator for j in judgments} == {f"claims:{model}"}
    assert all(j.provenance["splitter"] == "sentences" for j in judgments)
    feedback = json.loads((out / "round-1" / "feedback.json").read_text())
    assert feedback["claims_asked"] == len((out / "claims-cache.jsonl").read_text().splitlines()) > 0
    assert (out / "round-1" / "rl" / "summary.json").is_file()


def test_the_model_splitter_keeps_only_claims_made_of_the_answers_words(shapes):
    from modalign.feedback.judges.splitters import ModelSplitter

    root, examples, policy = shapes
    splitter = ModelSplitter(policy, max_new_tokens=12)
    answer = "a red circle on the left and two beeps."
    claims = splitter(examples[0], answer)
    assert splitter.generations == 1 and claims
    words = set(answer.rstrip(".").split())
    assert all(set(claim.lower().split()) <= words for claim in claims)  # an untrained judge: the fallback


def test_self_both_averages_the_two_judges_probabilities_and_best_worst_keeps_one_pair(shapes):
    root, examples, policy = shapes
    example = next(e for e in examples if e.meta["task"] == "caption")
    judge = ClaimJudge(policy, MediaStore(root), "shapes", "round-2", anchor=(policy, "start"), score="soft",
                       pairs="best-worst")
    red, blue = "a red circle on the left.", "a blue circle on the left."
    says = {"round-2": {"circle": 0.9, "red": 0.6, "green": 0.2, "blue": 0.1, "yellow": 0.1},
            "start": {"circle": 0.7, "red": 0.1, "green": 0.1, "blue": 0.7, "yellow": 0.1}}
    for name, probabilities in says.items():  # each judge's log-likelihoods, in the cache: nothing is asked
        for claim in shapes_claims(example, red) + shapes_claims(example, blue):
            rest = (1 - probabilities["circle"]) / (len(claim.options) - 1)
            judge.cache.put({judge._key(example, claim, name): [math.log(probabilities.get(o, rest))
                                                                 for o in claim.options]})
    calls = forward_calls(policy.model)
    verified_red, verified_blue = judge.verify([example, example], [red, blue])
    assert calls == []
    # the mean of the two judges: circle (0.9 + 0.7) / 2 = 0.8; red (0.6 + 0.1) / 2 = 0.35 < blue (0.1 + 0.7) / 2 = 0.4
    assert [r.answer for r in verified_red.results] == ["circle", "blue"]
    assert [round(r.probability, 4) for r in verified_red.results] == [0.8, 0.35]
    assert verified_red.score == pytest.approx(0.8 + 0.35 - 2 * (0.2 + 0.65))
    assert verified_blue.score == pytest.approx(0.8 + 0.4 - 2 * (0.2 + 0.6))
    completions = [Completion(example.id, text) for text in (red, blue, red, "a green circle on the left.")]
    feedback, scores = judge_with_claims(judge, [example], completions, k=4)  # green: the same questions, cached
    assert scores[3] == pytest.approx(0.8 + 0.15 - 2 * (0.2 + 0.85))  # the lowest
    assert [[c.text for c in group] for group in feedback.groups] == [[blue, completions[3].text]]  # best vs worst
    assert feedback.provenance[0]["anchor"] == "start" and feedback.provenance[0]["pairs"] == "best-worst"
    del policy.model.forward


def test_claims_self_judges_with_the_start_policy_when_asked(shapes, sft_model):
    from modalign.feedback.judges.claims import claim_judge

    root, examples, policy = shapes
    start = str(sft_model[0])
    media = MediaStore(root)
    judge = claim_judge("claims:self?self=start", examples, media, policy, "round-2", start=start)
    assert judge.name == start and judge.policy is not policy and len(judge.voters) == 1
    both = claim_judge("claims:self?self=both", examples, media, policy, "round-2", start=start)
    assert both.policy is policy and [name for _, name in both.voters] == ["round-2", start]
    first = claim_judge("claims:self?self=both", examples, media, policy, start, start=start)
    assert first.policy is policy and len(first.voters) == 1  # round 1: the round's policy is the start one
