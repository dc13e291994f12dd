"""The annotation web app: `create_app` builds it, `serve` runs it with uvicorn.

Server-rendered pages for annotators (keyboard-driven, no front-end build), a JSON API for
scripted clients, and an admin dashboard. Every judgment is committed to the feedback store
before the request that carried it gets a 2xx answer.
"""

from __future__ import annotations

import logging
from typing import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from modalign.feedback.server import admin, api, pages
from modalign.feedback.server.accounts import ADMIN_TOKEN_ACCOUNT
from modalign.feedback.server.deps import AppState, html
from modalign.feedback.server.errors import AnnotationError, InvalidField, Unauthorized
from modalign.feedback.server.guidelines import DEFAULT_GUIDELINES, Guideline
from modalign.feedback.server.limits import DEFAULT_MAX_BODY, BodyLimit
from modalign.feedback.server.sessions import close_sessions_of
from modalign.feedback.server.tasks import ensure_tables
from modalign.feedback.store import FeedbackStore

log = logging.getLogger(__name__)
MIN_ADMIN_TOKEN = 16  # characters: `new_token()` gives 43; a short one could be guessed


def create_app(store_url: str, admin_token: str | None = None, guidelines: Mapping[str, Guideline] | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY) -> FastAPI:
    """The app over the feedback store at `store_url` (an SQLAlchemy URL).

    `admin_token`: a token that opens the admin pages besides accounts with the admin role.
    `guidelines`: per task kind (defaults: `DEFAULT_GUIDELINES`). Bodies over `max_body_bytes` get 413.
    """
    if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN:
        raise ValueError(f"the admin token is {len(admin_token)} characters; use at least {MIN_ADMIN_TOKEN} "
                         "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    store = FeedbackStore(store_url)
    ensure_tables(store)
    close_sessions_of(store, ADMIN_TOKEN_ACCOUNT)  # the admin token may have changed since they were opened
    # No Swagger UI: it loads scripts from a CDN, which the pages' CSP (and offline use) forbid.
    app = FastAPI(title="modalign annotate", docs_url=None, redoc_url=None)
    app.state.annotation = AppState(store, admin_token, dict(guidelines or DEFAULT_GUIDELINES))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(AnnotationError, _annotation_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for module in (pages, api, admin):
        app.include_router(module.router)
    app.add_api_route("/healthz", lambda: {"ok": True}, methods=["GET"])
    return app


def serve(store_url: str, host: str = "127.0.0.1", port: int = 8000, admin_token: str | None = None,
          access_log: bool = True, guidelines: Mapping[str, Guideline] | None = None) -> None:
    """Run the app with uvicorn (blocks). Plain HTTP: put a TLS proxy in front beyond localhost.
    `guidelines`: per task kind, e.g. from `guidelines.load_guidelines(path)`."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s over plain HTTP: tokens travel unencrypted unless a TLS proxy is in front", host)
    uvicorn.run(create_app(store_url, admin_token, guidelines), host=host, port=port, access_log=access_log)


async def _validation_error(request: Request, err: RequestValidationError) -> Response:
    """FastAPI's own checks (e.g. a task id that is not a number), in the app's error format."""
    first = err.errors()[0] if err.errors() else {}
    field = str(first.get("loc", ("?",))[-1])
    return await _annotation_error(request, InvalidField(f"{field}: {first.get('msg', 'invalid')}", field=field))


async def _annotation_error(request: Request, err: AnnotationError) -> Response:
    """JSON for the API (and any client that asks for it), a page or a login redirect for browsers."""
    wants_json = request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", "")
    if wants_json:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(err, Unauthorized) else None
        return JSONResponse(err.to_json(), status_code=err.status, headers=headers)
    if isinstance(err, Unauthorized) and request.method == "GET":
        return RedirectResponse("/login", status_code=303)
    return html("message", code=err.status, title=f"Error {err.status}", message=err.page_message, css="error")
