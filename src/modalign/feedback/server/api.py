"""The JSON API for scripted clients and load tests (Authorization: Bearer <token>).

A browser's session cookie is accepted too, but then a POST must come from this origin
(`deps.require_account`) and carry Content-Type application/json (`deps.json_body`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from modalign.feedback.server.accounts import Account
from modalign.feedback.server.deps import TaskId, app_state, json_body, require_account
from modalign.feedback.server.guidelines import guideline_for
from modalign.feedback.server.review import (
    SKIP_REASONS, edit_judgment, recent_answers, recent_skips, skip_task, undo_judgment, undo_skip,
)
from modalign.feedback.server.submit import read_task, submit_judgment
from modalign.feedback.server.tasks import next_task_id, open_task_ids, progress
from modalign.feedback.server.views import judgment_fields, progress_json, task_json

router = APIRouter(prefix="/api")


@router.get("/next")
def api_next(request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    """The caller's next open task (`"task": null` when none is left) and their progress."""
    state = app_state(request)
    task_id = next_task_id(state.store, account.name)
    task = None
    if task_id is not None:
        view, status = read_task(state.store, task_id, account)
        task = task_json(view, guideline_for(state.guidelines, view.kind), status)
    return {"task": task, "progress": progress_json(progress(state.store, account.name))}


@router.get("/queue")
def api_queue(request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    """Ids of all the caller's open tasks, in the order they are served."""
    state = app_state(request)
    return {"task_ids": open_task_ids(state.store, account.name),
            "progress": progress_json(progress(state.store, account.name))}


@router.get("/tasks/{task_id}")
def api_task(task_id: TaskId, request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    state = app_state(request)
    view, status = read_task(state.store, task_id, account)
    return task_json(view, guideline_for(state.guidelines, view.kind), status)


@router.post("/tasks/{task_id}/judgment", status_code=201)
def api_judgment(task_id: TaskId, request: Request, account: Account = Depends(require_account),
                 body: Any = Depends(json_body)) -> JSONResponse:
    """Store the caller's answer to a task; 201 only once it is committed to disk."""
    state = app_state(request)
    judgment_id = submit_judgment(state.store, state.write_lock, task_id, account.name, body, state.guidelines)
    return JSONResponse({"judgment_id": judgment_id, "task_id": task_id}, status_code=201)


@router.post("/tasks/{task_id}/skip", status_code=201)
def api_skip(task_id: TaskId, request: Request, account: Account = Depends(require_account),
             body: Any = Depends(json_body)) -> JSONResponse:
    """Set a task aside: `{"reason": "cant_judge" | "broken_media" | "other", "note": "..."}`; it leaves the
    queue and never becomes a training pair."""
    state = app_state(request)
    skip_id = skip_task(state.store, state.write_lock, task_id, account.name, body)
    return JSONResponse({"skip_id": skip_id, "task_id": task_id, "action": SKIP_REASONS[body["reason"]][0]},
                        status_code=201)


@router.delete("/tasks/{task_id}/skip")
def api_undo_skip(task_id: TaskId, request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    """Take back a recent skip or flag: the task is back in the caller's queue."""
    state = app_state(request)
    undo_skip(state.store, state.write_lock, task_id, account.name, state.edit_policy)
    return {"task_id": task_id, "status": "queued"}


@router.put("/tasks/{task_id}/judgment")
def api_edit(task_id: TaskId, request: Request, account: Account = Depends(require_account),
             body: Any = Depends(json_body)) -> dict[str, Any]:
    """Change a recent answer (same body as a new one); the old version is kept in the history."""
    state = app_state(request)
    judgment_id = edit_judgment(state.store, state.write_lock, task_id, account.name, body, state.guidelines,
                                state.edit_policy)
    return {"judgment_id": judgment_id, "task_id": task_id}


@router.delete("/tasks/{task_id}/judgment")
def api_undo(task_id: TaskId, request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    """Withdraw a recent answer: the task is back in the caller's queue."""
    state = app_state(request)
    undo_judgment(state.store, state.write_lock, task_id, account.name, state.edit_policy)
    return {"task_id": task_id, "status": "queued"}


@router.get("/recent")
def api_recent(request: Request, account: Account = Depends(require_account)) -> dict[str, Any]:
    """The caller's answers they may still undo or change, and skips they may undo, newest first."""
    state = app_state(request)
    policy = state.edit_policy
    return {"answers": [{"task_id": a.task_id, "judgment_id": a.judgment_id, "kind": a.kind,
                         "created_at": a.created_at.isoformat(), **judgment_fields(a.judgment)}
                        for a in recent_answers(state.store, account.name, policy)],
            "set_aside": [{"task_id": row.task_id, "action": row.action, "reason": row.reason, "note": row.note}
                          for row in recent_skips(state.store, account.name, policy)],
            "last": policy.last, "window_minutes": policy.window.total_seconds() / 60}
