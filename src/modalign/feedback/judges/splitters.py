"""Claim splitters: an answer -> its atomic claims, each checkable against the media by one question.

A splitter is `fn(example: Example, answer: str) -> list[str | Claim]` (one documented signature),
registered by name (`register_splitter`) or named as `py:<module or file.py>:<fn>` (`modalign.plugins`).
A plain string is a free-text claim: the judge asks the yes/no question of the template about it
(`claims.DEFAULT_TEMPLATE`). A `Claim` may carry its own question and answer options, for worlds whose
grammar has questions the judge was trained on (ShapesWorld's VQA questions).

Built in:
- `shapes`: the ShapesWorld caption grammar (`data/shapes/language.py`), parsed as the gold scorers parse
  it; each stated fact becomes one claim asked with the world's own question (see `shapes_claims`).
- `shapes+count`: `shapes` plus the number of objects described, asked "how many shapes are there?".
- `sentences`: free text split at sentence ends, semicolons, commas and "and" (the documented fallback).
- `model`: the judge model itself is asked to list the claims (`ModelSplitter`); an empty or unusable
  list falls back to `sentences`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from modalign.config import ConfigError
from modalign.data.records import Example

YES_NO = ("yes", "no")


@dataclass(frozen=True)
class Claim:
    """One atomic claim of an answer.

    text: the claim ("there is a red circle")
    question: what the judge is asked; "" means the template's yes/no question about `text`
    options: the answers the judge chooses among (scored by log-likelihood, `ask.score_options`)
    expected: the option that verifies the claim (any other refutes it)
    forms: the same claim asked other ways (each a Claim with its own question, options and expected option);
           a judge with `forms=mean` asks them all and averages the expected option's probability
    kind: what sort of fact it states ("colour_at", "count", ...), for a judge that weighs kinds (`gate=`);
          "" means its question (or, asked by the template, its text) is its kind
    """

    text: str
    question: str = ""
    options: tuple[str, ...] = YES_NO
    expected: str = "yes"
    forms: tuple["Claim", ...] = field(default=(), compare=False)  # how it is asked, not what it claims
    kind: str = field(default="", compare=False)

    @property
    def kind_name(self) -> str:
        return self.kind or self.question or self.text

    def __post_init__(self) -> None:
        if self.expected not in self.options:
            raise ValueError(f"claim {self.text!r}: expected answer {self.expected!r} is not one of {self.options}")


Splitter = Callable[[Example, str], Sequence["str | Claim"]]
SPLITTERS: dict[str, Splitter] = {}


def register_splitter(name: str):
    """Decorator: make `fn(example, answer) -> list[str | Claim]` available as splitter `name`."""

    def add(fn: Splitter) -> Splitter:
        SPLITTERS[name] = fn
        return fn

    return add


def as_claims(found: Sequence, where: str) -> list[Claim]:
    """A splitter's output as Claims (strings become free-text claims); anything else is a ConfigError."""
    claims = []
    for item in found if isinstance(found, (list, tuple)) else [found]:
        if isinstance(item, Claim):
            claims.append(item)
        elif isinstance(item, str):
            if item.strip():
                claims.append(Claim(item.strip()))
        else:
            raise ConfigError(f"claim splitter {where} returned a {type(item).__name__}: expected a list of claim "
                              f"strings or Claim records")
    return list(dict.fromkeys(claims))  # a claim stated twice is one claim


@register_splitter("shapes")
def shapes_claims(example: Example, answer: str) -> list[Claim]:
    """The facts of a ShapesWorld caption, each asked as ShapesWorld asks it (`data/shapes/language.py`).

    Per mentioned object (shape, and colour / size / position when stated):
      position  -> "what shape is on the left?"            expects the shape
      colour    -> "what colour is the shape on the left?" expects the colour (with a position),
                   else "is there a red circle?"          expects yes
      size      -> "what size is the circle?"             expects the size
      existence (no position, no colour) -> "is there a {colour} circle?" for no colour cannot be asked:
                   the template's yes/no question "there is a circle" is asked instead
    Sound: "how many beeps are there?" expects the number word; "are the beeps high or low?" the pitch.
    Other forms (`Claim.forms`, asked only by a judge with `forms=mean`): a shape or colour at a position
    of an object whose colour is stated is also "is there a red circle?" (expects yes); a colour without a
    position is also "what colour is the circle?" (expects the colour).
    The scorers' parser (`scorers.parse_caption`) reads the answer, so claims and gold facts align.
    """
    from modalign.data.shapes.language import where
    from modalign.data.shapes.scorers import parse_caption
    from modalign.data.shapes.world import COLOURS, MAX_BEEPS, NUMBER_WORDS, PITCHES, SHAPES, SIZES

    mentions, claims = parse_caption(answer), []
    for obj in mentions.objects:
        exists = ((Claim(f"there is a {obj.colour} {obj.shape}", f"is there a {obj.colour} {obj.shape}?"),)
                  if obj.colour else ())  # the grammar's yes/no form of an object with a stated colour
        if obj.position:
            place = where(obj.position)
            claims.append(Claim(f"a {obj.shape} {place}", f"what shape is {place}?", SHAPES + ("nothing",), obj.shape,
                                exists, "shape_at"))
            if obj.colour:
                claims.append(Claim(f"the shape {place} is {obj.colour}", f"what colour is the shape {place}?",
                                    COLOURS, obj.colour, exists, "colour_at"))
        elif obj.colour:
            colour_of = Claim(f"the {obj.shape} is {obj.colour}", f"what colour is the {obj.shape}?", COLOURS, obj.colour)
            claims.append(Claim(f"there is a {obj.colour} {obj.shape}", f"is there a {obj.colour} {obj.shape}?",
                                forms=(colour_of,), kind="exists"))
        else:
            claims.append(Claim(f"there is a {obj.shape}", kind="exists"))
        if obj.size:
            claims.append(Claim(f"the {obj.shape} is {obj.size}", f"what size is the {obj.shape}?", SIZES, obj.size,
                                kind="size"))
    counts = NUMBER_WORDS[1 : MAX_BEEPS + 1]
    for beeps in dict.fromkeys(mentions.beeps):
        word = NUMBER_WORDS[beeps] if beeps < len(NUMBER_WORDS) else str(beeps)
        options = counts if word in counts else counts + (word,)
        claims.append(Claim(f"there are {word} beeps", "how many beeps are there?", options, word, kind="beeps"))
    for pitch in dict.fromkeys(mentions.pitches):
        claims.append(Claim(f"the beeps are {pitch}", "are the beeps high or low?", PITCHES, pitch, kind="pitch"))
    return list(dict.fromkeys(claims))


@register_splitter("shapes+count")
def shapes_count_claims(example: Example, answer: str) -> list[Claim]:
    """`shapes`' claims plus the number of objects the caption describes, asked as ShapesWorld's count question
    ("how many shapes are there?", options one .. three, expects the number described).

    A caption describes the whole scene, so describing an object that is not there (or leaving one out) makes
    this claim false. A judge that rarely answers "nothing" to "what shape is on the right?" verifies an extra
    object's own claims, but counts the scene's shapes reliably: the extra object is refuted here.
    """
    from modalign.data.shapes.scorers import parse_caption
    from modalign.data.shapes.world import NUMBER_WORDS, POSITIONS

    claims, described = shapes_claims(example, answer), len(parse_caption(answer).objects)
    counts = NUMBER_WORDS[1 : len(POSITIONS) + 1]
    if described:
        word = NUMBER_WORDS[described] if described < len(NUMBER_WORDS) else str(described)
        options = counts if word in counts else counts + (word,)
        claims.append(Claim(f"there are {word} shapes", "how many shapes are there?", options, word, kind="count"))
    return claims


_SENTENCE_ENDS = re.compile(r"(?<=[.!?;])\s+|\n+")
_CONJUNCTIONS = re.compile(r",\s*(?:and\s+)?|\s+and\s+")


@register_splitter("sentences")
def sentence_claims(example: Example, answer: str) -> list[str]:
    """Free text cut at sentence ends, semicolons, commas and "and"; each piece without its end mark."""
    pieces = [part for sentence in _SENTENCE_ENDS.split(answer) for part in _CONJUNCTIONS.split(sentence)]
    return [piece.strip().rstrip(".!?;").strip() for piece in pieces if piece.strip().rstrip(".!?;").strip()]


LIST_PROMPT = ("list the facts this description states about the image, one short sentence per line:\n{answer}")


class ModelSplitter:
    """The judge model lists an answer's claims (greedy, one per line); `sentences` when it lists none.

    `template` holds `{answer}`. The listed lines are kept only if each one's words occur in the answer (a
    small model may invent claims that were never made; judging those would blame the answer for them).
    """

    def __init__(self, policy, template: str = LIST_PROMPT, max_new_tokens: int = 64) -> None:
        self.policy, self.template, self.max_new_tokens = policy, template, max_new_tokens
        self.generations = 0

    def __call__(self, example: Example, answer: str) -> list[str]:
        import torch

        from modalign.data.records import user_turn

        processor, model = self.policy.processor, self.policy.model
        prompt = processor.apply_chat_template([user_turn(self.template.format(answer=answer))],
                                               add_generation_prompt=True, tokenize=False)
        batch = processor(text=[prompt])
        with torch.no_grad():
            output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    max_new_tokens=self.max_new_tokens, do_sample=False,
                                    pad_token_id=processor.tokenizer.pad_token_id)
        self.generations += 1
        text = processor.tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        words = set(re.findall(r"\w+", answer.lower()))
        listed = [line.strip(" -*\t0123456789.").strip() for line in text.splitlines()]
        listed = [line for line in listed if line and set(re.findall(r"\w+", line.lower())) <= words]
        return listed or sentence_claims(example, answer)


def splitter_from(name: str, judge_policy=None) -> Splitter:
    """The splitter `name`: a registered one, `model` (needs the judge policy) or `py:<module or file.py>:<fn>`."""
    from modalign.plugins import is_plugin, load_callable

    if is_plugin(name):
        return load_callable(name, positional=2)
    if name == "model":
        if judge_policy is None:
            raise ConfigError("claim splitter 'model' needs the judge model")
        return ModelSplitter(judge_policy)
    if name not in SPLITTERS:
        raise ConfigError(f"no claim splitter {name!r} (known: {', '.join(sorted(SPLITTERS) + ['model'])}; "
                          f"your own: py:<file.py>:<function>)")
    return SPLITTERS[name]


def auto_splitter(examples: Sequence[Example]) -> str:
    """`shapes` for ShapesWorld data (meta.world == "shapes"), else `model`."""
    return "shapes" if examples and all(e.meta.get("world") == "shapes" for e in examples) else "model"
