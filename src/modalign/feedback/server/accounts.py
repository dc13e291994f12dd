"""Annotator and admin accounts: random tokens, stored only as hashes.

A token is 32 random bytes from `secrets`, so a plain SHA-256 of it cannot be brute-forced;
a slow hash (pbkdf2) would add nothing but cost to every authenticated request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modalign.feedback.schema import AnnotatorRow, DeactivatedRow, SessionRow
from modalign.feedback.store import FeedbackStore

ROLES = ("annotator", "admin")
MAX_NAME = 200
ADMIN_TOKEN_ACCOUNT = "(admin token)"  # who the admin token acts as; no account may take this name
RESERVED_PREFIX = "("  # names of the server's own identities start with it


class AccountError(ValueError):
    """An account cannot be created or changed; the message says why."""


@dataclass(frozen=True)
class Account:
    """Who made a request: an annotator or an admin."""

    name: str
    role: str = "annotator"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_account(store: FeedbackStore, name: str, role: str = "annotator") -> str:
    """Create an annotator (or admin) and return its token: the only time it is ever shown."""
    _check_name(name)
    if role not in ROLES:
        raise AccountError(f"role {role!r} is not one of {ROLES}")
    token = new_token()
    with Session(store.engine) as session, session.begin():
        if session.get(AnnotatorRow, name) is not None:
            raise AccountError(f"an account named {name!r} already exists (use reset_token to issue a new token)")
        session.add(AnnotatorRow(name=name, token_hash=hash_token(token), role=role))
    return token


def reset_token(store: FeedbackStore, name: str) -> str:
    """Issue a new token for an existing account; the old one and every browser session stop working at once."""
    token = new_token()
    with Session(store.engine) as session, session.begin():
        row = session.get(AnnotatorRow, name)
        if row is None:
            raise AccountError(f"no account named {name!r}")
        row.token_hash = hash_token(token)
        session.execute(delete(SessionRow).where(SessionRow.account == name))
    return token


def authenticate(store: FeedbackStore, token: str | None) -> Account | None:
    """The account whose token this is, or None."""
    if not token:
        return None
    with Session(store.engine) as session:
        row = session.scalars(select(AnnotatorRow).where(AnnotatorRow.token_hash == hash_token(token))).first()
        if row is None or session.get(DeactivatedRow, row.name) is not None:
            return None
        return Account(row.name, row.role)


def deactivate(store: FeedbackStore, name: str, by: str) -> None:
    """Stop an account from logging in (token and browser sessions) until `activate`; its judgments stay."""
    if name == by:
        raise AccountError(f"{name!r} cannot deactivate their own account")
    with Session(store.engine) as session, session.begin():
        if session.get(AnnotatorRow, name) is None:
            raise AccountError(f"no account named {name!r}")
        if session.get(DeactivatedRow, name) is None:
            session.add(DeactivatedRow(name=name, by=by, at=datetime.now(timezone.utc)))
        session.execute(delete(SessionRow).where(SessionRow.account == name))  # logged-in browsers are out at once


def activate(store: FeedbackStore, name: str) -> None:
    """Let a deactivated account log in again (with its current token)."""
    with Session(store.engine) as session, session.begin():
        if session.get(AnnotatorRow, name) is None:
            raise AccountError(f"no account named {name!r}")
        session.execute(delete(DeactivatedRow).where(DeactivatedRow.name == name))


def deactivated_names(store: FeedbackStore) -> set[str]:
    with Session(store.engine) as session:
        return set(session.scalars(select(DeactivatedRow.name)))


def is_token(token: str | None, expected: str | None) -> bool:
    """Constant-time comparison (through the hashes, so lengths do not leak either)."""
    if not token or not expected:
        return False
    return hmac.compare_digest(hash_token(token), hash_token(expected))


def list_accounts(store: FeedbackStore) -> list[Account]:
    with Session(store.engine) as session:
        return [Account(row.name, row.role) for row in session.scalars(select(AnnotatorRow).order_by(AnnotatorRow.name))]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise AccountError(f"account name {name!r} must be non-empty without surrounding spaces")
    if len(name) > MAX_NAME or not name.isprintable():
        raise AccountError(f"account name {name!r} must be printable and at most {MAX_NAME} characters")
    if name.startswith(RESERVED_PREFIX):
        raise AccountError(f"account name {name!r} is reserved: names starting with {RESERVED_PREFIX!r} "
                           f"belong to the server (e.g. {ADMIN_TOKEN_ACCOUNT!r})")
