"""The `Explanations` section of report.html: one row per explained example of a run folder that holds
`attributions.json` (`modalign explain`): modality shares, the heatmap and audio curve, token credit."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Sequence

ATTRIBUTIONS = "attributions.json"


def explain_section(run_paths: Sequence[Path], limit: int = 24) -> str:
    """HTML of every run's explanations ('' when no run has any)."""
    parts = []
    for root in run_paths:
        file = Path(root) / ATTRIBUTIONS
        if not file.is_file():
            continue
        data = json.loads(file.read_text(encoding="utf-8"))
        examples = data.get("examples", [])
        parts.append(f"<p>{html.escape(str(data.get('target', '')))} of {html.escape(str(data.get('model', '')))}; "
                     f"{len(examples)} examples{' (first ' + str(limit) + ' shown)' if len(examples) > limit else ''}. "
                     "Shares: |f(x) - f(baseline)| of each modality over their sum; heatmap and audio cells: "
                     "f(x) - f(part occluded), red supports the score, blue lowers it.</p>")
        parts.append(_baselines(examples))
        rows = "".join(_row(Path(root), example) for example in examples[:limit])
        parts.append("<table><tr><th>example</th><th>modality shares</th><th>image</th><th>audio</th>"
                     f"<th>answer token credit</th></tr>{rows}</table>")
    return "".join(parts)


def _baselines(examples: list[dict]) -> str:
    stated: dict[str, str] = {}
    for example in examples:
        for method in ("ablation", "ig", "occlusion", "audio", "tokens"):
            baseline = example.get(method, {}).get("baseline")
            if isinstance(baseline, dict):
                stated.update({f"{method} / {k}": v for k, v in baseline.items()})
            elif baseline:
                stated[method] = baseline
    items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in stated.items())
    return f"<details><summary>baselines</summary><ul>{items}</ul></details>" if items else ""


def _row(root: Path, example: dict) -> str:
    from modalign.eval.explain.figures import token_credit_html

    head = (f"<b>{html.escape(str(example.get('example_id')))}</b> ({html.escape(str(example.get('task')))})<br>"
            f"{html.escape(str(example.get('prompt', '')))}<br><i>{html.escape(str(example.get('answer', '')))}</i>")
    shares = "".join(_shares(example, method) for method in ("ablation", "ig") if method in example)
    figures = example.get("figures", {})
    tokens = example.get("tokens")
    values = tokens and (tokens.get("leave_one_out") or tokens.get("logprob"))
    credit = token_credit_html(tokens["tokens"], values) if values else ""
    skipped = "".join(f"<br><small>{html.escape(m)}: {html.escape(why)}</small>"
                      for m, why in example.get("skipped", {}).items())
    return (f"<tr><td>{head}{skipped}</td><td>{shares}</td><td>{_img(root, figures.get('occlusion'))}</td>"
            f"<td>{_img(root, figures.get('audio'))}</td><td>{credit}</td></tr>")


def _shares(example: dict, method: str) -> str:
    shares = example[method]["share"]
    cells = ", ".join(f"{m} {v:.2f}" for m, v in shares.items())
    return f"{method}: {html.escape(cells)}<br>"


def _img(root: Path, relative: str | None) -> str:
    if not relative or not (root / relative).is_file():
        return ""
    data = base64.b64encode((root / relative).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" width="240">'
