"""Pieces of the self-contained HTML report: tables, plots (base64 PNGs), media, the page itself.

`eval.run_report` puts them together for run folders (`modalign report`, the demo's report.html).
"""

from __future__ import annotations

import base64
import html
import io
import mimetypes
from pathlib import Path
from typing import Mapping, Sequence

STYLE = """body{font-family:sans-serif;margin:2em;color:#222} td,th{border:1px solid #ccc;padding:4px 6px;
vertical-align:top;text-align:left;max-width:24em;overflow-wrap:anywhere} table{border-collapse:collapse;margin-bottom:1em} td.n{text-align:right}
pre{background:#f6f6f6;padding:.5em;max-height:30em;overflow:auto} .figs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0} figcaption{font-size:80%;color:#555} h2{border-bottom:1px solid #ddd;margin-top:1.5em}"""


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
    return _png(figure)


def overlay_png(lines: Mapping[str, Sequence[tuple[float, float]]], xlabel: str = "step") -> str:
    """One plot of several runs' series of one metric (a legend when there are several), as a base64 PNG;
    its caption goes beside it in the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(4, 3))
    for name, points in lines.items():
        if points:
            axis.plot(*zip(*points), label=name, marker="o" if len(points) == 1 else None)
    axis.set_xlabel(xlabel)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(lines) > 1:
        axis.legend(fontsize=7)
    return _png(figure)


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def figures_html(curves: Sequence[tuple[str, str]]) -> str:
    """(caption, base64 PNG) pairs as a wrapping grid of figures, one <img> each."""
    return '<div class="figs">' + "".join(
        f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, png in curves) + "</div>"


def table_html(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[object]]]) -> str:
    """A table whose first column names each row; numbers are right-aligned with 4 significant digits."""
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(_cell(v) for v in values) + "</tr>"
                   for name, values in rows)
    return f"<table>{head}{body}</table>"


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else value}</td>"
    if isinstance(value, (int, float)):
        return f'<td class="n">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def media_html(root: Path | None, example) -> str:
    """The example's images (as small PNGs) and audio players, embedded; a note where a file is missing."""
    if root is None or example is None:
        return ""
    parts = []
    for ref in example.media:
        path = Path(ref.path) if Path(ref.path).is_absolute() else root / ref.path
        if not path.is_file():
            parts.append(f"<i>missing {html.escape(ref.path)}</i>")
        elif ref.kind == "image":
            parts.append(_image_html(path))
        else:
            mime = mimetypes.guess_type(path.name)[0] or "audio/wav"
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f'<audio controls src="data:{mime};base64,{data}"></audio>')
    return "<br>".join(parts)


def _image_html(path: Path, longest: int = 192) -> str:
    """A thumbnail (a photo would bloat the page); tiny images are shown enlarged with sharp pixels."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((longest, longest))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    small = max(image.size) < 96
    style = ' width="144" style="image-rendering:pixelated"' if small else ""
    return f'<img src="data:image/png;base64,{data}"{style}>'


def page_html(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole page: (heading, HTML body) sections under a title, styles inline, nothing fetched."""
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
