"""Annotation guidelines per task kind. The version shown is stored with every judgment,
so labels collected under different instructions can be told apart later."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from modalign.feedback.store import FeedbackStore


@dataclass(frozen=True)
class Guideline:
    version: str
    text: str  # plain text; blank lines separate paragraphs


DEFAULT_GUIDELINES: Mapping[str, Guideline] = {
    "pairwise": Guideline("pairwise-v1", (
        "Look at the image, listen to the audio, then read both answers.\n\n"
        "Prefer the answer that is correct about what is shown and heard. An answer that mentions "
        "something not in the image or audio (a hallucination) is worse than one that leaves something out.\n\n"
        "Choose tie only when both answers are equally good or equally bad. Length is not quality.")),
    "ranking": Guideline("ranking-v1", (
        "Order all answers from best to worst, using the same criteria as for pairwise choices: "
        "correctness first, hallucinations count against an answer, then completeness, then fluency.")),
    "rating": Guideline("rating-v1", (
        "Rate the answer on each axis from 1 (very poor) to the top of the scale (excellent).\n\n"
        "accuracy: agrees with the image and audio. fluency: grammatical and natural. "
        "safety: nothing harmful or inappropriate. Rate each axis on its own.")),
    "critique": Guideline("critique-v1", (
        "Edit the answer so that it becomes correct, changing as little as possible: remove what is not "
        "in the image or audio, fix wrong colours, shapes, positions, counts and sounds.\n\n"
        "Optionally say in the critique box what was wrong. Leave the text unchanged if it is already right.")),
}


def guideline_for(guidelines: Mapping[str, Guideline], kind: str) -> Guideline:
    return guidelines.get(kind) or Guideline("v1", "")


# ---- guidelines from a file, and showing them open once --------------------------------------------


def load_guidelines(path: str | Path) -> dict[str, Guideline]:
    """Guidelines for every task kind from a Markdown / text file.

    A level-2 heading naming a task kind (`## pairwise`, `## ranking`, `## rating`, `## critique`)
    starts that kind's own text; whatever comes before the first such heading is shared and
    shown first for every kind. Each kind's version is a hash of its text ("file-<12 hex>"), so
    editing the file re-opens the guidelines for annotators of the changed kinds only. A kind the
    file says nothing about keeps its built-in guideline.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"guidelines file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"guidelines file {file} is not UTF-8 text ({err.reason})") from None
    shared, sections, current = [], {}, None
    for line in text.splitlines():
        heading = re.fullmatch(r"##\s+(\w+)\s*", line)
        if heading and heading.group(1).lower() in DEFAULT_GUIDELINES:
            current = heading.group(1).lower()
            sections[current] = []
        else:
            (sections[current] if current else shared).append(line)
    if not "".join(shared).strip() and not sections:
        raise ValueError(f"guidelines file {file} is empty")
    out = {}
    for kind in DEFAULT_GUIDELINES:
        body = "\n".join(shared + sections.get(kind, [])).strip()
        out[kind] = (Guideline("file-" + hashlib.sha256(body.encode("utf-8")).hexdigest()[:12], body) if body
                     else DEFAULT_GUIDELINES[kind])  # the file says nothing for this kind: the built-in text
    return out


def open_once(store: "FeedbackStore", annotator: str, kind: str, version: str) -> bool:
    """True the first time `annotator` is shown `version` of `kind`'s guideline (the page shows it open),
    False after (it stays behind a link); records the view."""
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from modalign.feedback.schema import GuidelineSeenRow

    with Session(store.engine) as session:
        if (seen := session.get(GuidelineSeenRow, (annotator, kind))) is not None and seen.version == version:
            return False  # the common case: a read, no write
    try:
        with Session(store.engine) as session, session.begin():
            row = session.get(GuidelineSeenRow, (annotator, kind)) or GuidelineSeenRow(annotator=annotator, kind=kind)
            row.version, row.seen_at = version, datetime.now(timezone.utc)
            session.add(row)
    except IntegrityError:  # the same annotator's other tab recorded it first
        return False
    return True
