"""The report of run folders (`modalign report RUN...`, and the demo's report.html).

Any run folder works: what the report shows is found, not assumed. Its summary is `summary.json`
(evaluations are its dicts that hold `n_examples`); its curves are every `metrics.jsonl` in it
(nested runs too: a loop's rounds, a demo's stages); its sample answers are the evaluation sample
files (`samples.jsonl`, `samples/eval.jsonl`, `*_samples.jsonl`), shown beside the example's media
from the run's dataset (the `data` of its summary or of a config.yaml in it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from modalign.data.records import RecordError
from modalign.eval.metrics import BREAKDOWNS, breakdown_table, overall

BREAKDOWN_COLUMNS = ("n_examples", "exact_match", "normalized_accuracy", "bleu", "rouge_l")
_SKIPPED_DIRS = {"checkpoints", "model", "critic", "tb", "media", "data"}


@dataclass
class RunView:
    """What a run folder holds, for the report."""

    path: Path
    name: str
    summary: dict = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)  # relative path -> config.yaml text
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # log label -> metric -> [(step, value)]
    samples: dict[str, Path] = field(default_factory=dict)  # label -> evaluation samples file
    data_root: Path | None = None
    split: str = "test"

    @property
    def evaluations(self) -> dict[str, dict]:
        """Summary entries that are evaluation metrics (they count `n_examples`)."""
        return {key: value for key, value in self.summary.items() if isinstance(value, dict) and "n_examples" in value}

    @property
    def config(self) -> dict:
        """The run's own (top-level) config, parsed."""
        import yaml

        return yaml.safe_load(self.configs.get("config.yaml", "")) or {}


def load_run(path: str | Path) -> RunView:
    """Read a run folder; one that holds no summary, config, metrics or demo settings is an error."""
    root = Path(path)
    markers = ("summary.json", "config.yaml", "metrics.jsonl", "demo.json")
    if not root.is_dir() or not any((root / m).is_file() for m in markers):
        raise FileNotFoundError(f"{root} is not a run folder (none of {', '.join(markers)} in it)")
    run = RunView(root, root.resolve().name)
    if (root / "summary.json").is_file():
        try:
            summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RecordError(f"{root / 'summary.json'}: not valid JSON ({err.msg})") from None
        run.summary = summary if isinstance(summary, dict) else {}
    for file in _files(root, "config.yaml"):
        run.configs[_label(root, file, "config.yaml")] = file.read_text()
    if (root / "demo.json").is_file():
        run.configs["demo.json"] = (root / "demo.json").read_text()
    for file in _files(root, "metrics.jsonl"):
        run.curves[_label(root, file.parent, "run")] = _series(file)
    for file in _files(root, "*.jsonl"):
        if _is_eval_samples(file.relative_to(root)):
            run.samples[str(file.relative_to(root).with_suffix(""))] = file
    run.data_root, run.split = _dataset_of(run)
    return run


def _is_eval_samples(relative: Path) -> bool:
    """An evaluation's answers: `modalign eval`'s samples files, a recipe's samples/eval.jsonl, a loop's
    eval*_samples.jsonl (not the answers sampled for feedback, which are on training prompts)."""
    return (relative.name in ("samples.jsonl", "samples_compare.jsonl") and len(relative.parts) == 1
            or relative.parts[-2:] == ("samples", "eval.jsonl") or relative.name.endswith("_samples.jsonl"))


def _files(root: Path, pattern: str) -> list[Path]:
    """Files named `pattern` in the run folder and its sub-runs (not in models, checkpoints or datasets)."""
    return sorted(p for p in root.rglob(pattern)
                  if p.is_file() and not _SKIPPED_DIRS & set(p.relative_to(root).parts[:-1]))


def _label(root: Path, path: Path, top: str) -> str:
    relative = path.relative_to(root)
    return top if str(relative) in (".", top) else str(relative)


def _series(metrics_file: Path) -> dict[str, list]:
    """metric -> [(step, value)] of a metrics.jsonl; null values (non-finite) and cut lines are skipped.

    The recipe's namespace (`grpo/`, `ppo/`, `dpo/`, `train/`: the first part most keys share) is
    dropped, so runs of different algorithms overlay on the same metric (`reward_mean`, `kl_to_ref`).
    """
    series: dict[str, list] = {}
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((row.get("step", len(series.get(key, []))), value))
    prefixes = [key.split("/", 1)[0] + "/" for key in series if "/" in key]
    namespace = max(set(prefixes), key=prefixes.count) if prefixes else None
    if namespace is None or prefixes.count(namespace) * 2 <= len(series):
        return series
    return {key.removeprefix(namespace): points for key, points in series.items()}


def _dataset_of(run: RunView) -> tuple[Path | None, str]:
    """(dataset folder, evaluated split) of a run: its summary's `data`, else a config's (`shapes`: the
    folder it generated); None when the folder is gone."""
    import yaml

    candidates = [(run.path, run.summary.get("data"), run.summary.get("split"))]
    for label, text in run.configs.items():
        config = yaml.safe_load(text) or {} if label.endswith(".yaml") else {}
        if isinstance(config, dict):
            folder = run.path / Path(label).parent
            candidates.append((folder, config.get("data"), config.get("eval_split") or config.get("split")))
    for folder, data, split in candidates:
        if not data:
            continue
        root = folder / "data" if data == "shapes" else Path(str(data))
        if not root.is_dir() and not root.is_absolute():
            root = run.path / root  # a relative path written from another working directory
        if root.is_dir():
            return root, str(split or "test")
    return None, "test"


def write_runs_report(runs: Sequence[str | Path], out: str | Path, title: str | None = None, answers: int = 12,
                      extra_curves: Sequence[tuple[str, str]] = ()) -> Path:
    """Write one self-contained HTML page about the runs, side by side; returns its path."""
    from modalign.eval.explain.section import explain_section
    from modalign.eval.monitor_report import monitors_section
    from modalign.eval.report import page_html

    if not runs:
        raise FileNotFoundError("report: name at least one run folder")
    views = _unique_names([load_run(r) for r in runs])
    title = title or "modalign report: " + ", ".join(v.name for v in views)
    sections = [("Summary", summary_section(views)), ("Config", config_section(views)),
                ("Evaluation", evaluation_section(views)),
                ("Training curves", curves_section(views, extra_curves)), ("Model judge", judge_section(views)),
                ("Reward-hacking monitors", monitors_section(views)),
                *[(f"Sample answers: {v.name}", answers_section(v, answers)) for v in views if v.samples],
                ("Explanations", explain_section([v.path for v in views]))]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page_html(title, [(h, body) for h, body in sections if body]), encoding="utf-8")
    return path


def _unique_names(views: list[RunView]) -> list[RunView]:
    seen: dict[str, int] = {}
    for view in views:
        seen[view.name] = seen.get(view.name, 0) + 1
        if seen[view.name] > 1:
            view.name = f"{view.name} ({seen[view.name]})"
    return views


def summary_section(views: Sequence[RunView]) -> str:
    """The runs' summaries side by side: every scalar (nested ones as a.b), evaluations left to their section."""
    from modalign.eval.report import table_html

    flat = [_flatten({k: v for k, v in view.summary.items() if k not in view.evaluations}) for view in views]
    keys = list(dict.fromkeys(key for values in flat for key in values))
    if not keys:
        return ""
    return table_html([v.name for v in views], [(key, [values.get(key) for values in flat]) for key in keys])


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, bool)) or isinstance(value, str) and len(value) <= 120:
            flat[f"{prefix}{key}"] = value
    return flat


def config_section(views: Sequence[RunView]) -> str:
    """Settings that differ between the runs (several runs), then each config file in full."""
    import html

    from modalign.eval.report import table_html

    parts = []
    if len(views) > 1:
        configs = [view.config for view in views]
        keys = list(dict.fromkeys(k for c in configs for k in c))
        shared = [k for k in keys if sum(k in c for c in configs) > 1]  # a recipe's own settings are in its file
        differ = [k for k in shared if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
        if differ:
            parts.append("<h3>Settings that differ</h3>" + table_html(
                [v.name for v in views], [(k, [_short(c.get(k)) for c in configs]) for k in differ]))
    for view in views:
        for label, text in view.configs.items():
            parts.append(f"<details><summary>{html.escape(view.name)}: {html.escape(label)}</summary>"
                         f"<pre>{html.escape(text)}</pre></details>")
    return "".join(parts)


def _short(value: Any) -> Any:
    return value if isinstance(value, (int, float, bool)) or value is None else str(value)


def evaluation_section(views: Sequence[RunView]) -> str:
    """Each evaluation's overall metrics side by side, then its per-task and per-modality tables."""
    from modalign.eval.report import table_html

    evaluations = {(f"{view.name}: {key}" if len(views) > 1 else key): metrics
                   for view in views for key, metrics in view.evaluations.items()}
    if not evaluations:
        return ""
    totals = {name: overall(metrics) for name, metrics in evaluations.items()}
    keys = list(dict.fromkeys(key for values in totals.values() for key in values))
    parts = [table_html(list(totals), [(key, [values.get(key) for values in totals.values()]) for key in keys])]
    for kind in BREAKDOWNS:
        for name, metrics in evaluations.items():
            rows = breakdown_table(metrics, kind)
            columns = [c for c in BREAKDOWN_COLUMNS if any(c in row for row in rows.values())]
            if rows:
                parts.append(f"<h3>{name}, by {kind}</h3>" + table_html(
                    columns, [(group, [row.get(c) for c in columns]) for group, row in rows.items()]))
    return "".join(parts)


def judge_section(views: Sequence[RunView]) -> str:
    """The model judges' reports (`modalign judge`, a loop's rounds): gold accuracy, agreement with the panel and
    people, position-inconsistent share, cost; one column per report. Empty when no run used a model judge."""
    from modalign.eval.report import table_html
    from modalign.feedback.judges.report import SHOWN, judge_reports

    columns = {(f"{view.name}: {label}" if len(views) > 1 else label): report
               for view in views for label, report in judge_reports(view.summary).items()}
    keys = [key for key in SHOWN if any(key in report for report in columns.values())]
    return table_html(list(columns), [(key, [report.get(key) for report in columns.values()]) for key in keys]) \
        if columns else ""


def curves_section(views: Sequence[RunView], extra: Sequence[tuple[str, str]] = ()) -> str:
    """One plot per logged metric (runs overlaid where they log the same file and key), plus `extra`."""
    from modalign.eval.report import figures_html, overlay_png

    labels = list(dict.fromkeys(label for view in views for label in view.curves))
    figures = list(extra)
    for label in labels:
        keys = list(dict.fromkeys(k for view in views for k in view.curves.get(label, {})))
        for key in keys:
            lines = {view.name: view.curves[label][key] for view in views if key in view.curves.get(label, {})}
            caption = key if label == "run" else f"{label}: {key}"
            figures.append((caption, overlay_png(lines)))
    return figures_html(figures) if figures else ""


def answers_section(view: RunView, limit: int) -> str:
    """The first `limit` evaluated examples: media, prompt, the answer in each samples file, the reference."""
    import html

    from modalign.eval.report import media_html

    answers = {label: _first_answers(path) for label, path in view.samples.items()}
    widest = max(answers.values(), key=len)  # the file that covers the most examples sets the rows
    shown = list(widest)[:limit]
    # a column per samples file that answers most of the shown examples (a short one is a side evaluation)
    answers = {label: rows for label, rows in answers.items() if 2 * sum(i in rows for i in shown) >= len(shown)}
    examples = _examples_by_id(view)
    head = "<tr><th>media</th><th>prompt</th>" + "".join(f"<th>{html.escape(label)}</th>" for label in answers) + \
           "<th>reference</th></tr>"
    rows = []
    for example_id in shown:
        row, example = widest[example_id], examples.get(example_id)
        reference = example.meta.get("answer", example.answer) if example is not None else row.get("reference")
        reference = " | ".join(map(str, reference)) if isinstance(reference, list) else reference
        rows.append(f"<tr><td>{media_html(view.data_root, example)}</td><td>{html.escape(str(row.get('prompt', '')))}"
                    "</td>" + "".join(f"<td>{html.escape(a.get(example_id, {}).get('text', ''))}</td>"
                                      for a in answers.values()) + f"<td>{html.escape(str(reference or ''))}</td></tr>")
    note = "" if view.data_root else "<p><i>the run's dataset folder was not found: no media shown</i></p>"
    return f"{note}<table>{head}{''.join(rows)}</table>"


def _first_answers(path: Path) -> dict[str, dict]:
    """Each example's first answer row in a samples file (several samples of an example: the first)."""
    rows: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "example_id" in row:
            rows.setdefault(str(row["example_id"]), row)
    return rows


def _examples_by_id(view: RunView) -> dict:
    from modalign.data.dataset import read_examples, split_path

    if view.data_root is None or not split_path(view.data_root, view.split).is_file():
        return {}
    return {e.id: e for e in read_examples(view.data_root, view.split)}
