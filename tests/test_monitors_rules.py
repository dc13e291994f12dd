"""The leading alarms (heldout_corr, length_drift, length_corr_rise) on hand-computed values, and the replay
of alarms on a logged run deciding as the live monitor does (bench/hacking.py reports replayed iterations)."""

from __future__ import annotations

import pytest
import torch

from modalign.rl.monitors import (
    IterationBatch, Monitor, MonitorConfig, alarm_holds, alarm_value, length_drift, replay_alarms,
)
from modalign.rl.rewards import FunctionSource


def batch(scores, lengths, entropy=1.0):
    n = len(scores)
    return IterationBatch([None] * n, ["a"] * n, torch.tensor(scores), torch.tensor(lengths),
                          torch.ones(n, dtype=torch.bool), entropy, 0.1)


def test_length_drift_is_the_relative_change_of_the_mean_length():
    assert length_drift(torch.tensor([10.0, 14.0]), 10.0) == pytest.approx(0.2)  # mean 12 over 10
    assert length_drift(torch.tensor([6.0, 6.0]), 8.0) == pytest.approx(-0.25)


def test_leading_alarm_rules_by_hand():
    start = {"length_corr": -0.6, "entropy": 2.0}
    # length_corr_rise: window mean -0.1 is 0.5 above the start's -0.6
    assert alarm_value("length_corr_rise", [-0.2, 0.0], start) == pytest.approx(0.5)
    assert alarm_holds("length_corr_rise", 0.5, 0.4) and not alarm_holds("length_corr_rise", 0.3, 0.4)
    # length_drift: either way, |mean|
    assert alarm_value("length_drift", [-0.2, -0.4], start) == pytest.approx(0.3)
    # heldout_corr fires BELOW its threshold: mean 0.05 < 0.1, mean 0.15 is not
    assert alarm_value("heldout_corr", [0.1, 0.0], start) == pytest.approx(0.05)
    assert alarm_holds("heldout_corr", 0.05, 0.1) and not alarm_holds("heldout_corr", 0.15, 0.1)
    assert alarm_value("entropy_drop", [1.0, 0.6], start) == pytest.approx(0.4)  # 0.8 of a 2.0 start


def test_length_drift_alarm_against_the_start_length():
    monitor = Monitor(MonitorConfig(alarms="length_drift", window=2, baseline_iterations=1, length_drift=0.25))
    monitor.observe(1, batch([1.0, 2.0], [2.0, 4.0]))  # start length 3
    logged = monitor.observe(2, batch([1.0, 2.0], [3.0, 4.0]))  # 3.5: +17%
    assert logged["monitor/length_drift"] == pytest.approx(0.5 / 3) and monitor.fired is None
    logged = monitor.observe(3, batch([1.0, 2.0], [5.0, 5.0]))  # 5: +67%; window mean 0.42
    assert logged["monitor/length"] == 5.0
    assert monitor.fired.name == "length_drift" and monitor.fired.value == pytest.approx((0.5 + 2) / 3 / 2)


def test_replay_of_the_log_fires_where_the_live_monitor_did():
    anti = ("rule:anti", FunctionSource(lambda example, answer: 0.0))
    cfg = MonitorConfig(heldout_reward="rule:anti", window=2, baseline_iterations=2, length_corr_rise=0.4,
                        length_drift=0.25)
    # proxy first pays for brevity (corr -1), then for length; answers grow
    iterations = [([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]), ([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]),
                  ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),
                  ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])]
    series, live = [], {}
    for name in ("length_corr_rise", "length_drift"):
        monitor = Monitor(MonitorConfig(**{**cfg.__dict__, "alarms": name}), [anti])
        rows = [{"step": step, **{k.removeprefix("monitor/"): v for k, v in
                                  monitor.observe(step, batch(*it)).items()}}
                for step, it in enumerate(iterations, start=1)]
        series = rows
        live[name] = monitor.fired
    replayed = replay_alarms(series, cfg, ["length_corr_rise", "length_drift"])
    assert live["length_corr_rise"].step == 3  # window (-1, 1) mean 0 is 1.0 above the start's -1
    assert live["length_drift"].step == 5  # start 2; drifts 0, 0.5, 1.5: window means 0.25 (not >), 1.0
    for name in live:
        assert replayed[name] == live[name]


def test_heldout_corr_needs_a_heldout_reward():
    from modalign.config import ConfigError
    from modalign.rl.monitors import build_monitor

    with pytest.raises(ConfigError, match="heldout_corr.*monitors.heldout_reward"):
        build_monitor(MonitorConfig(alarms="heldout_corr"), [], None)
