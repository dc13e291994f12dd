"""Pictures of attributions: an occlusion heatmap drawn over the image, an audio-time curve over the
waveform, the token credit as coloured text (HTML)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np


def heatmap_png(image, heatmap: Sequence[Sequence[float]], path: str | Path, title: str = "") -> Path:
    """The image with the grid's attributions over it (red: the cell supports the score, blue: it lowers it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = np.asarray(heatmap, dtype=float)
    limit = float(np.abs(heat).max()) or 1.0
    picture = np.asarray(image.convert("RGB"))
    figure, axis = plt.subplots(figsize=(3.2, 3.2))
    axis.imshow(picture)
    # the grid stretched over the picture, cells as blocks (nearest), translucent
    shown = axis.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.5, interpolation="nearest",
                        extent=(0, picture.shape[1], picture.shape[0], 0))
    for row, values in enumerate(heat):
        for column, value in enumerate(values):
            axis.text((column + 0.5) * picture.shape[1] / heat.shape[1], (row + 0.5) * picture.shape[0] / heat.shape[0],
                      f"{value:+.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(shown, ax=axis, fraction=0.046)
    axis.set_axis_off()
    axis.set_title(title, fontsize=8)
    return _save(figure, path)


def audio_curve_png(wave: np.ndarray | None, curve: Sequence[float], seconds: float, path: str | Path,
                    title: str = "") -> Path:
    """Attribution per time window (bars) over the waveform (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 2.4))
    width = seconds / len(curve)
    starts = np.arange(len(curve)) * width
    axis.bar(starts, curve, width=width * 0.9, align="edge", color=["tab:red" if v >= 0 else "tab:blue" for v in curve])
    axis.set_xlabel("seconds")
    axis.set_ylabel("f(x) - f(window silenced)", fontsize=7)
    if wave is not None and len(wave):
        twin = axis.twinx()
        twin.plot(np.linspace(0, seconds, len(wave)), wave, color="grey", alpha=0.4, linewidth=0.5)
        twin.set_yticks([])
    axis.set_title(title, fontsize=8)
    return _save(figure, path)


def token_credit_html(tokens: Sequence[str], credit: Sequence[float]) -> str:
    """Answer tokens on a red (raises the score) / blue (lowers it) background, value on hover."""
    limit = max((abs(c) for c in credit), default=0.0) or 1.0
    spans = []
    for token, value in zip(tokens, credit):
        strength = min(1.0, abs(value) / limit)
        colour = (255, int(255 * (1 - strength)), int(255 * (1 - strength))) if value >= 0 else \
                 (int(255 * (1 - strength)), int(255 * (1 - strength)), 255)
        spans.append(f'<span title="{value:+.3f}" style="background:rgb{colour}">{html.escape(token)}</span>')
    return "".join(spans)


def _save(figure, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=90)
    plt.close(figure)
    return path
