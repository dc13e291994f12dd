"""The user-error family: a mistake in what the user gave (config, data, media, policy, reward, store).

`modalign` prints any of these as one `error:` line and exits 2; every other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message names the file, record, field or config key."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message (library errors often run to several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
