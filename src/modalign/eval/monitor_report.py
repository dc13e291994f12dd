"""The report's reward-hacking monitors section: each monitor at the start and the end of every RL run,
the alarm that stopped it, and where each alarm would have fired at the run's thresholds (docs/monitors.md,
`modalign.rl.monitors`)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

PREFIX = "monitor/"


def monitors_section(views: Sequence) -> str:
    """A table per logged run with monitors: start and end values (means of the first and last 5
    iterations), the extreme, and the alarm that fired; '' when no run logged monitors."""
    from modalign.eval.report import table_html

    parts = []
    for view in views:
        for label, curves in view.curves.items():
            keys = [k for k in curves if k.startswith(PREFIX)]
            if not keys:
                continue
            name = view.name if label == "run" else f"{view.name}: {label}"
            rows = [(key.removeprefix(PREFIX), monitor_row(curves[key])) for key in keys]
            alarm = fired_alarm(view.path if label == "run" else view.path / label)
            said = (f"<p><b>alarm at iteration {alarm['step']}</b>: {html.escape(alarm['reason'])}</p>" if alarm
                    else "<p>no alarm fired</p>")
            folder = view.path if label == "run" else view.path / label
            parts.append(f"<h3>{html.escape(name)}</h3>{said}"
                         + table_html(["start", "end", "min", "max", "iterations"], rows)
                         + table_html(["threshold", "most extreme", "would fire at"],
                                      alarm_rows(curves, run_monitor_config(folder))))
    if not parts:
        return ""
    return ("<p>Logged every RL iteration; start and end are the means of the first and last 5 iterations. "
            "The rules and thresholds are in docs/monitors.md.</p>" + "".join(parts))


def alarm_rows(curves: dict, cfg) -> list[tuple[str, list]]:
    """Per alarm its threshold, its rule's most extreme value over the run (toward firing) and the iteration
    it would have fired at, switched on alone ('' for never): replayed on the logged monitors, so a run
    with the alarms off shows where to set them (`modalign.rl.monitors.replay_alarms`)."""
    from modalign.rl.monitors import ALARMS, alarm_holds, alarm_trace, replay_alarms

    by_step: dict[int, dict] = {}
    for key, points in curves.items():
        if key.startswith(PREFIX):
            for step, value in points:
                by_step.setdefault(int(step), {"step": int(step)})[key.removeprefix(PREFIX)] = value
    series = [by_step[step] for step in sorted(by_step)]
    fired = replay_alarms(series, cfg)
    rows = []
    for name in ALARMS:
        values = [v for _, v in alarm_trace(series, cfg, name)]
        if values:
            below = alarm_holds(name, 0.0, 1e-9)  # the alarms that fire below their threshold
            rows.append((name, [getattr(cfg, name), min(values) if below else max(values),
                                fired[name].step if fired[name] else None]))
    return rows


def run_monitor_config(folder: Path):
    """The run's MonitorConfig from its config.yaml (`monitors:`), the defaults where it says nothing."""
    import dataclasses

    import yaml

    from modalign.rl.monitors import MonitorConfig

    path = Path(folder) / "config.yaml"
    try:
        saved = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("monitors") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        saved = {}
    known = {f.name for f in dataclasses.fields(MonitorConfig)}
    return MonitorConfig(**{k: v for k, v in saved.items() if k in known})


def monitor_row(points: Sequence[tuple[float, float]], window: int = 5) -> list[float]:
    """[start, end, min, max, count] of one monitor's (step, value) points."""
    values = [v for _, v in points]
    start, end = values[:window], values[-window:]
    return [sum(start) / len(start), sum(end) / len(end), min(values), max(values), len(values)]


def fired_alarm(folder: Path) -> dict | None:
    """The `alarm` entry of the run's summary.json (None without one)."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("alarm")
    except (json.JSONDecodeError, AttributeError):
        return None
