"""Reward-hacking monitors: each monitor on hand-computed values, the alarm rules, an alarm stopping a tiny
run (PPO and GRPO), and monitors off leaving a run exactly as it was."""

from __future__ import annotations

import json

import pytest
import torch

from modalign.config import ConfigError
from modalign.feedback.simulated import gold_utility
from modalign.rl.monitors import (
    IterationBatch, Monitor, MonitorConfig, ensemble_disagreement, kl_spike, parse_alarms, pearson, proxy_gap,
    sampled_entropy, unfinished_share,
)
from modalign.rl.rewards import FunctionSource


def test_pearson_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)  # 4 / sqrt(5 * 5)
    assert pearson(x, -2 * x) == pytest.approx(-1.0)
    assert pearson(x, torch.ones(4)) == 0.0  # constant: no relation to see


def test_sampled_entropy_is_the_mean_negative_logprob_of_answer_tokens():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert sampled_entropy(logprobs, mask) == pytest.approx(2.0)  # (1 + 2 + 3) / 3 tokens


def test_kl_spike_against_the_running_median():
    assert kl_spike(1.0, [0.1, 0.2, 0.3]) == pytest.approx(5.0)
    assert kl_spike(1.0, [0.01, 0.02]) == pytest.approx(20.0)  # median floored at 0.05
    assert kl_spike(1.0, []) == 0.0


def test_unfinished_share_proxy_gap_and_disagreement_by_hand():
    assert unfinished_share(torch.tensor([True, False, True, True])) == pytest.approx(0.25)
    # proxy mean 2 start-std up, held-out flat: gap 2; both up by the same start-std: gap 0
    assert proxy_gap(torch.tensor([1.0, 3.0]), torch.zeros(2), (0.0, 1.0), (0.0, 2.0)) == pytest.approx(2.0)
    assert proxy_gap(torch.tensor([2.0]), torch.tensor([5.0]), (0.0, 1.0), (1.0, 2.0)) == pytest.approx(0.0)
    # answer 1: members at z = 1 and 3 (std sqrt 2); answer 2: both 3 (std 0)
    scores = torch.tensor([[1.0, 3.0], [3.0, 3.0]])
    assert ensemble_disagreement(scores, [(0.0, 1.0), (0.0, 1.0)]) == pytest.approx(2 ** 0.5 / 2)


def test_alarm_names_are_checked():
    assert parse_alarms("length_corr, proxy_gap") == ["proxy_gap", "length_corr"]
    with pytest.raises(ConfigError, match="monitors.alarms.*'length'"):
        parse_alarms("length")


def batch(scores, lengths, entropy=1.0, kl=0.1, examples=None):
    n = len(scores)
    return IterationBatch(examples or [None] * n, ["a"] * n, torch.tensor(scores), torch.tensor(lengths),
                          torch.ones(n, dtype=torch.bool), entropy, kl)


def test_alarms_fire_on_a_full_window_and_not_before():
    cfg = MonitorConfig(alarms="length_corr,entropy_drop", window=2, baseline_iterations=1, entropy_drop=0.5)
    monitor = Monitor(cfg)
    logged = monitor.observe(1, batch([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], entropy=2.0))  # baseline; corr -1
    assert logged["monitor/length_corr"] == pytest.approx(-1.0) and monitor.fired is None
    monitor.observe(2, batch([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], entropy=2.0))  # corr 0.98; window mean ~0
    assert monitor.fired is None
    monitor.observe(3, batch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], entropy=0.9))  # corr 1: window mean 0.99
    assert monitor.fired.name == "length_corr" and monitor.fired.step == 3
    assert "0.99 > 0.85" in monitor.fired.reason


def test_entropy_drop_compares_with_the_start_entropy():
    monitor = Monitor(MonitorConfig(alarms="entropy_drop", window=2, baseline_iterations=2, entropy_drop=0.5))
    for step, entropy in enumerate([2.0, 2.0, 1.2], start=1):  # start 2.0; window mean 1.6 = 0.8 of it
        monitor.observe(step, batch([1.0, 2.0], [1.0, 1.0], entropy=entropy))
    assert monitor.fired is None
    monitor.observe(4, batch([1.0, 2.0], [1.0, 1.0], entropy=0.6))  # window mean 0.9 = 0.45 of the start
    assert monitor.fired.name == "entropy_drop" and monitor.fired.value == pytest.approx(0.45)


def test_proxy_gap_fires_when_the_proxy_climbs_away_from_the_heldout_reward():
    flat = ("rule:flat", FunctionSource(lambda example, answer: 0.0))  # a held-out reward that never moves
    monitor = Monitor(MonitorConfig(alarms="proxy_gap", window=1, baseline_iterations=1, proxy_gap=0.5), [flat])
    logged = monitor.observe(1, batch([0.0, 2.0], [1.0, 1.0]))  # start: proxy mean 1, std sqrt 2
    assert logged["monitor/proxy_gap"] == pytest.approx(0.0) and monitor.fired is None
    logged = monitor.observe(2, batch([3.0, 5.0], [1.0, 1.0]))  # proxy up 3 / sqrt 2 start-std, held-out flat
    assert logged["monitor/proxy_gap"] == pytest.approx(3 / 2 ** 0.5)
    assert logged["monitor/heldout/rule:flat"] == 0.0 and logged["monitor/disagreement"] > 1
    assert logged["monitor/heldout_corr"] == 0.0  # a constant held-out reward: no relation
    assert monitor.fired.name == "proxy_gap" and monitor.fired.step == 2


def test_monitor_state_survives_a_checkpoint():
    cfg = MonitorConfig(alarms="length_corr", window=2, baseline_iterations=1)
    first, second = Monitor(cfg), Monitor(cfg)
    first.observe(1, batch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    second.load_state_dict(first.state_dict())  # resumed: the same start and window
    second.observe(2, batch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    assert second.fired.name == "length_corr" and second.fired.step == 2


def lines_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


GOLD = FunctionSource(gold_utility)


def test_an_alarm_stops_a_ppo_run_and_says_why(tmp_path, sft_model):
    from test_ppo import ppo_config

    from modalign.recipes.ppo import run_ppo

    # the reward is the answer's length in characters: its correlation with the length in tokens is high
    by_length = FunctionSource(lambda example, answer: float(len(answer)))
    monitors = MonitorConfig(heldout_reward="gold", alarms="length_corr", window=2, baseline_iterations=1,
                             length_corr=0.3)
    summary = run_ppo(ppo_config(tmp_path / "run", sft_model, steps=6, unfinished_penalty=0.0, task="caption",
                                 monitors=monitors),
                      reward_source=by_length)
    lines = lines_of(tmp_path / "run")
    assert summary["alarm"]["name"] == "length_corr" and summary["steps"] == summary["alarm"]["step"] < 6
    assert "length" in summary["alarm"]["reason"] and not summary["stopped_at_kl_budget"]
    assert lines[-1]["step"] == summary["steps"] and lines[-1]["alarm/length_corr"] == 1.0
    assert abs(sum(line["monitor/length_corr"] for line in lines[-2:]) / 2) > 0.3  # the rule that fired
    assert (tmp_path / "run" / "checkpoints" / f"step-{summary['steps']:06d}").is_dir()
    assert (tmp_path / "run" / "model").is_dir() and "eval" in summary
    for key in ("entropy", "unfinished", "kl_spike", "heldout/gold", "gold_coverage", "proxy_gap", "disagreement"):
        assert lines[-1][f"monitor/{key}"] is not None, key
    # the report's monitors section names the alarm, its iteration and each monitor
    from modalign.eval.monitor_report import monitors_section
    from modalign.eval.run_report import load_run

    section = monitors_section([load_run(tmp_path / "run")])
    assert f"alarm at iteration {summary['steps']}" in section and "|correlation of the reward" in section
    assert all(f"<th>{key}</th>" in section for key in ("length_corr", "entropy", "proxy_gap", "gold_coverage"))
    # and where each alarm would fire, replayed at the run's thresholds: length_corr where it did fire
    import re

    replayed = re.search(r'<th>length_corr</th><td class="n">0.3</td><td class="n">[^<]+</td><td class="n">(\d+)</td>',
                         section)
    assert replayed and int(replayed.group(1)) == summary["steps"] and "would fire at" in section


def test_monitors_off_leave_the_run_unchanged(tmp_path, sft_model):
    from test_ppo import ppo_config

    from modalign.recipes.ppo import run_ppo

    run_ppo(ppo_config(tmp_path / "off", sft_model, steps=2, monitors=MonitorConfig(enabled=False)),
            reward_source=GOLD)
    run_ppo(ppo_config(tmp_path / "on", sft_model, steps=2, monitors=MonitorConfig(heldout_reward="gold")),
            reward_source=GOLD)
    off, on = lines_of(tmp_path / "off"), lines_of(tmp_path / "on")
    assert not any(k.startswith("monitor/") for line in off for k in line)
    assert [{k: v for k, v in line.items() if not k.startswith("monitor/")} for line in on] == off
    assert all("monitor/entropy" in line for line in on)


def test_grpo_logs_monitors_and_stops_on_an_alarm(tmp_path, sft_model):
    from modalign.recipes.online import OnlineConfig, run_online

    model, data = sft_model
    monitors = MonitorConfig(alarms="unfinished", window=1, baseline_iterations=1, unfinished=-0.5)  # always
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), policy=str(model), data=str(data), steps=3,
                                      prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, minibatch_size=4,
                                      eval_examples=1, monitors=monitors), reward_source=GOLD)
    lines = lines_of(tmp_path / "grpo")
    assert summary["alarm"]["name"] == "unfinished" and summary["steps"] == 1 and len(lines) == 1
    assert lines[0]["alarm/unfinished"] == 1.0 and 0 <= lines[0]["monitor/unfinished"] <= 1
    assert "grpo/sampled_entropy" not in lines[0] and lines[0]["monitor/entropy"] > 0


def test_alarms_needing_a_heldout_reward_are_refused_up_front(tmp_path, sft_model):
    from test_ppo import ppo_config

    from modalign.recipes.ppo import run_ppo

    with pytest.raises(ConfigError, match="monitors.heldout_reward"):
        run_ppo(ppo_config(tmp_path / "bad", sft_model, monitors=MonitorConfig(alarms="proxy_gap")),
                reward_source=GOLD)
    assert not (tmp_path / "bad").exists()
