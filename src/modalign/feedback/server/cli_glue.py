"""Functions behind `modalign annotate` and `modalign add-annotator` (wired up in cli.py)."""

from __future__ import annotations

import os
from pathlib import Path

from modalign.feedback.store import FeedbackStore

ADMIN_TOKEN_ENV = "MODALIGN_ADMIN_TOKEN"


def store_url(store: str, must_exist: bool = False) -> str:
    """An SQLAlchemy URL as is; anything else is the path of an SQLite file (made absolute)."""
    if "://" in store:
        return store
    path = Path(store).resolve()
    if must_exist and not path.is_file():
        raise FileNotFoundError(f"no feedback store at {path} (a run's feedback.db, or an SQLAlchemy URL)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def annotate_command(store: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the annotation app over `store`; an admin token may also come from $MODALIGN_ADMIN_TOKEN."""
    from modalign.feedback.server.app import serve

    print(f"annotation app on http://{host}:{port}/ (store {store}); log in with a token from add-annotator")
    serve(store_url(store, must_exist=True), host=host, port=port, admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None)


def add_annotator_command(store: str, name: str, role: str = "annotator") -> str:
    """Create an account and print its token once (only its hash is stored); returns the token."""
    from modalign.feedback.server.accounts import AccountError, create_account

    try:
        token = create_account(FeedbackStore(store_url(store)), name, role)
    except AccountError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{role} {name!r} created. Token (shown only now, keep it safe):\n{token}")
    return token
