"""Gold evaluation: several sampled answers per prompt are all scored, not just the last one."""

from __future__ import annotations

from modalign.data.dataset import read_examples
from modalign.data.records import Completion
from modalign.eval.generation import evaluate_split
from modalign.eval.metrics import score_completions
from modalign.models.policy import load_policy

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


def wrong_colour(answer: str) -> str:
    """The caption with its first colour word swapped for one that is not in it."""
    for colour in COLOURS:
        if colour in answer:
            return answer.replace(colour, next(c for c in COLOURS if c not in answer), 1)
    raise AssertionError(f"no colour in {answer!r}")


def test_every_sample_of_a_prompt_counts(sft_model):
    _, data = sft_model
    caption = next(e for e in read_examples(data, "test") if e.meta["task"] == "caption")
    right = Completion(caption.id, caption.answer, "p", {})
    wrong = Completion(caption.id, wrong_colour(caption.answer), "p", {})
    assert score_completions([caption], [right])["caption_hallucinated_share"] == 0.0
    assert score_completions([caption], [wrong])["caption_hallucinated_share"] == 1.0
    both = score_completions([caption, caption], [right, wrong])
    assert both["caption_hallucinated_share"] == 0.5 and both["n_captions"] == 2.0


def test_evaluate_split_scores_k_samples_per_prompt(sft_model, tmp_path):
    model_dir, data = sft_model
    n_test = len(read_examples(data, "test"))
    metrics = evaluate_split(load_policy(model_dir), data, "test", max_new_tokens=8, samples_per_example=3,
                             samples_path=tmp_path / "samples.jsonl")
    assert metrics["n_examples"] == 3 * n_test
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * n_test
