"""What every route needs: the app state, the caller's account, the request body, HTML responses."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse

from modalign.feedback.server.accounts import Account, authenticate, is_token
from modalign.feedback.server.errors import BadRequest, Forbidden, Unauthorized
from modalign.feedback.server.guidelines import Guideline
from modalign.feedback.server.templates import render
from modalign.feedback.store import FeedbackStore

TOKEN_COOKIE = "modalign_token"
ADMIN_TOKEN_ACCOUNT = "(admin token)"  # not a valid account name (parentheses, space): no clash


@dataclass
class AppState:
    store: FeedbackStore
    admin_token: str | None
    guidelines: Mapping[str, Guideline]
    write_lock: threading.Lock = field(default_factory=threading.Lock)


def app_state(request: Request) -> AppState:
    return request.app.state.annotation


def request_token(request: Request) -> str | None:
    """`Authorization: Bearer <token>` (API clients) or the login cookie (browsers)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.cookies.get(TOKEN_COOKIE)


def account_for(state: AppState, token: str | None) -> Account | None:
    if is_token(token, state.admin_token):
        return Account(ADMIN_TOKEN_ACCOUNT, "admin")
    return authenticate(state.store, token)


def require_account(request: Request) -> Account:
    """FastAPI dependency: the caller, or 401."""
    account = account_for(app_state(request), request_token(request))
    if account is None:
        raise Unauthorized("missing or wrong token: log in at /login or send 'Authorization: Bearer <token>'",
                           field="token")
    return account


def require_admin(request: Request) -> Account:
    """FastAPI dependency: an admin caller, 401 without a token, 403 for an annotator."""
    account = require_account(request)
    if not account.is_admin:
        raise Forbidden(f"{account.name!r} is not an admin", field="token")
    return account


async def json_body(request: Request) -> Any:
    """FastAPI dependency: the body parsed as JSON (400 naming `body` when it is not JSON)."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("the body is empty: send a JSON object", field="body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not valid JSON ({err})", field="body") from None


async def form_body(request: Request) -> dict[str, str]:
    """FastAPI dependency: an HTML form as a dict (text fields only; the body size is already bounded)."""
    form = await request.form()
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


def same_origin(request: Request) -> None:
    """Refuse cross-site form posts (the SameSite=Strict cookie already does; this is a second lock)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Forbidden(f"cross-site form post from {origin} refused", field="origin")


def html(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with a strict Content-Security-Policy: only our own nonce'd inline script runs."""
    nonce = secrets.token_urlsafe(16)
    headers = {
        "Content-Security-Policy": f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                                   "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(render(name, nonce=nonce, **context), status_code=code, headers=headers)
