"""What every route needs: the app state, the caller's account, the request body, HTML responses."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping
from urllib.parse import urlsplit

from fastapi import Path, Request
from fastapi.responses import HTMLResponse

from modalign.feedback.server.accounts import ADMIN_TOKEN_ACCOUNT, Account, authenticate, is_token
from modalign.feedback.server.errors import BadRequest, Forbidden, Unauthorized, UnsupportedMediaType
from modalign.feedback.server.guidelines import Guideline
from modalign.feedback.server.review import EditPolicy
from modalign.feedback.server.sessions import session_account
from modalign.feedback.server.templates import render
from modalign.feedback.server.throttle import LoginThrottle
from modalign.feedback.store import FeedbackStore

SESSION_COOKIE = "modalign_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_ID = 2 ** 63 - 1  # the largest id a database integer column holds (SQLite, Postgres BIGINT)
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="a task id")]  # out of range: 422, not a 500 from the database


@dataclass
class AppState:
    store: FeedbackStore
    admin_token: str | None
    guidelines: Mapping[str, Guideline]
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    edit_policy: EditPolicy = field(default_factory=EditPolicy)  # which answers may still be undone / changed


def app_state(request: Request) -> AppState:
    return request.app.state.annotation


def bearer_token(request: Request) -> str | None:
    """`Authorization: Bearer <token>` (API clients), or None."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def account_for(state: AppState, token: str | None) -> Account | None:
    if is_token(token, state.admin_token):
        return Account(ADMIN_TOKEN_ACCOUNT, "admin")
    return authenticate(state.store, token)


def require_account(request: Request) -> Account:
    """FastAPI dependency: the caller, or 401.

    A Bearer token is sent only by scripts, never added by a browser on its own, so it needs no
    CSRF check. The session cookie is: any state-changing request carrying it must come from a
    page of this very origin (`check_origin`), on every route, the JSON API included.
    """
    state = app_state(request)
    token = bearer_token(request)
    if token is not None:
        account = account_for(state, token)
    else:
        account = session_account(state.store, request.cookies.get(SESSION_COOKIE))
        if account is not None and request.method not in SAFE_METHODS:
            check_origin(request)
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
    """FastAPI dependency: the body parsed as JSON (415 unless sent as JSON, 400 naming `body` when it is not JSON).

    The Content-Type check matters for CSRF: a cross-site form or `no-cors` fetch can only send
    text/plain, form or multipart bodies, never application/json.
    """
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(f"send the body as application/json, not {media_type or 'no Content-Type'!r}",
                                   field="content-type")
    raw = await request.body()
    if not raw.strip():
        raise BadRequest("the body is empty: send a JSON object", field="body")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: also numbers over 4300 digits
        raise BadRequest(f"the body is not valid JSON ({str(err)[:200]})", field="body") from None


async def form_body(request: Request) -> dict[str, str]:
    """FastAPI dependency: an HTML form as a dict (text fields only; the body size is already bounded)."""
    form = await request.form()
    return {key: value for key, value in form.multi_items() if isinstance(value, str)}


def check_origin(request: Request) -> None:
    """Refuse a state-changing browser request unless it comes from a page of this server's origin.

    SameSite=Strict does not help here: a page on another port of the same host is "same site".
    So the Origin header (or, lacking it, the Referer) must name exactly this host and port;
    `Origin: null` (sandboxed frames, data: URLs, some redirects) and no origin at all are refused.
    Our pages send `Referrer-Policy: same-origin`, under which browsers send the real Origin.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        raise Forbidden(f"cross-origin request refused (Sec-Fetch-Site: {fetch_site})", field="origin")
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        raise Forbidden(f"request without a usable Origin header ({origin!r}) refused", field="origin")
    if urlsplit(origin).netloc != request.headers.get("host"):
        raise Forbidden(f"cross-origin request from {origin[:200]} refused", field="origin")


def html(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with a strict Content-Security-Policy: only our own nonce'd inline script runs."""
    nonce = secrets.token_urlsafe(16)
    headers = {
        "Content-Security-Policy": f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                                   "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send `Origin: null` on form posts
        "Cache-Control": "no-store",
    }
    return HTMLResponse(render(name, nonce=nonce, **context), status_code=code, headers=headers)
