"""The claim cache: a judge's scores of a question about some media, so the same claim is never asked twice.

Keyed by (judge, media sha256, question, options): the question holds the claim (the template's question
about it, or the claim's own question), and the options are what the judge chose among. The judge is part
of the key because `claims:self` changes judge every round. Entries are the options' log-likelihoods.
With a `path` the cache is also a JSON-lines file, read back on start (a resumed run asks nothing again).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from modalign.data.records import Example


class ClaimCache:
    """Log-likelihoods of answer options per (judge, media, question, options); `asked` counts misses."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, list[float]] = {}
        self.hits = self.asked = 0
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                self.entries[row["key"]] = row["scores"]

    @staticmethod
    def key(judge: str, media_sha: str, question: str, options: Sequence[str]) -> str:
        return json.dumps([judge, media_sha, question, list(options)])

    def get(self, key: str) -> list[float] | None:
        found = self.entries.get(key)
        self.hits += found is not None
        return found

    def put(self, answers: dict[str, list[float]]) -> None:
        """Store newly asked keys (and append them to the file)."""
        self.entries.update(answers)
        self.asked += len(answers)
        if self.path is not None and answers:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps({"key": k, "scores": v}) + "\n" for k, v in answers.items())


class MediaDigests:
    """The sha256 of an example's media: the recorded `MediaRef.sha256`, else the file's, hashed once per file."""

    def __init__(self, root: str | Path) -> None:
        self.root, self._files = Path(root), {}

    def of(self, example: Example) -> str:
        parts = [f"{ref.kind}:{ref.sha256 or self._file(ref.path)}" for ref in example.media]
        return hashlib.sha256("|".join(parts).encode()).hexdigest() if parts else "no-media"

    def _file(self, path: str) -> str:
        if path not in self._files:
            self._files[path] = hashlib.sha256((self.root / path).read_bytes()).hexdigest()
        return self._files[path]
