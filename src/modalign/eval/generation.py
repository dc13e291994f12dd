"""Batched answer generation for evaluation and sampling."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from modalign.data.records import Completion, Example
from modalign.device import model_device
from modalign.models.inputs import MediaStore, prompt_batch
from modalign.models.policy import Policy


@torch.no_grad()
def generate_answers(
    policy: Policy,
    media: MediaStore,
    examples: Sequence[Example],
    batch_size: int = 64,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    progress=None,
    samples_per_example: int = 1,
) -> list[Completion]:
    """`samples_per_example` completions per example (in example order); `temperature=0` decodes greedily.

    Sampling is seeded, so the same policy, data and seed give the same answers.
    """
    model, processor = policy.model, policy.processor
    was_training = model.training
    model.eval()
    sampling = {"temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed}
    completions: list[Completion] = []
    try:
        with seeded(seed, model_device(model)):
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = prompt_batch(processor, media, chunk, model_device(model))
                prompt_length = batch["input_ids"].shape[1]
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_k=None,
                    top_p=None,
                    pad_token_id=processor.tokenizer.pad_token_id,
                    num_return_sequences=samples_per_example,
                )
                texts = processor.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
                owners = [example for example in chunk for _ in range(samples_per_example)]
                completions += [
                    Completion(example.id, text.strip(), policy.name, sampling) for example, text in zip(owners, texts)
                ]
                if progress is not None:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    return completions


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Inside, torch's random numbers start from `seed`; after, the CPU's and `device`'s random states are
    what they were. `torch.manual_seed` reseeds the GPUs too: restoring only the CPU's state would leave the
    GPU's generator at `seed` after every evaluation, so training would replay the same random numbers."""
    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type=None if device.type == "cpu" else device.type):
        torch.manual_seed(seed)
        yield


def write_samples(path, examples: Sequence[Example], completions: Sequence[Completion]) -> None:
    """One JSON line per answer, with its prompt and reference, for reading and reports."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example, completion in zip(examples, completions):
            row = {**completion.to_dict(), "prompt": example.prompt_text, "reference": example.answer}
            handle.write(json.dumps(row) + "\n")


def select_examples(data_root, split: str, task: str = "", max_examples: int = 0,
                    modalities: str = "") -> list[Example]:
    """The split's examples (of `task` when given, with only the `modalities` media kinds: `data.modalities`),
    at most `max_examples` (0: all)."""
    from modalign.data.dataset import read_examples

    examples = [e for e in read_examples(data_root, split, modalities) if not task or e.meta.get("task") == task]
    return examples[:max_examples] if max_examples else examples


def media_store(policy: Policy, data_root) -> MediaStore:
    """The examples' media at the sampling rate the policy's processor expects."""
    extractor = getattr(policy.processor, "feature_extractor", None)
    return MediaStore(data_root, sample_rate=int(getattr(extractor, "sampling_rate", 16000)))


def decoding(temperature: float, samples_per_example: int) -> dict:
    """How answers were decoded, for summaries: greedy, or sampled at a temperature with k answers per prompt."""
    if temperature <= 0 and samples_per_example > 1:
        from modalign.config import ConfigError

        raise ConfigError(f"{samples_per_example} samples per prompt at temperature 0: greedy answers are all the "
                          "same; set a temperature > 0 to sample them")
    return {"temperature": float(temperature), "samples_per_prompt": float(samples_per_example),
            "greedy": float(temperature <= 0)}


def generate_split(policy: Policy, data_root, examples: Sequence[Example], max_new_tokens: int = 40,
                   temperature: float = 0.0, seed: int = 0, batch_size: int = 64, samples_per_example: int = 1,
                   dist=None, label: str = "eval") -> list[Completion]:
    """`samples_per_example` answers to each example, in example order (each example's k in a row).

    `dist` (`modalign.dist.Processes`, many processes): each process generates for examples
    rank, rank + N, ... (the same seed in each, so the answers differ from one process's), and the
    answers are gathered back in example order in every process.
    """
    from modalign.ui import progress_bar

    many = dist is not None and dist.many
    mine = examples[dist.rank :: dist.world] if many else examples
    with progress_bar(label, total=len(mine)) as advance:
        completions = generate_answers(policy, media_store(policy, data_root), mine, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                       progress=advance, samples_per_example=samples_per_example)
    if many:  # gathered back in example order, each example's k answers in a row
        k = samples_per_example
        per_example = dist.unshard([completions[i * k : i * k + k] for i in range(len(mine))], len(examples))
        completions = [completion for answers in per_example for completion in answers]
    return completions


def evaluate_split(
    policy: Policy, data_root, split: str, max_examples: int = 0, max_new_tokens: int = 40,
    temperature: float = 0.0, seed: int = 0, samples_path=None, task: str = "", batch_size: int = 64,
    samples_per_example: int = 1, dist=None, modalities: str = "",
) -> dict[str, float]:
    """Generate on a held-out split (optionally one task) and score: gold metrics (ShapesWorld), answer
    accuracy (`meta.answer`), BLEU/ROUGE-L, per task and per modality (`eval.metrics`).

    Greedy by default (`temperature=0`). The returned metrics say how the answers were decoded
    (`temperature`, `samples_per_prompt`, `greedy`). With `samples_per_example` k > 1 (sampling)
    every metric averages over k sampled answers per prompt: the expected rate under the policy,
    with a smaller sampling error than one draw gives. `dist`: see `generate_split`; every
    process scores all the answers. `modalities`: see `select_examples`.
    """
    from modalign.eval.metrics import score_completions

    how = decoding(temperature, samples_per_example)
    examples = select_examples(data_root, split, task, max_examples, modalities)
    completions = generate_split(policy, data_root, examples, max_new_tokens, temperature, seed, batch_size,
                                 samples_per_example, dist)
    repeated = [e for e in examples for _ in range(samples_per_example)]  # completions come in this order
    if samples_path is not None:
        write_samples(samples_path, repeated, completions)
    return {**score_completions(repeated, completions), **how}
