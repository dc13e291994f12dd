"""Admin pages: the dashboard (progress, agreement), the exports, disagreements and single tasks, accounts,
and stalled assignments. All need an admin; state changes keep the origin / JSON rules of `deps`."""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from modalign.feedback.server.accounts import (
    Account, AccountError, activate, create_account, deactivate, deactivated_names, list_accounts, reset_token,
)
from modalign.feedback.server.deps import TaskId, app_state, form_body, html, json_body, require_admin
from modalign.feedback.server.errors import AnnotationError, InvalidField, NotFound
from modalign.feedback.server.oversight import (
    disputed_tasks, reassign_stalled, set_aside_items, stalled_assignments, store_kind, task_detail, vote_of,
)
from modalign.feedback.server.views import media_items, prompt_lines
from modalign.feedback.store import FeedbackStore
from modalign.feedback.server.exports import judgments_jsonl, preferences_parquet, trl_jsonl
from modalign.feedback.server.stats import agreement_by_kind, annotator_progress, task_progress

router = APIRouter()
STALL_AFTER = timedelta(hours=1)  # the dashboard counts (and by default reassigns) assignments queued longer


def dashboard_stats(request: Request) -> dict[str, Any]:
    store = app_state(request).store
    tasks_done, tasks_total = task_progress(store)
    return {"tasks_done": tasks_done, "tasks_total": tasks_total, "judgments": store.count_judgments(),
            "annotators": annotator_progress(store), "agreement": agreement_by_kind(store.judgments())}


@router.get("/admin")
def dashboard(request: Request, account: Account = Depends(require_admin)) -> Response:
    store = app_state(request).store
    return html("admin", title="Dashboard", account=account, accounts=list_accounts(store), fmt=_fmt,
                inactive=deactivated_names(store), set_aside=set_aside_items(store), disputed=len(disputed_tasks(store)),
                stalled=len(stalled_assignments(store, STALL_AFTER)), stall_minutes=int(STALL_AFTER.total_seconds() // 60),
                **dashboard_stats(request))


# ---- review: disagreements, one task, individual judgments ---------------------------------------


@router.get("/admin/disagreements")
def disagreements_page(request: Request, account: Account = Depends(require_admin)) -> Response:
    return html("disagreements", title="Disagreements", account=account, disputed=disputed_tasks(app_state(request).store))


@router.get("/api/admin/disagreements")
def disagreements_json(request: Request, _: Account = Depends(require_admin)) -> dict[str, Any]:
    """Tasks with split votes and every annotator's answer."""
    return {"tasks": [asdict(item) for item in disputed_tasks(app_state(request).store)]}


@router.get("/admin/tasks/{task_id}")
def task_detail_page(task_id: TaskId, request: Request, account: Account = Depends(require_admin)) -> Response:
    detail = task_detail(app_state(request).store, task_id)
    return html("admin_task", title=f"Task {task_id}", account=account, detail=detail,
                prompt=prompt_lines(detail.task), media=media_items(detail.task))


@router.get("/api/admin/tasks/{task_id}")
def task_detail_json(task_id: TaskId, request: Request, _: Account = Depends(require_admin)) -> dict[str, Any]:
    """One task: its candidates, assignments, each annotator's current answer, replaced answers and skips."""
    detail = task_detail(app_state(request).store, task_id)
    return {"task_id": task_id, "kind": detail.task.kind, "example_id": detail.task.example.id,
            "candidates": [{"id": cid, "text": text} for cid, text in detail.task.candidates],
            "assignments": [{"annotator": name, "status": status} for name, status in detail.assignments],
            "judgments": [asdict(vote) for vote in detail.votes],
            "history": [{"annotator": who, "change": change, "replaced_at": at, "answer": answer}
                        for who, change, at, answer in detail.history],
            "set_aside": [asdict(item) for item in detail.set_aside]}


@router.get("/admin/judgments")
def judgments_page(request: Request, account: Account = Depends(require_admin), annotator: str = "") -> Response:
    store = app_state(request).store
    rows = [(j.task_id, store_kind(j), j.guideline_version, vote_of(j)) for j in store.judgments(annotator=annotator or None)]
    return html("judgments", title="Judgments", account=account, rows=rows, annotator=annotator,
                accounts=list_accounts(store))


@router.get("/api/admin/set-aside")
def set_aside_json(request: Request, _: Account = Depends(require_admin)) -> dict[str, Any]:
    """Skipped and flagged tasks, newest first."""
    return {"items": [asdict(item) for item in set_aside_items(app_state(request).store)]}


# ---- accounts ------------------------------------------------------------------------------------


@router.post("/admin/accounts/{action}")
def account_form(action: str, request: Request, account: Account = Depends(require_admin),
                 form: dict[str, str] = Depends(form_body)) -> Response:
    """create / reset / deactivate / activate from the dashboard's forms; a new token is shown once."""
    try:
        token = change_account(app_state(request).store, action, form.get("name", ""), form.get("role", "annotator"),
                               account)
    except AnnotationError as err:
        return html("message", code=err.status, title=f"Error {err.status}", message=err.message, css="error",
                    account=account)
    name = form.get("name", "")
    return html("token", title=ACCOUNT_DONE[action].format(name=name), account=account, token=token, account_name=name,
                message=ACCOUNT_DONE[action].format(name=name))


@router.post("/api/admin/accounts/{action}")
def account_json(action: str, request: Request, account: Account = Depends(require_admin),
                 body: Any = Depends(json_body)) -> dict[str, Any]:
    """`{"name": ..., "role": ...}` to create / reset / deactivate / activate; create and reset return the token."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise InvalidField("send {\"name\": \"...\"}", field="name")
    store = app_state(request).store
    token = change_account(store, action, body["name"], body.get("role", "annotator"), account)
    return {"name": body["name"], "token": token, "active": body["name"] not in deactivated_names(store)}


ACCOUNT_DONE = {"create": "Account {name} created", "reset": "New token for {name}",
                "deactivate": "{name} is deactivated: logged out everywhere and cannot log in",
                "activate": "{name} can log in again"}


def change_account(store: FeedbackStore, action: str, name: str, role: str, by: Account) -> str | None:
    """Apply an account action; returns the new token for create and reset."""
    if action not in ACCOUNT_DONE:
        raise NotFound(f"no account action {action!r} (one of {list(ACCOUNT_DONE)})", field="action")
    try:
        if action == "create":
            return create_account(store, name, role)
        if action == "reset":
            return reset_token(store, name)
        if action == "deactivate":
            deactivate(store, name, by.name)
        else:
            activate(store, name)
    except AccountError as err:
        raise InvalidField(str(err), field="name") from None
    return None


# ---- stalled assignments ---------------------------------------------------------------------------


@router.post("/admin/reassign")
def reassign_form(request: Request, account: Account = Depends(require_admin),
                  form: dict[str, str] = Depends(form_body)) -> Response:
    moves = _reassign(request, account, form)
    return html("moves", title="Reassigned", account=account, moves=moves)


@router.post("/api/admin/reassign")
def reassign_json(request: Request, account: Account = Depends(require_admin), body: Any = Depends(json_body)) -> dict[str, Any]:
    """`{"older_than_minutes": 60, "annotator": "bob"?, "to": "carol"?}`: stalled assignments (of `annotator`)
    go to `to`, or without it to the active annotator with the shortest queue."""
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="body")
    return {"moves": [asdict(move) for move in _reassign(request, account, body)]}


def _reassign(request: Request, account: Account, fields: dict[str, Any]) -> list:
    minutes = fields.get("older_than_minutes", STALL_AFTER.total_seconds() / 60)
    try:
        minutes = float(minutes)
    except (TypeError, ValueError):
        raise InvalidField(f"older_than_minutes must be a number, got {minutes!r}", field="older_than_minutes") from None
    if not math.isfinite(minutes) or not 0 <= minutes <= 10 ** 7:
        raise InvalidField(f"older_than_minutes must be in 0..10000000, got {minutes!r}", field="older_than_minutes")
    state = app_state(request)
    return reassign_stalled(state.store, state.write_lock, timedelta(minutes=minutes), account.name,
                            to=fields.get("to") or None, annotator=fields.get("annotator") or None)


@router.get("/api/admin/stats")
def stats_json(request: Request, _: Account = Depends(require_admin)) -> dict[str, Any]:
    """The dashboard's numbers as JSON (NaN, where agreement is undefined, becomes null)."""
    stats = dashboard_stats(request)
    return _finite({**stats, "annotators": [asdict(row) for row in stats["annotators"]],
                    "agreement": [asdict(row) for row in stats["agreement"]]})


@router.get("/admin/export/trl.jsonl")
def export_trl(request: Request, _: Account = Depends(require_admin)) -> Response:
    return _download(trl_jsonl(app_state(request).store), "trl_preferences.jsonl", "application/jsonl")


@router.get("/admin/export/judgments.jsonl")
def export_judgments(request: Request, _: Account = Depends(require_admin), annotator: str = "") -> Response:
    """Every current judgment (`?annotator=`: only theirs), each with its strength, reason, version and time."""
    return _download(judgments_jsonl(app_state(request).store, annotator or None), "judgments.jsonl", "application/jsonl")


@router.get("/admin/export/preferences.parquet")
def export_parquet(request: Request, _: Account = Depends(require_admin)) -> Response:
    return _download(preferences_parquet(app_state(request).store), "preferences.parquet", "application/vnd.apache.parquet")


def _download(content: str | bytes, filename: str, media_type: str) -> Response:
    # no-store: the exports hold every answer; no browser or proxy cache may keep a copy
    return Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                                             "Cache-Control": "no-store"})


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
