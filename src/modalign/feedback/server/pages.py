"""The annotator's HTML pages: login, the next task, a task with its form, and its media files."""

from __future__ import annotations

import logging
import mimetypes
import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from modalign.data.media import MediaError, resolve_media_path
from modalign.feedback.judgments import STRENGTHS
from modalign.feedback.server.accounts import Account
from modalign.feedback.server.deps import (
    SESSION_COOKIE, TaskId, account_for, app_state, check_origin, form_body, html, require_account,
)
from modalign.feedback.server.errors import AnnotationError, InvalidField, NotFound
from modalign.feedback.server.guidelines import guideline_for, open_once
from modalign.feedback.server.review import (
    SKIP_REASONS, edit_judgment, recent_answers, recent_skips, skip_task, undo_judgment, undo_skip,
)
from modalign.feedback.server.sessions import SESSION_TTL, close_session, open_session
from modalign.feedback.server.submit import read_task, submit_judgment
from modalign.feedback.server.tasks import TASK_KINDS, TaskView, next_task_id, progress
from modalign.feedback.server.views import describe, judgment_form_values, media_items, prompt_lines

router = APIRouter()
log = logging.getLogger(__name__)
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


@router.get("/login")
def login_page() -> Response:
    return html("login", title="Log in")


@router.post("/login")
def login(request: Request, form: dict[str, str] = Depends(form_body)) -> Response:
    """Check the token and start a session: the HttpOnly, SameSite=Strict cookie holds the session id
    (script cannot read it, and it is not the token). Wrong tokens are throttled per client address."""
    check_origin(request)  # no logging a victim's browser into the attacker's account either
    state, client = app_state(request), request.client.host if request.client else "?"
    state.login_throttle.check(client)
    account = account_for(state, form.get("token", "").strip())
    if account is None:
        state.login_throttle.failed(client)
        return html("login", code=401, title="Log in", error="That token is not valid (field: token).")
    response = RedirectResponse("/admin" if account.is_admin else "/next", status_code=303)
    response.set_cookie(SESSION_COOKIE, open_session(state.store, account), max_age=int(SESSION_TTL.total_seconds()),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session on the server (a copy of the cookie stops working too) and drop the cookie."""
    check_origin(request)
    close_session(app_state(request).store, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/next", status_code=303)


@router.get("/next")
def next_page(request: Request, account: Account = Depends(require_account)) -> Response:
    state = app_state(request)
    store = state.store
    task_id = next_task_id(store, account.name)
    if task_id is None:
        recent = recent_answers(store, account.name, state.edit_policy)
        return html("done", title="All done", account=account, progress=progress(store, account.name),
                    last=recent[0] if recent else None)
    return RedirectResponse(f"/tasks/{task_id}", status_code=303)


@router.get("/tasks/{task_id}")
def task_page(task_id: TaskId, request: Request, account: Account = Depends(require_account), edit: bool = False) -> Response:
    """The task's form; for an answer that may still change, the answer with Change / Undo (`?edit=1`: the form
    filled in with it)."""
    task, status = read_task(app_state(request).store, task_id, account)
    return _task_html(request, account, task, status, editing=edit)


@router.post("/tasks/{task_id}")
def task_submit(task_id: TaskId, request: Request, account: Account = Depends(require_account),
                form: dict[str, str] = Depends(form_body)) -> Response:
    """Same validation and storage as the JSON API; on error the form comes back with the message.
    (`require_account` has checked the origin: the session cookie came with a state-changing request.)"""
    state = app_state(request)
    task, status = read_task(state.store, task_id, account)
    try:
        submit_judgment(state.store, state.write_lock, task_id, account.name, form_to_body(task, form), state.guidelines)
    except AnnotationError as err:
        message = err.page_message
        return _task_html(request, account, task, status, error=message, values=form, code=err.status)
    return RedirectResponse("/next", status_code=303)


@router.post("/tasks/{task_id}/edit")
def task_edit(task_id: TaskId, request: Request, account: Account = Depends(require_account),
              form: dict[str, str] = Depends(form_body)) -> Response:
    """Change a recent answer from the form (`require_account` has checked the origin)."""
    state = app_state(request)
    task, status = read_task(state.store, task_id, account)
    try:
        edit_judgment(state.store, state.write_lock, task_id, account.name, form_to_body(task, form), state.guidelines,
                      state.edit_policy)
    except AnnotationError as err:
        message = err.page_message
        return _task_html(request, account, task, status, error=message, values=form, code=err.status, editing=True)
    return RedirectResponse("/recent?changed=" + str(task_id), status_code=303)


@router.post("/tasks/{task_id}/undo")
def task_undo(task_id: TaskId, request: Request, account: Account = Depends(require_account)) -> Response:
    """Withdraw a recent answer; the task opens again to be answered anew."""
    state = app_state(request)
    undo_judgment(state.store, state.write_lock, task_id, account.name, state.edit_policy)
    return RedirectResponse(f"/tasks/{task_id}", status_code=303)


@router.post("/tasks/{task_id}/unskip")
def task_unskip(task_id: TaskId, request: Request, account: Account = Depends(require_account)) -> Response:
    """Take back a recent skip or flag; the task opens again."""
    state = app_state(request)
    undo_skip(state.store, state.write_lock, task_id, account.name, state.edit_policy)
    return RedirectResponse(f"/tasks/{task_id}", status_code=303)


@router.post("/tasks/{task_id}/skip")
def task_skip(task_id: TaskId, request: Request, account: Account = Depends(require_account),
              form: dict[str, str] = Depends(form_body)) -> Response:
    """Skip or flag the task from its page (reason + optional note); on to the next task."""
    state = app_state(request)
    task, status = read_task(state.store, task_id, account)
    try:
        skip_task(state.store, state.write_lock, task_id, account.name,
                  {"reason": form.get("reason"), "note": form.get("note", "")})
    except AnnotationError as err:
        message = err.page_message
        return _task_html(request, account, task, status, error=message, values=form, code=err.status)
    return RedirectResponse("/next", status_code=303)


@router.get("/recent")
def recent_page(request: Request, account: Account = Depends(require_account), changed: int | None = None) -> Response:
    """The caller's answers that may still be undone or changed."""
    state = app_state(request)
    answers = [(a, describe(a.judgment)) for a in recent_answers(state.store, account.name, state.edit_policy)]
    return html("recent", title="Recent answers", account=account, answers=answers, policy=state.edit_policy,
                changed=changed, progress=progress(state.store, account.name), reasons=SKIP_REASONS,
                skips=recent_skips(state.store, account.name, state.edit_policy))


@router.get("/guidelines")
def guidelines_page(request: Request, account: Account = Depends(require_account)) -> Response:
    """Every task kind's guideline, always available behind the header's link."""
    state = app_state(request)
    return html("guidelines", title="Guidelines", account=account,
                guidelines=[(kind, guideline_for(state.guidelines, kind)) for kind in TASK_KINDS])


@router.get("/tasks/{task_id}/media/{index}")
def media(task_id: TaskId, index: int, request: Request, account: Account = Depends(require_account)) -> Response:
    """The index-th media file of the task's example, nothing else, and only inside the dataset root."""
    store = app_state(request).store
    task, _ = read_task(store, task_id, account)
    if not 0 <= index < len(task.example.media):
        raise NotFound(f"task {task_id} has no media file {index}", field="index")
    ref, root = task.example.media[index], store.example_root(task.example.id)
    try:
        if root is None:
            raise MediaError(f"example {task.example.id!r} was stored without a dataset root")
        path = resolve_media_path(ref, root, task.example.id)  # refuses paths and links out of the root
    except MediaError as err:
        log.warning("media of task %s refused: %s", task_id, err)  # the details name server paths: log only
        raise NotFound(f"media file {index} of task {task_id} is unavailable", field="index") from None
    media_type = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})


def form_to_body(task: TaskView, form: dict[str, str]) -> dict[str, Any]:
    """An HTML form as the JSON body the API takes: `rating.<axis>` fields become `ratings`, and the
    ranking typed as answer numbers ("2,1,3") becomes candidate ids."""
    body: dict[str, Any] = {}
    for key, value in form.items():
        if key.startswith("rating."):
            # ASCII digits only: "²".isdigit() holds but int("²") fails, and 5000 digits overflow int()
            body.setdefault("ratings", {})[key[len("rating."):]] = int(value) if re.fullmatch(r"[0-9]{1,4}", value) else value
        elif key == "ranking":
            body["ranking"] = _ranking_ids(task, value)
        else:
            body[key] = value
    if task.kind == "rating":
        body.setdefault("ratings", {})  # nothing chosen: the error names the first axis
    return body


def _ranking_ids(task: TaskView, typed: str) -> list[int]:
    numbers = [int(n) if len(n) <= 4 else 0 for n in re.findall(r"[0-9]+", typed)]  # ASCII digits; 0 is refused below
    if not numbers or not all(1 <= n <= len(task.candidates) for n in numbers):
        raise InvalidField(f"type the answer numbers 1..{len(task.candidates)} best first, e.g. "
                           f"{','.join(str(i + 1) for i in range(len(task.candidates)))}", field="ranking")
    return [task.candidate_ids[n - 1] for n in numbers]


def _task_html(request: Request, account: Account, task: TaskView, status: str | None, error: str | None = None,
               values: dict[str, str] | None = None, code: int = 200, editing: bool = False) -> Response:
    state = app_state(request)
    guideline = guideline_for(state.guidelines, task.kind)
    recent = recent_answers(state.store, account.name, state.edit_policy)
    mine = next((a for a in recent if a.task_id == task.id), None)  # this task's answer, while it may change
    editing = editing and mine is not None
    if editing and values is None:
        values = judgment_form_values(task, mine.judgment)
    last = recent[0] if recent and status == "queued" else None  # "Undo your last answer" on the next task
    skipped = status == "skipped" and any(r.task_id == task.id for r in recent_skips(state.store, account.name,
                                                                                  state.edit_policy))
    return html("task", code=code, title=f"Task {task.id}", account=account, task=task, status=status,
                progress=progress(state.store, account.name), guideline=guideline,
                guideline_open=open_once(state.store, account.name, task.kind, guideline.version),
                prompt=prompt_lines(task), media=media_items(task), error=error, values=values or {},
                editing=editing, mine=mine and describe(mine.judgment), last=last, reasons=SKIP_REASONS, unskip=skipped,
                strengths=list(STRENGTHS))
