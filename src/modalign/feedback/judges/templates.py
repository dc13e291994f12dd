"""Prompt templates of model judges: the question a judge model is asked and the answer options it scores.

A judge never generates: it is asked one question about the example's media and the answer
options' log-likelihoods are compared (the option with the highest log-probability is its answer).

Two tasks, each with a documented default (`DEFAULTS`):

- pairwise: `{question}`, `{answer_a}`, `{answer_b}` are filled in; options ("A", "B") mean "answer A
  is better" and "answer B is better".
- rating: `{question}` and `{answer}`; options ("1" .. "5") are the ratings 1 .. K (K = number of options).

Override from a file (`judge_template=path`): YAML or JSON `{prompt: ..., options: [...]}` (options
optional), or any other text file, whose whole text is the prompt. The template hash (`sha`) is
stored with every judgment, so judgments made under different prompts are never mixed up unknowingly.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

from modalign.config import ConfigError

TASKS = ("pairwise", "rating")
FIELDS = {"pairwise": ("question", "answer_a", "answer_b"), "rating": ("question", "answer")}

DEFAULT_PAIRWISE = ("{question}\nAnswer A: {answer_a}\nAnswer B: {answer_b}\n"
                    "Which answer is more accurate about the image and the audio? Reply with A or B.")
DEFAULT_RATING = ("{question}\nAnswer: {answer}\n"
                  "How accurate is this answer about the image and the audio, from 1 (wrong) to 5 (fully right)? "
                  "Reply with one digit.")


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge's question (with `FIELDS[task]` placeholders) and the answer options it scores."""

    task: str
    prompt: str
    options: tuple[str, ...]

    @property
    def sha(self) -> str:
        """Short hash of task, prompt and options: the template's identity in the stored provenance."""
        text = json.dumps([self.task, self.prompt, list(self.options)], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def render(self, **fields: str) -> str:
        # format_map with exactly the task's fields; braces in answers are plain text (not re-formatted)
        return self.prompt.format_map({name: fields[name] for name in FIELDS[self.task]})


DEFAULTS = {
    "pairwise": JudgeTemplate("pairwise", DEFAULT_PAIRWISE, ("A", "B")),
    "rating": JudgeTemplate("rating", DEFAULT_RATING, ("1", "2", "3", "4", "5")),
}


def load_template(task: str, path: str = "", key: str = "judge_template") -> JudgeTemplate:
    """The default template of `task`, or the one in the file at `path`; a bad file is a ConfigError naming it."""
    if task not in TASKS:
        raise ConfigError(f"judge task {task!r}: choose one of {', '.join(TASKS)}")
    default = DEFAULTS[task]
    if not path:
        return default
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}={path!r}: no such file")
    text = file.read_text(encoding="utf-8")
    prompt, options = text, default.options
    if file.suffix.lower() in (".yaml", ".yml", ".json"):
        prompt, options = _structured(text, file, key, default.options)
    template = JudgeTemplate(task, prompt, tuple(options))
    check_template(template, f"{key}={path!r}")
    return template


def _structured(text: str, file: Path, key: str, default_options: tuple[str, ...]) -> tuple[str, list[str]]:
    import yaml

    try:
        raw = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}={str(file)!r}: not valid YAML/JSON ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
        raise ConfigError(f"{key}={str(file)!r}: needs a 'prompt' string (and optionally an 'options' list)")
    options = raw.get("options", list(default_options))
    if not isinstance(options, list) or not all(isinstance(o, (str, int)) for o in options):
        raise ConfigError(f"{key}={str(file)!r}: 'options' must be a list of strings")
    if any(isinstance(o, bool) for o in options):  # YAML reads a bare no / yes / on / off as a boolean
        raise ConfigError(f"{key}={str(file)!r}: options {options} hold a boolean: quote yes/no/on/off "
                          f"(options: [\"no\", \"yes\"])")
    return raw["prompt"], [str(o) for o in options]


def check_template(template: JudgeTemplate, where: str) -> None:
    """Placeholders are exactly the task's fields; pairwise has 2 options, rating at least 2, all distinct."""
    used = {name for _, name, _, _ in string.Formatter().parse(template.prompt) if name is not None}
    wanted = set(FIELDS[template.task])
    if used != wanted:
        raise ConfigError(f"{where}: a {template.task} prompt uses the placeholders {{{'}, {'.join(sorted(wanted))}}} "
                          f"(found {sorted(used) or 'none'})")
    count = len(template.options)
    if (template.task == "pairwise" and count != 2) or count < 2 or len(set(template.options)) != count:
        need = "exactly 2" if template.task == "pairwise" else "2 or more"
        raise ConfigError(f"{where}: a {template.task} judge needs {need} distinct options, got {list(template.options)}")
    if any(not option.strip() for option in template.options):
        raise ConfigError(f"{where}: an option is empty")
