"""Browser sessions: the login cookie holds a random session id, never the account's token.

Only the id's hash is stored, with the account and an expiry; logout deletes the row, so a copied
cookie stops working at once, and resetting an account's token ends all of its sessions.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete
from sqlalchemy.orm import Session

from modalign.feedback.schema import SessionRow
from modalign.feedback.server.accounts import Account, hash_token
from modalign.feedback.store import FeedbackStore

SESSION_TTL = timedelta(hours=12)  # one working day; then log in again


def open_session(store: FeedbackStore, account: Account, ttl: timedelta = SESSION_TTL) -> str:
    """Start a session for `account`; returns the cookie value (shown only to that browser)."""
    session_id = secrets.token_urlsafe(32)
    with Session(store.engine) as session, session.begin():
        session.execute(delete(SessionRow).where(SessionRow.expires_at < _now()))  # sweep the stale ones
        session.add(SessionRow(id_hash=hash_token(session_id), account=account.name, role=account.role,
                               expires_at=_now() + ttl))
    return session_id


def session_account(store: FeedbackStore, session_id: str | None) -> Account | None:
    """The account of a live session, or None (unknown, revoked or expired)."""
    if not session_id:
        return None
    with Session(store.engine) as session:
        row = session.get(SessionRow, hash_token(session_id))
        if row is None or _aware(row.expires_at) <= _now():
            return None
        return Account(row.account, row.role)


def close_session(store: FeedbackStore, session_id: str | None) -> None:
    """Revoke one session (logout); unknown ids are ignored."""
    if session_id:
        with Session(store.engine) as session, session.begin():
            session.execute(delete(SessionRow).where(SessionRow.id_hash == hash_token(session_id)))


def close_sessions_of(store: FeedbackStore, name: str) -> None:
    """Revoke every session of an account (the app does it for the admin token at start: it may have changed)."""
    with Session(store.engine) as session, session.begin():
        session.execute(delete(SessionRow).where(SessionRow.account == name))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
