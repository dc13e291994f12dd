"""A self-contained HTML report: metrics table, training curves, before/after answers with media."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Mapping, Sequence


def curves_png(metrics_path: Path, keys: Sequence[str]) -> str:
    """One small plot per metric key from a metrics.jsonl, as a base64 PNG."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.is_file() else []
    return series_png({key: [(line["step"], line[key]) for line in lines if line.get(key) is not None]
                       for key in keys}, "step")


def series_png(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, markers: bool = False) -> str:
    """One small plot per named series of (x, y) points, side by side, as a base64 PNG (whole-number x ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3))
    for axis, (key, points) in zip(axes if len(series) > 1 else [axes], series.items()):
        if points:
            axis.plot(*zip(*points), marker="o" if markers else None)
        axis.set_title(key)
        axis.set_xlabel(xlabel)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and rounds are whole numbers
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _media_html(root: Path, example) -> str:
    parts = []
    for ref in example.media:
        data = base64.b64encode((root / ref.path).read_bytes()).decode()
        if ref.kind == "image":
            parts.append(f'<img src="data:image/png;base64,{data}" width="144" style="image-rendering:pixelated">')
        else:
            parts.append(f'<audio controls src="data:audio/wav;base64,{data}"></audio>')
    return "".join(parts)


def write_report(
    path: Path, title: str, summary: Mapping[str, Mapping[str, float]], curves: Sequence[tuple[str, str]],
    rows: Sequence[tuple], data_root: Path,
) -> Path:
    """`rows`: (example, before_text, after_text); `curves`: (caption, base64 PNG)."""
    table = "".join(
        f"<tr><th>{html.escape(stage)}</th>" + "".join(f"<td>{k}: {v:.3f}</td>" for k, v in values.items()) + "</tr>"
        for stage, values in summary.items()
    )
    figures = "".join(f'<h3>{html.escape(c)}</h3><img src="data:image/png;base64,{png}">' for c, png in curves)
    answers = "".join(
        f"<tr><td>{_media_html(data_root, e)}</td><td>{html.escape(e.prompt_text)}</td>"
        f"<td>{html.escape(before)}</td><td>{html.escape(after)}</td><td>{html.escape(str(e.meta.get('answer', '')))}</td></tr>"
        for e, before, after in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}
table{{border-collapse:collapse}}</style></head><body><h1>{html.escape(title)}</h1>
<h2>Gold metrics (held-out)</h2><table>{table}</table><h2>Training curves</h2>{figures}
<h2>Answers before (SFT) and after (RLHF)</h2><table><tr><th>media</th><th>prompt</th><th>SFT</th><th>RLHF</th>
<th>ground truth</th></tr>{answers}</table></body></html>"""
    path.write_text(page, encoding="utf-8")
    return path
