"""Model judges: both orders asked, position-inconsistent pairs tied or dropped, provenance stored, rankings and
ratings, template files, `modalign judge` end to end on a tiny built-in model, a model judge in iterative DPO."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from modalign.cli import app
from modalign.config import ConfigError
from modalign.data.dataset import read_examples
from modalign.data.records import Completion, Example, user_turn
from modalign.data.shapes.world import COLOURS
from modalign.feedback.collect import write_feedback
from modalign.feedback.judges.model_judge import ModelJudge, judge_group, judge_with_model, load_model_judge
from modalign.feedback.judges.templates import DEFAULTS, load_template
from modalign.feedback.judgments import PairwiseJudgment, RankingJudgment, RatingJudgment
from modalign.feedback.schema import AnnotatorRow
from modalign.feedback.store import FeedbackStore
from modalign.recipes.judge import store_verdicts

from hf_tiny import shapes, tiny  # noqa: F401  (module fixtures: a tiny Hugging Face VLM, built once)

EXAMPLE = Example("scene-1", (user_turn("Describe the scene."),))
SHOWN = re.compile(r"Answer A: (.*)\nAnswer B: (.*)\n")


class RecordingAsk:
    """A stand-in judge model: records the answers each pairwise question shows, in order, and scores the
    options (A, B) by `prefer(answer_a, answer_b)`."""

    def __init__(self, prefer):
        self.prefer, self.shown = prefer, []

    def __call__(self, queries, options):
        rows = []
        for query in queries:
            a, b = SHOWN.search(query.question).groups()
            self.shown.append((a, b))
            rows.append(self.prefer(a, b))
        return torch.tensor(rows)


def first_shown(a: str, b: str) -> list[float]:
    return [0.0, -1.0]  # always "A": pure position bias


def likes_red(a: str, b: str) -> list[float]:
    return [0.0 if "red" in a else -1.0, 0.0 if "red" in b else -1.0]


def fake_judge(prefer, disagreement: str = "tie") -> ModelJudge:
    return ModelJudge("model:fake", RecordingAsk(prefer), DEFAULTS["pairwise"], DEFAULTS["rating"], disagreement)


def test_both_orders_are_asked_and_a_disagreement_is_a_tie_or_dropped():
    judge = fake_judge(first_shown)
    verdicts, _ = judge_group(judge, EXAMPLE, ["a red circle", "a blue square"], "pairwise")
    assert judge.ask.shown == [("a red circle", "a blue square"), ("a blue square", "a red circle")]
    assert [(v.candidates, v.choice) for v in verdicts] == [((0, 1), "tie")]
    assert verdicts[0].provenance["consistent"] is False
    assert [o["winner"] for o in verdicts[0].provenance["orders"]] == ["x", "y"]
    assert judge.counts == {"questions": 2, "forwards": 2, "both_orders": 1, "position_inconsistent": 1}

    dropping = fake_judge(first_shown, disagreement="drop")
    assert judge_group(dropping, EXAMPLE, ["a red circle", "a blue square"], "pairwise")[0] == []
    assert len(dropping.ask.shown) == 2  # asked in both orders all the same

    for texts, choice in ((["a red circle", "a blue square"], "a"), (["a blue square", "a red circle"], "b")):
        consistent = fake_judge(likes_red)
        verdicts, _ = judge_group(consistent, EXAMPLE, texts, "pairwise")
        assert [v.choice for v in verdicts] == [choice] and verdicts[0].provenance["consistent"]
        assert consistent.ask.shown == [tuple(texts), tuple(reversed(texts))]


def test_provenance_is_stored_with_the_judgment(tmp_path):
    store = FeedbackStore.sqlite(tmp_path / "feedback.db")
    texts = ["a red circle", "a blue square", "a green triangle"]
    judge = fake_judge(first_shown)
    verdicts, _ = judge_group(judge, EXAMPLE, texts, "pairwise")
    answers = {EXAMPLE.id: [Completion(EXAMPLE.id, t) for t in texts]}
    assert store_verdicts(store, judge.name, [EXAMPLE], answers, {EXAMPLE.id: verdicts}, str(tmp_path)) == 3
    stored = store.judgments(annotator="model:fake")
    assert len(stored) == 3 and all(isinstance(j, PairwiseJudgment) and j.choice == "tie" for j in stored)
    origin = stored[0].provenance
    assert origin["judge"] == "model:fake" and origin["template"] == DEFAULTS["pairwise"].sha
    assert origin["task"] == "pairwise" and origin["disagreement"] == "tie"
    assert [o["logprobs"] for o in origin["orders"]] == [[0.0, -1.0], [0.0, -1.0]]
    assert not any(j.choice != "tie" for j in stored)
    assert store.preference_pairs()[0].tie  # a tie is stored as a tie, beside human and simulated judgments

    # the loop's path: a ranking per prompt through `write_feedback`, its pairs' both orders in the provenance
    ranked, _ = judge_with_model(fake_judge(likes_red), [EXAMPLE], answers[EXAMPLE.id][:2], k=2)
    write_feedback(store, ranked, str(tmp_path))
    ranking = store.judgments(kind="ranking")[0]
    assert isinstance(ranking, RankingJudgment) and ranking.provenance["ranking_from"] == "pairwise"
    assert store.get_candidate(ranking.ranking[0]).text == "a red circle"
    assert ranking.provenance["pairs"][0][2]["orders"][1]["shown"] == "yx"


def test_rankings_from_pairs_or_from_ratings():
    texts = ["a blue square", "a red circle", "two red circles"]
    judge = fake_judge(lambda a, b: [a.count("red") - 0.5 * len(a) / 100, b.count("red") - 0.5 * len(b) / 100])
    verdicts, scores = judge_group(judge, EXAMPLE, texts, "ranking")
    assert len(judge.ask.shown) == 6  # 3 pairs x 2 orders
    assert verdicts[0].candidates[-1] == 0 and scores[0] == min(scores)

    # ratings: the most likely option is the rating, the expected rating ranks; hand-computed for p = (.1, .2, .7)
    rows = {"a blue square": [0.7, 0.2, 0.1], "a red circle": [0.1, 0.2, 0.7], "two red circles": [0.2, 0.6, 0.2]}

    def rate(queries, options):
        return torch.tensor([rows[q.question.split("Answer: ")[1].split("\n")[0]] for q in queries]).log()

    rating = load_template("rating")
    rater = ModelJudge("model:fake", rate, DEFAULTS["pairwise"], rating.__class__("rating", rating.prompt, ("1", "2", "3")),
                       ranking_from="rating")
    ratings, expected = judge_group(rater, EXAMPLE, texts, "rating")
    assert [v.rating for v in ratings] == [1, 3, 2] and all(v.scale == 3 for v in ratings)
    assert expected[1] == pytest.approx(0.1 * 1 + 0.2 * 2 + 0.7 * 3)
    ranking, _ = judge_group(rater, EXAMPLE, texts, "ranking")
    assert ranking[0].candidates == (1, 2, 0) and rater.counts["questions"] == 6  # n questions per ranking


def test_a_template_file_replaces_the_prompt_and_options(tmp_path):
    file = tmp_path / "judge.yaml"
    file.write_text("prompt: '{question} first: {answer_a} second: {answer_b} which?'\noptions: [first, second]\n")
    template = load_template("pairwise", str(file))
    assert template.options == ("first", "second") and template.sha != DEFAULTS["pairwise"].sha
    assert template.render(question="q", answer_a="x {y}", answer_b="z") == "q first: x {y} second: z which?"
    (tmp_path / "plain.txt").write_text("{question}\n{answer}\nscore it")
    assert load_template("rating", str(tmp_path / "plain.txt")).options == DEFAULTS["rating"].options
    (tmp_path / "bool.yaml").write_text("prompt: '{question} {answer} right?'\noptions: [no, yes]\n")
    with pytest.raises(ConfigError, match="bool.yaml.*quote"):  # YAML's bare no/yes are booleans
        load_template("rating", str(tmp_path / "bool.yaml"))
    with pytest.raises(ConfigError, match="bad.txt.*answer_a"):
        (tmp_path / "bad.txt").write_text("{question} {answer}")
        load_template("pairwise", str(tmp_path / "bad.txt"))


def person_judges(store: FeedbackStore, example: Example, better: str, worse: str, data) -> None:
    """A person (an annotator account) prefers `better` on answers stored as their own candidates."""
    with Session(store.engine) as session, session.begin():
        session.add(AnnotatorRow(name="ann", token_hash="x"))
    store.add_examples([example], root=data)
    a, b = store.add_candidates([Completion(example.id, better), Completion(example.id, worse)])
    store.add_judgment(PairwiseJudgment(example_id=example.id, annotator="ann", candidate_a=a, candidate_b=b,
                                        choice="a"))


def test_judge_command_end_to_end_on_a_tiny_model(sft_model, tmp_path):
    model, data = sft_model
    captions = [e for e in read_examples(data, "test") if e.meta.get("task") == "caption"][:3]
    rows = []
    for example in captions:  # the reference caption against one whose every colour is wrong (hallucinated)
        wrong = re.sub("|".join(COLOURS), lambda m: COLOURS[(COLOURS.index(m.group()) + 1) % len(COLOURS)],
                       example.answer)
        rows += [{"example_id": example.id, "text": example.answer}, {"example_id": example.id, "text": wrong}]
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = FeedbackStore.sqlite(tmp_path / "store.db")
    person_judges(store, captions[0], rows[0]["text"], rows[1]["text"], data)

    result = CliRunner().invoke(app, ["judge", "--judge", f"model:{model}", "--samples", str(tmp_path / "samples"),
                                      "--data", str(data), "--out", str(tmp_path / "run"),
                                      "--set", f"store={tmp_path / 'store.db'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    report = summary["judge_report"]
    assert summary["examples"] == 3 and summary["judgments"] + report["position_inconsistent"] >= 3
    assert report["pairs"] == 3 and report["gold_pairs"] == 3 and 0.0 <= report["gold_accuracy"] <= 1.0
    assert report["panel_pairs"] == 3 and report["panel_raters"] == 3 and 0.0 <= report["panel_agreement"] <= 1.0
    assert report["people_pairs"] == 1 and report["people_agreement"] in (0.0, 1.0)
    assert report["forwards"] == 6 and report["forwards_per_judgment"] == pytest.approx(6 / summary["judgments"])
    stored = store.judgments(annotator=f"model:{model}")
    assert len(stored) == summary["judgments"] and all(len(j.provenance["orders"]) == 2 for j in stored)

    html = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(html)]).exit_code == 0
    assert "Model judge" in html.read_text() and "position_inconsistent_share" in html.read_text()


def test_judge_command_rates_and_names_bad_input(sft_model, tmp_path):
    model, data = sft_model
    example = read_examples(data, "test")[0]
    samples = tmp_path / "answers.jsonl"
    samples.write_text(json.dumps({"example_id": example.id, "text": "a red circle"}) + "\n")
    ok = CliRunner().invoke(app, ["judge", "--judge", f"model:{model}", "--samples", str(samples), "--data", str(data),
                                  "--out", str(tmp_path / "run"), "--set", "task=rating"])
    assert ok.exit_code == 0, ok.output
    stored = FeedbackStore.sqlite(tmp_path / "run" / "feedback.db").judgments()
    assert len(stored) == 1 and isinstance(stored[0], RatingJudgment) and 1 <= stored[0].ratings["overall"] <= 5
    origin = stored[0].provenance
    assert len(origin["logprobs"]) == 5 and 1.0 <= origin["expected"] <= 5.0
    assert stored[0].ratings["overall"] == 1 + max(range(5), key=lambda i: origin["logprobs"][i])

    samples.write_text(json.dumps({"example_id": "nope", "text": "x"}) + "\n")
    bad = CliRunner().invoke(app, ["judge", "--judge", f"model:{model}", "--samples", str(samples), "--data", str(data),
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "'nope'" in bad.output and not (tmp_path / "bad").exists()


def test_iterative_dpo_with_a_model_judge_stores_its_rankings(sft_model, tmp_path):
    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    model, data = sft_model
    summary = run_iterative_dpo(IterativeDPOConfig(
        out=str(tmp_path / "run"), policy=str(model), data=str(data), task="caption", rounds=1, prompts_per_round=4,
        samples_per_prompt=2, batch_size=2, max_new_tokens=10, eval_examples=1, judge=f"model:{model}",
        judge_ranking="rating"))  # the untrained tiny judge is all position bias: its pairs would all tie
    store = FeedbackStore.sqlite(tmp_path / "run" / "feedback.db")
    judgments = store.judgments()
    assert judgments and all(j.annotator == f"model:{model}" and j.provenance["ranking_from"] == "rating"
                             for j in judgments)
    report = summary["rounds"][0]["judge_report"]
    assert report["judgments"] == len(judgments) == summary["rounds"][0]["pairs"]
    samples = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "samples.jsonl").read_text().splitlines()]
    distinct = sum(len({s["text"] for s in samples if s["example_id"] == i}) == 2 for i in {s["example_id"] for s in samples})
    assert report["questions"] == report["forwards"] == 2 * distinct  # one question per answer, options packed
    for judgment in judgments:  # the ranking follows the expected ratings written as the answers' scores
        best, worst = (store.get_candidate(i).text for i in judgment.ranking)
        score = {s["text"]: s["score"] for s in samples if s["example_id"] == judgment.example_id}
        assert score[best] > score[worst]


def test_loop_round_with_a_model_judge_on_selected_pairs(sft_model, tmp_path):
    from modalign.recipes.loop import LoopConfig, collect_round_feedback

    model, data = sft_model
    cfg = LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(data), task="caption",
                     prompts_per_round=4, samples_per_prompt=2, selection="random", pairs_per_round=3,
                     max_new_tokens=10, judge=f"model:{model}", judge_disagreement="drop")
    store = FeedbackStore.sqlite(tmp_path / "loop" / "feedback.db")
    stats = collect_round_feedback(cfg, 1, str(model), store, 0)
    report = stats["judge_report"]
    assert report["task"] == "pairwise" and report["questions"] == 2 * report["both_orders"] <= 6
    # dropped pairs are not stored: what is stored is every pair whose two orders agreed
    stored = store.judgments()
    assert len(stored) == stats["judgments"] == report["judgments"] == report["both_orders"] - report["position_inconsistent"]
    assert all(isinstance(j, PairwiseJudgment) and j.provenance["consistent"] for j in stored)


def test_a_hugging_face_vlm_judges_through_the_same_path(tiny):
    model, data = tiny("qwen2_vl")
    judge = load_model_judge(f"model:{model}", str(data), disagreement="tie")
    example = read_examples(data, "test")[0]
    verdicts, _ = judge_group(judge, example, ["a red circle", "a blue square"], "pairwise")
    assert len(verdicts) == 1 and verdicts[0].choice in ("a", "b", "tie")
    orders = verdicts[0].provenance["orders"]
    assert [o["shown"] for o in orders] == ["xy", "yx"] and all(math.isfinite(v) for o in orders for v in o["logprobs"])
    assert judge.counts["questions"] == 2 and judge.counts["forwards"] == (2 if judge.packed else 4)


def test_modalign_report_finds_the_judge_reports_of_a_loop_and_of_iterative_dpo():
    from modalign.feedback.judges.report import judge_reports

    loop = {"rounds": [{"round": 1, "feedback": {"judge_report": {"gold_accuracy": 0.75}}}, {"round": 2, "feedback": {}}]}
    iterative = {"rounds": [{"round": 1, "judge_report": {"position_inconsistent_share": 0.5}}]}
    assert judge_reports(loop) == {"round 1": {"gold_accuracy": 0.75}}
    assert judge_reports(iterative) == {"round 1": {"position_inconsistent_share": 0.5}}
    assert judge_reports({"judge_report": {"pairs": 3}}) == {"judge": {"pairs": 3}}


def test_answer_files_are_read_line_by_line_naming_a_bad_line(tmp_path):
    """`modalign judge` reads answers with the datasets' JSONL reader (`data.dataset.jsonl_rows`): blank lines
    are skipped but counted, an example's repeated answer is one answer, a bad line is named by file and line."""
    from modalign.data.records import RecordError
    from modalign.recipes.judge import read_answers

    samples = tmp_path / "answers.jsonl"
    samples.write_text('{"example_id": "e1", "text": "a"}\n\n{"example_id": "e1", "text": "b "}\n'
                       '{"example_id": "e1", "text": "a"}\n')
    assert [answer.text for answer in read_answers(str(samples))["e1"]] == ["a", "b"]
    samples.write_text('{"example_id": "e1", "text": "a"}\n\n{oops\n')
    with pytest.raises(RecordError, match=r"answers\.jsonl:3: not valid JSON"):
        read_answers(str(samples))
    samples.write_text('\n["e1", "a"]\n')
    with pytest.raises(RecordError, match=r"answers\.jsonl:2: an answer row needs 'example_id'"):
        read_answers(str(samples))
