"""Reward sources for online RL: callables from (examples, answers, samples) to scores (N,)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import torch

from modalign.config import ConfigError
from modalign.data.records import Example
from modalign.device import model_device, to_device
from modalign.reward.model import ScalarHeadModel
from modalign.rl.rollout import Samples


class RewardSource(Protocol):
    def __call__(self, examples: Sequence[Example], answers: Sequence[str], samples: Samples,
                 prompts: dict[str, torch.Tensor]) -> torch.Tensor: ...


class RewardModelSource:
    """Scores from a trained reward model, which reads the image and the audio itself.

    Its backbone may have its own (fine-tuned) encoders, so it encodes the media once per
    prompt and repeats the features for the prompt's samples.
    """

    def __init__(self, model: ScalarHeadModel, normalize: bool = True) -> None:
        self.model, self.normalize = model.eval(), normalize
        self.processor = None  # loaded on first use by `score_texts`

    @torch.no_grad()
    def __call__(self, examples, answers, samples: Samples, prompts) -> torch.Tensor:
        return self.token_rewards(examples, answers, samples, prompts).sum(1)

    @torch.no_grad()
    def token_rewards(self, examples, answers, samples: Samples, prompts) -> torch.Tensor:
        """The score spread over the response tokens (N, T), summing to the score (dense rewards), on the
        rollout's device (the reward model may sit on another one: its inputs are moved to it)."""
        backbone, rollout_device = self.model.backbone, samples.sequences.device
        samples, prompts = to_device((samples, prompts), model_device(self.model))
        repeats = samples.sequences.shape[0] // prompts["input_ids"].shape[0]
        media = backbone.encode_media(prompts["input_ids"], prompts.get("pixel_values"), prompts.get("input_values"))
        media = media.repeat_interleave(repeats, prompts["input_ids"].shape[0])
        answer_mask = torch.cat([torch.zeros_like(samples.attention_mask[:, : samples.prompt_length]),
                                 samples.response_mask], dim=1)  # (N, P + T)
        dense = self.model.dense_scores(samples.sequences, samples.attention_mask, normalize=self.normalize,
                                        answer_mask=answer_mask, media=media)[..., 0]  # (N, P + T)
        return dense[:, samples.prompt_length :].to(rollout_device)


class FunctionSource:
    """A Python rule `fn(example, answer) -> float` (it may read the example's ground truth)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, examples, answers, samples, prompts) -> torch.Tensor:
        return torch.tensor([float(self.fn(e, a)) for e, a in zip(examples, answers)], device=_device_of(samples))


class PythonSource:
    """A user function named `py:<module>:<fn>` or `py:<file.py>:<fn>` (`modalign.plugins`).

    Signature, over batches as TRL's reward functions: `fn(examples: list[Example],
    completions: list[str]) -> list[float]`, one finite score per completion. A per-example
    `fn(example, completion)` is not accepted: one call per batch lets the function batch its
    own work (a classifier, an API call). Its result is checked on every call.
    """

    def __init__(self, spec: str) -> None:
        from modalign.plugins import load_callable

        self.spec, self.fn = spec, load_callable(spec, positional=2)

    def __call__(self, examples, answers, samples, prompts) -> torch.Tensor:
        from modalign.plugins import check_scores

        scores = self.fn(list(examples), list(answers))
        return torch.tensor(check_scores(self.spec, scores, len(answers), f"{len(answers)} completions"),
                            device=_device_of(samples))


def _device_of(samples: Samples | None) -> torch.device:
    """Where a rollout's scores go: its device (`score_texts` passes no rollout: the CPU)."""
    return samples.sequences.device if samples is not None else torch.device("cpu")


def place_reward_models(source: RewardSource, device: torch.device) -> None:
    """Move the reward models of `source` (a weighted sum's too) to `device`, the policy's."""
    for part in [p for _, _, p in source.parts] if isinstance(source, CompositeSource) else [source]:
        if isinstance(part, RewardModelSource):
            part.model.to(device)


JUDGE_PREFIX = "judge:"


class ClaimJudgeSource:
    """`judge:claims:<model folder | self>[?options]`: each answer's claim-verification score
    (`feedback.judges.claims.claim_score`: verified_weight x verified - refute_weight x refuted claims), batched
    and cached.

    The recipe binds it to its policy and media (`bind_judges`) before the first call. `claims:self`
    judges with a frozen copy of the policy as the run starts (the reference): a judge that moved with
    every update would score the same claim differently from step to step, and nothing could be cached.
    """

    def __init__(self, spec: str) -> None:
        self.spec, self.judge, self._bound = spec, None, None

    def bind(self, policy, media) -> None:
        self._bound, self.judge = (policy, media), None

    def __call__(self, examples, answers, samples=None, prompts=None) -> torch.Tensor:
        scores = self._judge(examples).scores(list(examples), list(answers))
        return torch.tensor(scores, device=_device_of(samples))  # on the rollout's device, as rule rewards are

    def score(self, examples, answers, media) -> torch.Tensor:
        """Scores without a rollout (`score_texts`): `media` is a MediaStore over the examples' root."""
        if self._bound is None:
            self._bound = (None, media)
        return self(examples, answers)

    def _judge(self, examples):
        from modalign.feedback.judges.claims import ClaimJudgeSpec, claim_judge

        if self.judge is None:
            if self._bound is None:
                raise ValueError(f"reward {JUDGE_PREFIX}{self.spec}: bind it to the run's policy and media first")
            policy, media = self._bound
            if ClaimJudgeSpec.parse(self.spec).is_self and policy is not None:
                from modalign.models.policy import Policy, frozen_reference

                policy = Policy(frozen_reference(policy.model), policy.processor, f"{policy.name or 'policy'}@start")
            self.judge = claim_judge(self.spec, examples, media, policy, getattr(policy, "name", ""))
        return self.judge


def bind_judges(source, policy, media) -> None:
    """Give the model-judge terms of a reward (`judge:claims:...`) the run's policy and media."""
    for part in ([p for _, _, p in source.parts] if isinstance(source, CompositeSource) else [source]):
        if isinstance(part, ClaimJudgeSource):
            part.bind(policy, media)


# Rule rewards by name, for configs ("rule:shapes_gold"). A rule is fn(example, answer) -> float.
RULES: dict = {}
# Rules that read ShapesWorld ground truth (meta.scene / meta.answer of meta.world == "shapes"), and
# what their error tells users of other data to use.
SHAPES_RULES = ("shapes_gold", "shapes_accuracy", "shapes_hallucination")
RULE_ALTERNATIVE = "for your data use a reward model folder or py:<file.py>:<function>"


def register_rule(name: str):
    """Decorator: make `fn(example, answer) -> float` available as `rule:<name>`."""

    def add(fn):
        RULES[name] = fn
        return fn

    return add


@register_rule("shapes_gold")
def shapes_gold(example: Example, answer: str) -> float:
    """ShapesWorld ground truth: caption (facts right - 2 x facts wrong) / true facts; question 1 if right."""
    from modalign.feedback.simulated import gold_utility

    _require_truth(example, "shapes_gold")
    return gold_utility(example, answer)


@register_rule("shapes_accuracy")
def shapes_accuracy(example: Example, answer: str) -> float:
    """Grounding: caption share of the scene's true facts stated correctly; question 1 if right."""
    from modalign.data.shapes.scorers import answer_facts, normalize_answer

    _require_truth(example, "shapes_accuracy")
    if example.meta.get("task") == "caption":
        facts = answer_facts(example, answer)
        return facts["covered"] / facts["true_facts"]
    return float(normalize_answer(answer) == normalize_answer(str(example.meta.get("answer", ""))))


@register_rule("shapes_hallucination")
def shapes_hallucination(example: Example, answer: str) -> float:
    """Minus the share of the caption's stated facts that the scene contradicts (0 for questions)."""
    from modalign.data.shapes.scorers import answer_facts

    _require_truth(example, "shapes_hallucination")
    if example.meta.get("task") != "caption":
        return 0.0
    facts = answer_facts(example, answer)
    return -facts["hallucinated"] / max(1, facts["mentions"])


def _require_truth(example: Example, rule: str) -> None:
    from modalign.data.shapes.scorers import require_shapes_truth

    require_shapes_truth([example], f"rule:{rule}", RULE_ALTERNATIVE, need_world=False)


@register_rule("length_penalty")
def length_penalty(example: Example, answer: str, limit: int = 30) -> float:
    """Minus the words beyond `limit`, relative to it (0 for answers within the limit)."""
    return -max(0, len(answer.split()) - limit) / limit


@register_rule("format")
def format_reward(example: Example, answer: str) -> float:
    """1 for a non-empty answer without repeated sentences that ends in punctuation or is one word."""
    text = answer.strip()
    sentences = [s.strip() for s in text.split(".") if s.strip()]
    ends_well = text.endswith((".", "!", "?")) or len(text.split()) == 1
    return float(bool(text) and ends_well and len(sentences) == len(set(sentences)))


class CompositeSource:
    """A weighted sum of reward sources; each component's mean is kept for logging (`last_components`)."""

    def __init__(self, parts: list[tuple[str, float, RewardSource]]) -> None:
        self.parts = parts
        self.last_components: dict[str, float] = {}

    def __call__(self, examples, answers, samples, prompts) -> torch.Tensor:
        total = None
        for name, weight, source in self.parts:
            scores = source(examples, answers, samples, prompts).float()
            self.last_components[name] = float(scores.mean())
            total = weight * scores if total is None else total + weight * scores
        return total


def reward_source_from(spec: str) -> RewardSource:
    """A reward from a spec: a reward-model folder, `rule:<name>`, `py:<module or file.py>:<fn>`
    (see `PythonSource`), or a weighted sum of those.

    Sum syntax: `0.5*runs/reward/model + 1.0*rule:shapes_hallucination + 0.1*py:my_rewards.py:brevity`.
    A bad spec is a ConfigError naming it (and the term of a sum).
    """
    if not spec.strip():
        raise ConfigError("no reward given: set reward_model to a reward-model folder, rule:<name>, "
                          "py:<file.py>:<function> or a weighted sum")
    terms = [term.strip() for term in spec.split("+")]
    if len(terms) == 1 and "*" not in terms[0]:
        return _single_source(terms[0])
    parts = []
    for term, (name, weight) in zip(terms, reward_terms(spec)):
        try:
            parts.append((name, weight, _single_source(name)))
        except ValueError as err:
            raise ConfigError(f"reward {spec!r}, term {term!r}: {err}") from None
    return CompositeSource(parts)


def reward_terms(spec: str) -> list[tuple[str, float]]:
    """(name, weight) of each term: `0.5*rule:a + py:f.py:g` -> [('rule:a', 0.5), ('py:f.py:g', 1.0)]."""
    terms = []
    for term in spec.split("+"):
        weight, _, name = term.partition("*") if "*" in term else ("1", "", term)
        try:
            terms.append((name.strip(), float(weight)))
        except ValueError:
            raise ConfigError(f"reward {spec!r}, term {term.strip()!r}: the weight {weight.strip()!r} is not a "
                              f"number (write <weight>*<reward>)") from None
    return terms


def _single_source(name: str) -> RewardSource:
    from modalign.plugins import is_plugin

    if name.startswith("rule:"):
        rule = name[len("rule:"):]
        if rule not in RULES:
            raise ConfigError(f"no rule named {rule!r} (known: {', '.join(sorted(RULES))}; "
                              f"your own function: py:<file.py>:<function>)")
        return FunctionSource(RULES[rule])
    if is_plugin(name):
        return PythonSource(name)
    if name.startswith(JUDGE_PREFIX):
        return _judge_source(name)
    return RewardModelSource(ScalarHeadModel.load(name))


def _judge_source(name: str) -> RewardSource:
    from modalign.feedback.judges.claims import is_claims

    spec = name[len(JUDGE_PREFIX):]
    if not is_claims(spec):
        raise ConfigError(f"reward {name!r}: a judge reward is judge:claims:<model folder or self>")
    return ClaimJudgeSource(spec)



def check_reward(spec: str, examples: Sequence[Example], key: str = "reward_model") -> None:
    """Fail before any work when a reward cannot score `examples` (the prompts it will see).

    Checks every term of `spec`: rules exist and the ShapesWorld rules find ShapesWorld ground
    truth; `py:` functions load and take two arguments; reward-model folders exist. Loads no model.
    Raises a ConfigError naming `key` and the term (and the first record without ground truth).
    """
    from modalign.data.shapes.scorers import ShapesTruthError, require_shapes_truth
    from modalign.plugins import is_plugin, load_callable

    if not spec.strip():
        reward_source_from(spec)  # the "no reward given" error
    for name, _ in reward_terms(spec):
        try:
            if name.startswith("rule:"):
                _single_source(name)  # an unknown rule's error lists the known ones
                if name[len("rule:"):] in SHAPES_RULES:
                    require_shapes_truth(examples, name, RULE_ALTERNATIVE)
            elif is_plugin(name):
                load_callable(name, positional=2)
            elif name.startswith(JUDGE_PREFIX):
                from modalign.feedback.judges.claims import check_claims_judge

                _judge_source(name)
                check_claims_judge(name[len(JUDGE_PREFIX):], examples)
            elif not Path(name).is_dir():
                raise ConfigError(f"no reward-model folder {name} (or write rule:<name> or py:<file.py>:<function>)")
        except ShapesTruthError:
            raise  # it names the rule and the record already
        except ConfigError as err:
            where = f"{key}={spec!r}" + (f", term {name!r}" if name != spec.strip() else "")
            raise type(err)(f"{where}: {err}") from None


@torch.no_grad()
def score_texts(source: RewardSource, examples: Sequence[Example], answers: Sequence[str], media=None,
                batch_size: int = 64) -> torch.Tensor:
    """Scores (N,) of answer texts without a rollout: rules directly, reward models on (prompt, media, answer).

    Used where answers come from elsewhere than `sample_answers` (best-of-N, candidate tables).
    A reward model needs `media` (a MediaStore over the examples' root) because it reads the media itself.
    """
    if isinstance(source, (FunctionSource, PythonSource)):
        return source(examples, answers, None, None)
    if isinstance(source, CompositeSource):
        total = torch.zeros(len(answers))
        for name, weight, part in source.parts:
            scores = score_texts(part, examples, answers, media, batch_size)
            source.last_components[name] = float(scores.mean())
            total += weight * scores
        return total
    if isinstance(source, RewardModelSource):
        return _reward_model_scores(source, examples, answers, media, batch_size)
    if isinstance(source, ClaimJudgeSource):
        return source.score(examples, answers, media)
    if callable(source):
        return torch.tensor([float(source(e, a)) for e, a in zip(examples, answers)])
    raise ValueError(f"reward source {source!r} cannot score texts")


def _reward_model_scores(source: "RewardModelSource", examples, answers, media, batch_size: int) -> torch.Tensor:
    from modalign.device import model_device
    from modalign.models.inputs import collate_sft, encode_sft_example
    from modalign.models.policy import load_processor

    if media is None:
        raise ValueError("a reward-model reward needs the examples' media (pass media=MediaStore(root))")
    if source.processor is None:
        source.processor = load_processor(source.model.backbone.name_or_path)
    pad = source.processor.tokenizer.pad_token_id
    scores = []
    for start in range(0, len(answers), batch_size):
        chunk = zip(examples[start : start + batch_size], answers[start : start + batch_size])
        batch = collate_sft([encode_sft_example(source.processor, media, e, 256, a) for e, a in chunk], pad,
                            model_device(source.model))
        answer_mask = batch.pop("labels") != -100
        scores.append(source.model(**batch, normalize=source.normalize, answer_mask=answer_mask)[:, 0])
    return torch.cat(scores).cpu()  # texts scored for a choice made on the host (best-of-N, tables)
