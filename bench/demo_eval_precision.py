"""How precise are the demo's gold numbers, and what would fewer samples per held-out prompt cost?

    PYTHONPATH=src python bench/demo_eval_precision.py runs/demo-<time>

Reads a finished demo's held-out samples (the loop's eval-start = SFT, and the last round's) and
reports hallucination rate and VQA accuracy with a bootstrap standard error over held-out scenes
(the 4 answers of one prompt are not independent), using the first k = 4, 2, 1 samples per prompt.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        answers[row["example_id"]].append(row["text"])
    return answers


def gold(examples, answers_by_id, k: int, scenes: list[str]) -> dict[str, float]:
    from modalign.data.shapes import score_shapes

    chosen = [e for s in scenes for e in examples[s]]
    flat_examples = [e for e in chosen for _ in answers_by_id[e.id][:k]]
    flat_answers = [a for e in chosen for a in answers_by_id[e.id][:k]]
    metrics = score_shapes(flat_examples, flat_answers)
    return {key: metrics[key] for key in ("hallucination_rate", "vqa_accuracy")}


def main(demo: Path, reps: int = 200) -> None:
    from modalign.data.dataset import read_examples

    examples: dict[str, list] = defaultdict(list)
    for e in read_examples(demo / "sft" / "data", "test"):
        examples[e.id.rsplit("-", 1)[0]].append(e)  # scene -> its caption and questions
    scenes = sorted(examples)
    rounds = sorted((demo / "loop").glob("round-*/eval_samples.jsonl"))
    for name, path in (("SFT", demo / "loop" / "eval-start_samples.jsonl"), ("RLHF", rounds[-1])):
        answers = load(path)
        for k in (4, 2, 1):
            point = gold(examples, answers, k, scenes)
            rng = random.Random(0)
            boots = [gold(examples, answers, k, rng.choices(scenes, k=len(scenes))) for _ in range(reps)]
            stderr = {key: (sum((b[key] - sum(x[key] for x in boots) / reps) ** 2 for b in boots) / (reps - 1)) ** 0.5
                      for key in point}
            print(f"{name} k={k}: " + ", ".join(f"{key} {point[key]:.4f} +- {stderr[key]:.4f}" for key in point))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
