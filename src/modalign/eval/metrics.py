"""All metrics of a set of answers: gold scorers where the world has ground truth, text overlap otherwise."""

from __future__ import annotations

from typing import Sequence

from modalign.data.records import Completion, Example


def references_of(example: Example) -> list[str]:
    """Reference texts: `meta["references"]` when present, else the reference answer."""
    refs = example.meta.get("references")
    if refs:
        return [str(r) for r in refs]
    return [example.answer] if example.answer else []


def score_completions(examples: Sequence[Example], completions: Sequence[Completion]) -> dict[str, float]:
    """Gold metrics (ShapesWorld) plus corpus BLEU and ROUGE-L against the references."""
    from modalign.eval.text_metrics import bleu, rouge_l

    answers = _answers_in_order(examples, completions)
    metrics: dict[str, float] = {"n_examples": float(len(examples))}
    shapes = [(e, a) for e, a in zip(examples, answers) if e.meta.get("world") == "shapes"]
    if shapes:
        from modalign.data.shapes import score_shapes

        metrics.update(score_shapes([e for e, _ in shapes], [a for _, a in shapes]))
    with_refs = [(a, references_of(e)) for e, a in zip(examples, answers) if references_of(e)]
    if with_refs:
        predictions, references = [p for p, _ in with_refs], [r for _, r in with_refs]
        metrics["bleu"] = bleu(predictions, references)
        metrics["rouge_l"] = rouge_l(predictions, references)
    metrics["mean_answer_words"] = sum(len(a.split()) for a in answers) / max(1, len(answers))
    return metrics


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
