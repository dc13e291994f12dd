"""`modalign judge`: a model judges sampled answers; the judgments go to a feedback store, with a report.

Read top to bottom: the answers (JSONL rows with `example_id` and `text`: a run's `samples/`, a loop
round's `samples.jsonl`, or your own file) grouped by example, each example's distinct answers
-> the judge model (`judge=model:<folder or hub id>`; `feedback.judges.model_judge`) judges them
pairwise (every pair, both orders), as one ranking, or rates each -> examples, answers and judgments
(annotator `model:<name>`, with provenance) into the store -> the judge report
(`feedback.judges.report`: gold accuracy and agreement with the simulated panel on ShapesWorld, agreement
with the people who judged the same answers in that store, position-inconsistent share, cost).

Folder `out/`: `config.yaml`, `feedback.db` (unless `store` names another), `summary.json` (with
`judge_report`), `verdicts.jsonl` (every verdict, ties and provenance included).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from modalign.config import ConfigError, field_doc
from modalign.data.records import Completion, Example, RecordError


@dataclass
class JudgeConfig:
    """A model judges a folder or file of sampled answers (`modalign judge`)."""

    out: str = field_doc("", "Run folder; empty means runs/judge-<time>.")
    judge: str = field_doc("", "model:<folder or hub id>: the judge, any policy modalign loads.")
    samples: str = field_doc("", "Answers to judge: JSONL files of {example_id, text} rows, or folders of them "
                                 "(a run's samples/), comma-separated; an example's distinct answers are judged together.")
    data: str = field_doc("", "Dataset folder holding the examples the answers answer (their media go to the judge).")
    split: str = field_doc("", "Split the examples are in ('': any split of the dataset).")
    task: str = field_doc("pairwise", "pairwise (every pair of an example's answers, both orders), ranking (one per "
                                      "example) or rating (one per answer).")
    judge_template: str = field_doc("", "A file replacing the prompt template of the judge (docs/ai-feedback.md): "
                                        "the pairwise one, or the rating one for task=rating or judge_ranking=rating.")
    judge_disagreement: str = field_doc("tie", "A pair whose two orders disagree: tie (stored as a tie) or drop.")
    judge_ranking: str = field_doc("pairwise", "task=ranking from pairwise judgments (Bradley-Terry, n(n-1) questions "
                                               "for n answers) or from ratings (expected rating, n questions).")
    store: str = field_doc("", "Feedback store the judgments go to (feedback.db path, a folder holding one, or "
                               "SQLAlchemy URL; '': out/feedback.db). Judgments by people already in it are compared "
                               "with the judge's.")
    max_examples: int = field_doc(0, "Examples judged (0: all).")
    batch_size: int = field_doc(32, "Questions per judge forward batch.")
    seed: int = field_doc(0, "Seed of the simulated panel the judge is compared with (ShapesWorld).")


def run_judge(cfg: JudgeConfig) -> dict:
    """Judge the answers, store the judgments, write the summary (returned) with its judge report."""
    from modalign.feedback.judges.model_judge import check_model_judge, load_model_judge
    from modalign.feedback.store_spec import STORE_FILE, open_store
    from modalign.runs import RunDir, default_run_dir
    from modalign.ui import console

    started = time.time()
    check_settings(cfg)
    check_model_judge(cfg.judge, cfg.judge_template, cfg.judge_ranking, task=cfg.task)
    groups = read_answers(cfg.samples)
    examples = dataset_examples(cfg.data, cfg.split, groups)
    chosen = [i for i in groups if len(groups[i]) >= (1 if cfg.task == "rating" else 2)]
    chosen = chosen[: cfg.max_examples] if cfg.max_examples else chosen
    if not chosen:
        raise ConfigError(f"samples {cfg.samples!r}: no example has two distinct answers to compare; judge them "
                          f"with task=rating, or sample several answers per prompt (samples_per_prompt)")
    check_media(cfg.data, [examples[i] for i in chosen])
    run = RunDir.create(cfg.out or default_run_dir("judge"), cfg)
    store = open_store(cfg.store, default_path=run.path / STORE_FILE)
    judge = load_model_judge(cfg.judge, cfg.data, cfg.judge_template, cfg.judge_disagreement, cfg.judge_ranking,
                             cfg.batch_size, task=cfg.task)
    console.print(f"[bold]judge[/] {judge.name}: {cfg.task} on {len(chosen)} examples' answers -> {store.url}")
    verdicts = {i: judge_answers(judge, examples[i], groups[i], cfg.task) for i in chosen}
    stored = store_verdicts(store, judge.name, [examples[i] for i in chosen], groups, verdicts, cfg.data)
    write_verdicts(run.path / "verdicts.jsonl", groups, verdicts)
    report = make_report(judge, stored, groups, verdicts, examples, store, cfg.seed)
    summary = {"stage": "judge", "judge": judge.name, "task": cfg.task, "data": cfg.data, "samples": cfg.samples,
               "examples": len(chosen), "judgments": stored, "store": store.url,
               "judge_report": {"judge": judge.name, "task": cfg.task, **report},
               "wall_seconds": round(time.time() - started, 1)}
    run.write_summary(summary)
    print_report(summary)
    return summary


def check_settings(cfg: JudgeConfig) -> None:
    from modalign.feedback.judges.model_judge import check_settings as check_judge_settings
    from modalign.feedback.judges.model_judge import is_model_judge

    for name in ("judge", "samples", "data"):
        if not getattr(cfg, name).strip():
            raise ConfigError(f"{name} is empty: modalign judge needs judge=model:<folder>, samples=<jsonl or folder> "
                              f"and data=<dataset folder>")
    if not is_model_judge(cfg.judge):
        raise ConfigError(f"judge={cfg.judge!r}: modalign judge takes model:<folder or hub id>")
    check_judge_settings(cfg.task, cfg.judge_disagreement, cfg.judge_ranking)


def sample_files(samples: str) -> list[Path]:
    """The JSONL files of `samples` (comma-separated files or folders: a folder's *.jsonl files)."""
    files = []
    for part in (p.strip() for p in samples.split(",") if p.strip()):
        path = Path(part)
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"samples folder {path} holds no .jsonl file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"samples {part!r}: no such file or folder")
    return files


def read_answers(samples: str) -> dict[str, list[Completion]]:
    """example id -> its distinct answers (first seen first) over every samples file; a bad row names its line."""
    from modalign.data.dataset import jsonl_rows

    groups: dict[str, dict[str, Completion]] = {}
    for file in sample_files(samples):
        for line_no, row in jsonl_rows(file):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "example_id" not in row:
                raise RecordError(f"{file}:{line_no}: an answer row needs 'example_id' and a 'text' string")
            answer = Completion(str(row["example_id"]), row["text"].strip(), str(row.get("policy_version", "")),
                                row.get("sampling") if isinstance(row.get("sampling"), dict) else {})
            groups.setdefault(answer.example_id, {}).setdefault(answer.text, answer)
    return {example_id: list(answers.values()) for example_id, answers in groups.items()}


def dataset_examples(data: str, split: str, groups: dict) -> dict[str, Example]:
    """The examples the answers answer (from `split`, or every split); an unknown example id is an error."""
    from modalign.data.dataset import list_splits, read_examples

    if not Path(data).is_dir():
        raise FileNotFoundError(f"data {data!r}: no such dataset folder")
    examples = {e.id: e for s in ([split] if split else list_splits(data)) for e in read_examples(data, s)}
    missing = [i for i in groups if i not in examples]
    if missing:
        raise RecordError(f"samples {missing[0]!r} (and {len(missing) - 1} more) are not examples of {data} "
                          f"(split {split or 'any'}): set data (and split) to the dataset the answers were sampled on")
    return examples


def check_media(data: str, examples: list[Example]) -> None:
    from modalign.validate import check_media as check_files

    check_files(data, examples, data)


def judge_answers(judge, example: Example, answers: list[Completion], task: str) -> list:
    from modalign.feedback.judges.model_judge import judge_group

    verdicts, _ = judge_group(judge, example, [a.text for a in answers], task)
    return verdicts


def store_verdicts(store, annotator: str, examples: list[Example], groups: dict, verdicts: dict, data: str) -> int:
    """Examples, answers (as candidates) and every verdict as a judgment with its provenance; returns how many."""
    from modalign.feedback.judgments import PairwiseJudgment, RankingJudgment, RatingJudgment

    store.add_examples(examples, root=data)
    judgments = []
    for example in examples:
        ids = store.add_candidates(groups[example.id])
        for v in verdicts[example.id]:
            common = dict(example_id=example.id, annotator=annotator, provenance=v.provenance)
            if v.kind == "pairwise":
                judgments.append(PairwiseJudgment(**common, candidate_a=ids[v.candidates[0]],
                                                  candidate_b=ids[v.candidates[1]], choice=v.choice))
            elif v.kind == "ranking":
                judgments.append(RankingJudgment(**common, ranking=tuple(ids[i] for i in v.candidates)))
            else:
                judgments.append(RatingJudgment(**common, candidate=ids[v.candidates[0]],
                                                ratings={"overall": v.rating}, scale=v.scale))
    if judgments:
        store.add_judgments(judgments)
    return len(judgments)


def write_verdicts(path: Path, groups: dict, verdicts: dict) -> None:
    from modalign.runs import write_jsonl_atomic

    write_jsonl_atomic(path, [{"example_id": i, "kind": v.kind, "answers": [groups[i][c].text for c in v.candidates],
                               "choice": v.choice or None, "rating": v.rating or None, "provenance": v.provenance}
                              for i, found in verdicts.items() for v in found])


def make_report(judge, stored: int, groups: dict, verdicts: dict, examples: dict, store, seed: int) -> dict:
    from modalign.feedback.judges.model_judge import usage
    from modalign.feedback.judges.report import judge_report, labels_from_verdicts, people_labels

    labels = {}
    for example_id, found in verdicts.items():
        labels.update(labels_from_verdicts(example_id, [a.text for a in groups[example_id]], found))
    return judge_report(labels, examples, usage(judge, stored), people_labels(store), seed)


def print_report(summary: dict) -> None:
    from modalign.ui import console

    report = summary["judge_report"]
    shown = ("gold_accuracy", "panel_agreement", "panel_kappa", "people_agreement", "position_inconsistent_share",
             "forwards_per_judgment")
    numbers = ", ".join(f"{key} {report[key]:.3f}" for key in shown if isinstance(report.get(key), (int, float)))
    console.print(f"{summary['judgments']} judgments of {summary['examples']} examples -> {summary['store']}"
                  + (f"; {numbers}" if numbers else ""))
