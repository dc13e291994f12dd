"""Turning a submitted answer (a JSON object, or a form turned into one) into a Judgment.

Every check names the field at fault. The bodies, by task kind:

    pairwise  {"choice": "a" | "b" | "tie", "reason": "..."?, "strength": "slight" | "clear" | "strong"?}
    ranking   {"ranking": [candidate ids, best first]}        (all the task's candidates)
    rating    {"ratings": {"accuracy": 4, ...}}               (exactly the task's axes, 1..scale)
    critique  {"corrected_text": "...", "critique": "..."?}   (spans are computed here, not sent)

Any body may also carry "guideline_version": the version the annotator saw; it must be current.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping

from modalign.feedback.judgments import (
    STRENGTHS, CritiqueJudgment, Judgment, JudgmentError, PairwiseJudgment, RankingJudgment, RatingJudgment,
)
from modalign.feedback.server.errors import Conflict, InvalidField
from modalign.feedback.server.tasks import TaskView

MAX_TEXT = 20_000  # characters of a corrected answer; the request body limit bounds it too
MAX_REASON = 2_000
FIELDS = {"pairwise": {"choice", "reason", "strength"}, "ranking": {"ranking"}, "rating": {"ratings"},
          "critique": {"corrected_text", "critique"}}
Span = tuple[int, int, str]


def build_judgment(task: TaskView, body: Any, annotator: str, guideline_version: str) -> Judgment:
    """The judgment `body` expresses about `task`, or `InvalidField` / `Conflict` naming what is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidField("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - FIELDS[task.kind] - {"guideline_version"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r} for a {task.kind} task "
                           f"(expected {sorted(FIELDS[task.kind])})", field=unknown[0])
    seen = body.get("guideline_version", guideline_version)
    if seen != guideline_version:
        raise Conflict(f"the guidelines changed from {seen!r} to {guideline_version!r}: reload the task",
                       field="guideline_version")
    common = {"example_id": task.example.id, "annotator": annotator, "guideline_version": guideline_version,
              "task_id": task.id}
    try:
        return _BUILDERS[task.kind](task, body, common)
    except JudgmentError as err:  # the records' own checks, as a last line
        raise InvalidField(str(err), field="body") from None


def _pairwise(task: TaskView, body: Mapping[str, Any], common: dict) -> Judgment:
    choice = body.get("choice")
    if not isinstance(choice, str) or choice.lower() not in ("a", "b", "tie"):
        raise InvalidField(f"choice must be 'a', 'b' or 'tie', got {choice!r}", field="choice")
    reason = _text(body, "reason", MAX_REASON, required=False)
    strength = body.get("strength") or None  # "" from a form where nothing was picked
    if strength is not None and (strength not in STRENGTHS or choice.lower() == "tie"):
        raise InvalidField(f"strength must be one of {list(STRENGTHS)} (and only with choice a or b), got {strength!r}",
                           field="strength")
    a, b = task.candidate_ids
    return PairwiseJudgment(**common, candidate_a=a, candidate_b=b, choice=choice.lower(), reason=reason,
                            strength=strength)


def _ranking(task: TaskView, body: Mapping[str, Any], common: dict) -> Judgment:
    ranking = body.get("ranking")
    expected = sorted(task.candidate_ids)
    if not isinstance(ranking, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ranking):
        raise InvalidField(f"ranking must be a list of candidate ids, got {ranking!r}", field="ranking")
    if sorted(ranking) != expected:
        raise InvalidField(f"ranking must order each of the candidates {expected} exactly once, got {ranking}",
                           field="ranking")
    return RankingJudgment(**common, ranking=tuple(ranking))


def _rating(task: TaskView, body: Mapping[str, Any], common: dict) -> Judgment:
    ratings, axes, scale = body.get("ratings"), task.settings.axes, task.settings.scale
    if not isinstance(ratings, Mapping):
        raise InvalidField(f"ratings must be an object of axis -> 1..{scale}", field="ratings")
    for axis in list(axes) + sorted(set(ratings) - set(axes)):
        value = ratings.get(axis)
        if axis not in axes:
            raise InvalidField(f"unknown rating axis {axis!r} (axes: {list(axes)})", field=f"ratings.{axis}")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= scale:
            raise InvalidField(f"rating of {axis!r} must be an integer in 1..{scale}, got {value!r}",
                               field=f"ratings.{axis}")
    return RatingJudgment(**common, candidate=task.candidate_ids[0], ratings={a: ratings[a] for a in axes}, scale=scale)


def _critique(task: TaskView, body: Mapping[str, Any], common: dict) -> Judgment:
    corrected = _text(body, "corrected_text", MAX_TEXT, required=True).replace("\r\n", "\n")
    critique = _text(body, "critique", MAX_REASON, required=False)
    candidate, original = task.candidates[0]
    return CritiqueJudgment(**common, candidate=candidate, critique=critique, corrected_text=corrected,
                            corrected_spans=corrected_spans(original, corrected))


_BUILDERS = {"pairwise": _pairwise, "ranking": _ranking, "rating": _rating, "critique": _critique}


def _text(body: Mapping[str, Any], field: str, limit: int, required: bool) -> str:
    value = body.get(field, None if required else "")
    if not isinstance(value, str):
        raise InvalidField(f"{field} must be a string" + (" (it is required)" if value is None else ""), field=field)
    if len(value) > limit:
        raise InvalidField(f"{field} is {len(value)} characters, over the limit of {limit}", field=field)
    return value


# ---- corrected spans -----------------------------------------------------------------------

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")
_SENTENCE = re.compile(r"[^.!?\n]+[.!?\n]*\s*|[.!?\n]+\s*")  # covers every character: "".join(findall) == text
# difflib's matcher costs up to ~n*m*min(n, m) on crafted input (one repeated word): a budget on
# n*m per diff and over the whole call keeps the worst case near 0.1 s of CPU. Past it the edit is
# coarser (a whole sentence or the whole changed middle as one span) but still exact.
DIFF_BUDGET, TOTAL_DIFF_BUDGET = 40_000, 200_000


def corrected_spans(original: str, corrected: str) -> tuple[Span, ...]:
    """Edits turning `original` into `corrected`: (start, end, replacement), offsets into `original`.

    Diffed sentence by sentence, then word by word inside the changed sentences (difflib over
    word / space / punctuation tokens) so a changed word is one span, not scattered letters;
    `apply_spans(original, spans) == corrected` always holds. Bounded in time (`DIFF_BUDGET`).
    """
    budget = [TOTAL_DIFF_BUDGET]
    return tuple(_spans(original, corrected, 0, (_SENTENCE, _TOKEN), budget))


def _spans(old_text: str, new_text: str, base: int, levels: tuple[re.Pattern, ...], budget: list[int]) -> list[Span]:
    """Spans of `old_text` -> `new_text` (offsets + `base`), splitting by `levels[0]` and refining by the rest."""
    if old_text == new_text:
        return []
    old, new = levels[0].findall(old_text), levels[0].findall(new_text)
    head = 0  # common leading and trailing pieces cost nothing to match
    while head < min(len(old), len(new)) and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_mid, new_mid = old[head:len(old) - tail], new[head:len(new) - tail]
    starts = [base + sum(map(len, old[:head]))]
    for piece in old_mid:
        starts.append(starts[-1] + len(piece))
    cost = len(old_mid) * len(new_mid)
    if cost > min(DIFF_BUDGET, budget[0]):
        return [(starts[0], starts[-1], "".join(new_mid))]
    budget[0] -= cost
    out: list[Span] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_mid, new_mid, autojunk=False).get_opcodes():
        if tag == "replace" and len(levels) > 1:
            out += _spans("".join(old_mid[i1:i2]), "".join(new_mid[j1:j2]), starts[i1], levels[1:], budget)
        elif tag != "equal":
            out.append((starts[i1], starts[i2], "".join(new_mid[j1:j2])))
    return out


def apply_spans(original: str, spans: tuple[Span, ...]) -> str:
    """Apply non-overlapping spans (as returned by `corrected_spans`) to `original`."""
    out, position = [], 0
    for start, end, replacement in sorted(spans):
        out += [original[position:start], replacement]
        position = end
    return "".join(out) + original[position:]
