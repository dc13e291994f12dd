"""The report's reward-hacking monitors section: each monitor at the start and the end of every RL run,
and the alarm that stopped it (docs/monitors.md, `modalign.rl.monitors`)."""

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
            parts.append(f"<h3>{html.escape(name)}</h3>{said}"
                         + table_html(["start", "end", "min", "max", "iterations"], rows))
    if not parts:
        return ""
    return ("<p>Logged every RL iteration; start and end are the means of the first and last 5 iterations. "
            "The rules and thresholds are in docs/monitors.md.</p>" + "".join(parts))


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
