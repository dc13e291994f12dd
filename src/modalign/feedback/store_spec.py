"""What a `store=` setting names: an SQLAlchemy URL, an SQLite file, or a folder holding `feedback.db`.

Every command that reads or writes feedback opens its store through `open_store`, so a plain
path means SQLite everywhere and a URL (`postgresql+psycopg://user@host/db`) means that server
everywhere. Errors name the setting and the URL with its password masked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from modalign.errors import UserError

if TYPE_CHECKING:
    from modalign.feedback.store import FeedbackStore

STORE_FILE = "feedback.db"
STORE_HELP = ("a feedback.db path (SQLite) or an SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db "
              "(password from $PGPASSWORD or ~/.pgpass keeps it out of configs)")
# libpq-style URLs (what `psql` and most hosting pages give) mean psycopg 3, the driver of the
# `postgres` extra; SQLAlchemy alone would pick psycopg2.
PLAIN_POSTGRES = ("postgresql://", "postgres://")


class StoreError(UserError):
    """A store setting that cannot be opened: bad URL, missing driver, unreachable server, missing file."""


def is_url(spec: str) -> bool:
    return "://" in spec


def masked(url: str) -> str:
    """`url` with its password as *** (for messages and logs), even when SQLAlchemy cannot parse it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return re.sub(r"(://[^/@]*?:)[^/]*@", r"\1***@", url)


def with_driver(url: str) -> str:
    """`url`, with psycopg 3 as the driver of a libpq-style `postgresql://` or `postgres://` URL."""
    for plain in PLAIN_POSTGRES:
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def store_url(spec: str, default_path: str | Path | None = None, key: str = "store", must_exist: bool = False) -> str:
    """The SQLAlchemy URL of the store `spec` names ('' means `default_path`).

    A URL is kept (a libpq-style `postgresql://` gets the psycopg driver); a folder means its
    `feedback.db`; any other path is an SQLite file, made absolute, its folder created (`must_exist`:
    the file must exist, else FileNotFoundError, which the CLI prints as one line too).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    spec = str(spec).strip()
    if not spec:
        if default_path is None:
            raise StoreError(f"{key} is empty: set it to {STORE_HELP}")
        spec = str(default_path)
    if is_url(spec):
        spec = with_driver(spec)
        try:
            make_url(spec)
        except (ArgumentError, ValueError):
            raise StoreError(f"{key} {masked(spec)!r} is not an SQLAlchemy URL (dialect+driver://user@host/db)") from None
        return spec
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        path = path / STORE_FILE
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"{key} {spec!r}: no feedback store there (a run's {STORE_FILE}, or an SQLAlchemy URL)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_url(path)


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file `path` (made absolute).

    Built with `URL.create`, which percent-escapes the path: pasted into `sqlite:///{path}`, a `?`,
    `#` or `%` in a folder name would be read as URL syntax and open another file.
    """
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(hide_password=False)


def open_store(spec: str, default_path: str | Path | None = None, key: str = "store",
               must_exist: bool = False) -> "FeedbackStore":
    """The feedback store `spec` names (see `store_url`), its tables created if missing."""
    from modalign.feedback.store import FeedbackStore

    return FeedbackStore(store_url(spec, default_path, key, must_exist), key=key)


def judgments_at_start(out: Path, store: "FeedbackStore", new_run: bool) -> int:
    """The judgments `store` held when the rounds run in `out` started, saved in `out/store.json`.

    A store named by the user may hold others' judgments already; a run in rounds counts its own
    from there. A folder from before store.json existed (not `new_run`) counted from 0.
    """
    import json

    from modalign.runs import write_json_atomic

    saved = Path(out) / "store.json"
    if not saved.is_file():
        write_json_atomic(saved, {"store": store.display_url,
                                  "judgments_at_start": store.count_judgments() if new_run else 0})
    return int(json.loads(saved.read_text())["judgments_at_start"])
