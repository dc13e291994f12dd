"""All metrics of a set of answers: gold scorers where the world has ground truth, answer accuracy
where the data has `meta.answer`, text overlap against the reference answer, and the same per task
and per modality.

Breakdowns are flat keys, so every metrics dict stays `dict[str, float]`:
`task/<task>/<metric>` (`meta.task`; "all" when no example has one) and
`modality/<image|audio|image+audio|text>/<metric>` (from the example's media).
"""

from __future__ import annotations

from typing import Sequence

from modalign.data.records import Completion, Example

BREAKDOWNS = ("task", "modality")


def references_of(example: Example) -> list[str]:
    """Reference texts: `meta["references"]` when present, else the reference answer."""
    refs = example.meta.get("references")
    if refs:
        return [str(r) for r in refs]
    return [example.answer] if example.answer else []


def gold_answers(example: Example) -> list[str]:
    """The accepted answers of `meta.answer`: one string, or a list of alternatives (any one counts)."""
    answer = example.meta.get("answer")
    if answer is None:
        return []
    return [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]


def modality_of(example: Example) -> str:
    """image, audio, image+audio or text: which media the example's prompt carries."""
    kinds = {ref.kind for ref in example.media}
    return "+".join(kind for kind in ("image", "audio") if kind in kinds) or "text"


def task_of(example: Example, tagged: bool) -> str:
    """`meta.task`; "all" when the data has no tasks, "untagged" for an example without one among tagged ones."""
    return str(example.meta.get("task") or ("untagged" if tagged else "all"))


def score_completions(examples: Sequence[Example], completions: Sequence[Completion],
                      breakdown: bool = True) -> dict[str, float]:
    """Gold metrics (ShapesWorld only), answer accuracy, BLEU and ROUGE-L; with `breakdown` the
    answer and text metrics of each task and modality too (keys `task/...`, `modality/...`)."""
    answers = _answers_in_order(examples, completions)
    metrics = answer_metrics(examples, answers)
    shapes = [(e, a) for e, a in zip(examples, answers) if e.meta.get("world") == "shapes"]
    if shapes:
        from modalign.data.shapes import score_shapes

        metrics.update(score_shapes([e for e, _ in shapes], [a for _, a in shapes]))
    if breakdown:
        tagged = any(e.meta.get("task") for e in examples)
        for name, group_of in (("task", lambda e: task_of(e, tagged)), ("modality", modality_of)):
            groups: dict[str, list[int]] = {}
            for i, example in enumerate(examples):
                groups.setdefault(group_of(example), []).append(i)
            for group, rows in sorted(groups.items()):
                part = answer_metrics([examples[i] for i in rows], [answers[i] for i in rows])
                metrics.update({f"{name}/{group}/{key}": value for key, value in part.items()})
    return metrics


def answer_metrics(examples: Sequence[Example], answers: Sequence[str]) -> dict[str, float]:
    """Metrics any data has: `n_examples`; `exact_match` and `normalized_accuracy` (VQA normalisation)
    over the examples with `meta.answer` (`n_answers` of them); corpus BLEU and ROUGE-L over those with a
    reference text; the mean answer length in words."""
    from modalign.eval.text_metrics import bleu, exact_match, rouge_l, vqa_match

    metrics: dict[str, float] = {"n_examples": float(len(examples))}
    graded = [(a, gold_answers(e)) for e, a in zip(examples, answers) if gold_answers(e)]
    if graded:
        metrics["n_answers"] = float(len(graded))
        metrics["exact_match"] = sum(any(exact_match(a, g) for g in gold) for a, gold in graded) / len(graded)
        metrics["normalized_accuracy"] = sum(any(vqa_match(a, g) for g in gold) for a, gold in graded) / len(graded)
    with_refs = [(a, references_of(e)) for e, a in zip(examples, answers) if references_of(e)]
    if with_refs:
        predictions, references = [p for p, _ in with_refs], [r for _, r in with_refs]
        metrics["bleu"] = bleu(predictions, references)
        metrics["rouge_l"] = rouge_l(predictions, references)
    metrics["mean_answer_words"] = sum(len(a.split()) for a in answers) / max(1, len(answers))
    return metrics


def overall(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without the per-task and per-modality keys."""
    return {k: v for k, v in metrics.items() if k.split("/", 1)[0] not in BREAKDOWNS}


def breakdown_table(metrics: dict, kind: str) -> dict[str, dict[str, float]]:
    """{group: {metric: value}} of one breakdown (`task` or `modality`) from flat metric keys."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        prefix, _, rest = key.partition("/")
        group, _, metric = rest.rpartition("/")  # a task name may hold a slash, a metric name never
        if prefix == kind and group:
            table.setdefault(group, {})[metric] = value
    return table


def _answers_in_order(examples: Sequence[Example], completions: Sequence[Completion]) -> list[str]:
    """Each example's answer: position by position when the lists line up (several samples of one
    example in a row), else by example id."""
    if len(examples) == len(completions) and all(e.id == c.example_id for e, c in zip(examples, completions)):
        return [c.text for c in completions]
    by_id = {c.example_id: c.text for c in completions}
    missing = [e.id for e in examples if e.id not in by_id]
    if missing:
        raise ValueError(f"no completion for {len(missing)} example(s), e.g. {missing[:3]}")
    return [by_id[e.id] for e in examples]
