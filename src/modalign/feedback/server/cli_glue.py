"""Functions behind `modalign annotate`, `add-annotator` and `reset-token` (wired up in cli.py)."""

from __future__ import annotations

import os

from modalign.feedback import store_spec
from modalign.feedback.store import FeedbackStore

ADMIN_TOKEN_ENV = "MODALIGN_ADMIN_TOKEN"


def store_url(store: str, must_exist: bool = False) -> str:
    """An SQLAlchemy URL as is; anything else is the path of an SQLite file (made absolute)."""
    return store_spec.store_url(store, key="--store", must_exist=must_exist)


def annotate_command(store: str, host: str = "127.0.0.1", port: int = 8000, guidelines: str | None = None) -> None:
    """Serve the annotation app over `store`; an admin token may also come from $MODALIGN_ADMIN_TOKEN.
    `guidelines`: a Markdown / text file (`guidelines.load_guidelines`), versioned by its content's hash."""
    from modalign.feedback.server.app import serve

    from modalign.feedback.server.app import MIN_ADMIN_TOKEN

    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN:
        raise SystemExit(f"error: ${ADMIN_TOKEN_ENV} is {len(admin_token)} characters; use at least {MIN_ADMIN_TOKEN}")
    url = store_spec.open_store(store, key="--store", must_exist=True).url  # a store it cannot open: one error
    texts = guidelines_from(guidelines) if guidelines else None
    print(f"annotation app on http://{host}:{port}/ (store {store_spec.masked(url)}); log in with a token from "
          "add-annotator")
    serve(url, host=host, port=port, admin_token=admin_token, guidelines=texts)


def guidelines_from(path: str) -> dict:
    """The guidelines in `path`; a `UserError` naming the file otherwise (the CLI prints it, exit 2)."""
    from modalign.errors import UserError
    from modalign.feedback.server.guidelines import load_guidelines

    try:
        return load_guidelines(path)
    except (OSError, ValueError) as err:
        raise UserError(f"--guidelines {path}: {err}") from None


def add_annotator_command(store: str, name: str, role: str = "annotator") -> str:
    """Create an account and print its token once (only its hash is stored); returns the token."""
    from modalign.feedback.server.accounts import AccountError, create_account

    try:
        token = create_account(FeedbackStore(store_url(store), key="--store"), name, role)
    except AccountError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{role} {name!r} created. Token (shown only now, keep it safe):\n{token}")
    return token


def reset_token_command(store: str, name: str) -> str:
    """Issue a new token for an account (the old token and its browser sessions stop working); prints it once."""
    from modalign.feedback.server.accounts import AccountError, reset_token

    try:
        token = reset_token(FeedbackStore(store_url(store, must_exist=True), key="--store"), name)
    except (AccountError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"new token for {name!r} (shown only now; the old token and its sessions no longer work):\n{token}")
    return token
