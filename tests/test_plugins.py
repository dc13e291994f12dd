"""`py:` plug-ins (rewards and judges from a module or a file) and the up-front ShapesWorld checks."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from modalign.config import ConfigError
from modalign.data.dataset import read_examples, write_examples
from modalign.data.records import Completion, Example, assistant_turn, user_turn
from modalign.data.shapes.scorers import ShapesTruthError, score_shapes
from modalign.plugins import PluginError, load_callable
from modalign.rl.rewards import CompositeSource, PythonSource, check_reward, reward_source_from, score_texts

REWARDS = '''
import math

def brevity(examples, completions):
    """Minus the words of each completion."""
    return [-float(len(c.split())) for c in completions]

def mentions_id(examples, completions):
    return [float(e.id in c) for e, c in zip(examples, completions)]

def one_arg(completions):
    return [0.0] * len(completions)

def too_few(examples, completions):
    return [1.0]

def not_finite(examples, completions):
    return [math.nan] * len(completions)

def words(examples, completions):
    return "abc"

NOT_A_FUNCTION = 3
'''

JUDGE = '''
def shortest_first(example, completions):
    """Score: minus the length, so the shortest answer ranks first."""
    return [-len(c) for c in completions]
'''

PLAIN = [Example(id=f"r{i}", messages=(user_turn(f"say {i}"), assistant_turn(f"{i}")), meta={"task": "caption"})
         for i in range(3)]


@pytest.fixture()
def plugin_files(tmp_path, monkeypatch):
    """my_rewards.py as a file and as an importable module `userpkg.rewards`, and a judge file."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "my_judge.py").write_text(JUDGE)
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_py_reward_from_a_file_and_from_a_module(plugin_files):
    answers = ["one two three", "r1 is here"]
    absolute = f"py:{plugin_files / 'my_rewards.py'}:brevity"
    for spec in ("py:my_rewards.py:brevity", absolute, "py:userpkg.rewards:brevity"):
        source = reward_source_from(spec)
        assert isinstance(source, PythonSource)
        assert source(PLAIN[:2], answers, None, None).tolist() == [-3.0, -3.0]
        assert score_texts(source, PLAIN[:2], answers).tolist() == [-3.0, -3.0]


def test_py_reward_in_a_weighted_sum(plugin_files):
    source = reward_source_from("2*py:my_rewards.py:mentions_id + 0.5*py:userpkg.rewards:brevity + 1*rule:format")
    assert isinstance(source, CompositeSource)
    answers = ["r0 said.", "nothing here"]  # r0 names its record and ends well; the second does neither
    scores = source(PLAIN[:2], answers, None, None).tolist()
    assert scores == pytest.approx([2 * 1 + 0.5 * -2 + 1.0, 2 * 0 + 0.5 * -2 + 0.0])
    assert set(source.last_components) == {"py:my_rewards.py:mentions_id", "py:userpkg.rewards:brevity", "rule:format"}


@pytest.mark.parametrize("spec, message", [
    ("py:missing.py:brevity", "no file missing.py"),
    ("py:my_rewards.py:nope", "has no function 'nope' .*brevity"),
    ("py:my_rewards.py:NOT_A_FUNCTION", "is a int, not a function"),
    ("py:my_rewards.py:one_arg", r"one_arg\(completions\) must take 2 positional arguments"),
    ("py:no_such_pkg.rewards:brevity", "no module named 'no_such_pkg.rewards'"),
    ("py:my_rewards.py", "write py:<module>:<function>"),
])
def test_bad_py_specs_are_one_line_errors(plugin_files, spec, message):
    with pytest.raises(PluginError, match=message) as caught:
        reward_source_from(spec)
    assert "\n" not in str(caught.value) and spec in str(caught.value)
    with pytest.raises(ConfigError, match="term '0.5\\*" + spec.replace(".", "\\.")):  # named inside a sum too
        reward_source_from("1*rule:format + 0.5*" + spec)


@pytest.mark.parametrize("name, message", [
    ("too_few", "returned 1 scores for 2 completions: expected 2"),
    ("not_finite", "returned a non-finite score \\(nan\\) at position 0"),
    ("words", "returned str 'abc': expected a list of 2 numbers"),
])
def test_bad_py_results_name_the_spec(plugin_files, name, message):
    source = reward_source_from(f"py:my_rewards.py:{name}")
    with pytest.raises(PluginError, match=f"'py:my_rewards.py:{name}' {message}"):
        source(PLAIN[:2], ["a", "b"], None, None)


def test_a_broken_user_file_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("import nowhere_to_be_found\n")
    with pytest.raises(PluginError, match="loading .*broken.py failed: ModuleNotFoundError"):
        load_callable(f"py:{tmp_path / 'broken.py'}:fn")


def test_py_judge_ranks_and_checks(plugin_files):
    from modalign.feedback.collect import check_judge, judge_with_function, python_judge

    spec = "py:my_judge.py:shortest_first"
    check_judge(spec, PLAIN)
    texts = ["a long answer", "short", "same", "same"]  # 2 answers per prompt; prompt 1's are one answer
    completions = [Completion(PLAIN[i // 2].id, t) for i, t in enumerate(texts)]
    feedback, scores = judge_with_function(spec, python_judge(spec), PLAIN[:2], completions, 2)
    assert scores == [-13, -5, -4, -4]
    assert [e.id for e in feedback.examples] == ["r0"]  # one distinct answer in r1: left out
    assert feedback.verdicts == [[(spec, (1, 0))]] and not feedback.pairwise
    with pytest.raises(PluginError, match="no file nope.py"):
        check_judge("py:nope.py:fn", PLAIN)


def plain_copy(data, dest):
    """The dataset without its ShapesWorld ground truth, as a user's own data would be."""
    shutil.copytree(data / "media", dest / "media")
    for split in ("train", "test"):
        write_examples(dest, split, [Example(e.id, e.messages, e.media, {"task": e.meta["task"]})
                                     for e in read_examples(data, split)])
    return dest


def test_shapes_only_pieces_refuse_other_data_up_front(sft_model, tmp_path):
    from modalign.feedback.collect import check_judge, judge_with_panel
    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo
    from modalign.recipes.loop import LoopConfig, run_loop

    model, data = sft_model
    plain = plain_copy(data, tmp_path / "plain")
    examples = read_examples(plain, "train")
    panel = r"judge=simulated .* needs ShapesWorld ground truth \(meta.world=shapes\), but record '.*' has no " \
            r"meta.world; for your data use judge=people\|<reward>\|<model judge>"
    with pytest.raises(ShapesTruthError, match=panel):
        check_judge("simulated", examples)
    with pytest.raises(ShapesTruthError, match=panel):
        judge_with_panel(examples[:2], [Completion(e.id, "x") for e in examples[:2] for _ in range(2)], 2, 0)
    with pytest.raises(ShapesTruthError, match=r"rule:shapes_hallucination needs ShapesWorld ground truth .*; for "
                                               r"your data use a reward model folder or py:"):
        check_reward("1*rule:format + 0.5*rule:shapes_hallucination", examples)
    with pytest.raises(ShapesTruthError, match="rule:shapes_gold needs"):
        check_judge("rule:shapes_gold", examples)  # a reward judge (iterative-dpo)
    with pytest.raises(ShapesTruthError, match="gold metrics needs ShapesWorld ground truth"):
        score_shapes(examples[:1], ["x"])
    with pytest.raises(ConfigError, match="reward_model=.runs/nothing.: no reward-model folder runs/nothing"):
        check_reward("runs/nothing", examples)
    check_reward("rule:format + rule:length_penalty", examples)  # rules that need no ground truth pass
    check_judge("simulated", read_examples(data, "train"))  # ShapesWorld itself passes

    with pytest.raises(ShapesTruthError, match=panel):
        run_iterative_dpo(IterativeDPOConfig(out=str(tmp_path / "idpo"), policy=str(model), data=str(plain),
                                             rounds=1, prompts_per_round=2))
    with pytest.raises(ShapesTruthError, match=panel):
        run_loop(LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(plain), rounds=1))
    assert not (tmp_path / "idpo").exists() and not (tmp_path / "loop").exists()  # nothing created


def test_iterative_dpo_with_a_py_judge_on_plain_data(sft_model, tmp_path, monkeypatch):
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    model, data = sft_model
    plain = plain_copy(data, tmp_path / "plain")
    (tmp_path / "my_judge.py").write_text(JUDGE)
    monkeypatch.chdir(tmp_path)
    spec = "py:my_judge.py:shortest_first"
    summary = run_iterative_dpo(IterativeDPOConfig(
        out=str(tmp_path / "run"), policy=str(model), data=str(plain), judge=spec, rounds=1, prompts_per_round=4,
        samples_per_prompt=3, batch_size=2, lr=1e-3, max_new_tokens=8, eval_examples=2, temperature=1.5))
    store = FeedbackStore.sqlite(tmp_path / "run" / "feedback.db")
    judgments = store.judgments()
    assert judgments and {j.annotator for j in judgments} == {spec}
    for j in judgments:  # every stored ranking puts the shorter answer first
        lengths = [len(store.get_candidate(c).text) for c in j.ranking]
        assert lengths == sorted(lengths)
    samples = [json.loads(line) for line in (tmp_path / "run" / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert all(s["score"] == -len(s["text"]) for s in samples)
    assert summary["rounds"][0]["score"] == spec and summary["rounds"][0]["pairs"] > 0


def test_check_reward_names_the_key_and_term(plugin_files):
    with pytest.raises(ConfigError, match=r"reward_model='rule:format \+ 0.5\*rule:nope', term 'rule:nope': no rule"):
        check_reward("rule:format + 0.5*rule:nope", PLAIN)
    with pytest.raises(ConfigError, match=r"term 'x\*rule:format': the weight 'x' is not a number"):
        check_reward("x*rule:format", PLAIN)
    with pytest.raises(ConfigError, match=r"judge='py:my_rewards.py:one_arg': .*must take 2 positional"):
        check_reward("py:my_rewards.py:one_arg", PLAIN, key="judge")
    check_reward("py:my_rewards.py:brevity + 2*py:userpkg.rewards:mentions_id", PLAIN)


def test_py_judge_on_selected_pairs(plugin_files):
    from modalign.feedback.collect import judge_pairs_with_function, python_judge
    from modalign.feedback.select import CandidatePair

    spec = "py:my_judge.py:shortest_first"
    pairs = [CandidatePair(PLAIN[0], Completion("r0", "a long answer"), Completion("r0", "short")),
             CandidatePair(PLAIN[1], Completion("r1", "same"), Completion("r1", "four"))]  # equal lengths: a tie
    feedback = judge_pairs_with_function(spec, python_judge(spec), pairs)
    assert [e.id for e in feedback.examples] == ["r0"] and feedback.pairwise
    assert feedback.verdicts == [[(spec, (1, 0))]]  # b ("short") wins


def test_cli_route_for_a_py_reward(sft_model, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from modalign.cli import app

    model, data = sft_model
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    common = ["grpo", "--set", f"policy={model}", "--set", f"data={data}", "--set", "steps=1",
              "--set", "prompts_per_step=2", "--set", "samples_per_prompt=2", "--set", "max_new_tokens=4",
              "--set", "eval_examples=1"]
    bad = CliRunner().invoke(app, [*common, "--set", "reward_model=py:my_rewards.py:nope", "--out", "bad"])
    assert bad.exit_code == 2 and "has no function 'nope'" in bad.output and "Traceback" not in bad.output
    good = CliRunner().invoke(app, [*common, "--set", "reward_model=py:my_rewards.py:brevity + 0.5*rule:format",
                                    "--out", "good"])
    assert good.exit_code == 0, good.output
    line = json.loads((tmp_path / "good" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/py:my_rewards.py:brevity" in line and "reward/rule:format" in line


def test_loop_with_a_py_judge_on_plain_data(sft_model, tmp_path, monkeypatch):
    from modalign.feedback.store import FeedbackStore
    from modalign.recipes.loop import LoopConfig, run_loop

    model, data = sft_model
    plain = plain_copy(data, tmp_path / "plain")
    (tmp_path / "my_judge.py").write_text(JUDGE)
    monkeypatch.chdir(tmp_path)
    spec = "py:my_judge.py:shortest_first"
    summary = run_loop(LoopConfig(out=str(tmp_path / "loop"), policy=str(model), data=str(plain), judge=spec,
                                  rounds=1, prompts_per_round=6, samples_per_prompt=3, reward_steps=4, method="grpo",
                                  rl_steps=1, prompts_per_step=2, rl_samples_per_prompt=2, max_new_tokens=8,
                                  eval_examples=2, eval_samples=1))
    judgments = FeedbackStore.sqlite(tmp_path / "loop" / "feedback.db").judgments()
    assert judgments and {j.annotator for j in judgments} == {spec} and summary["judgments"] == len(judgments)
    feedback = summary["rounds"][0]["feedback"]
    assert feedback["gold_accuracy"] is None  # no ground truth to compare the judge with
    assert "bleu" in summary["eval"] and "hallucination_rate" not in summary["eval"]  # no gold metrics either
