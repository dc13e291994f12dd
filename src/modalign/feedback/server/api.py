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
from modalign.feedback.server.submit import read_task, submit_judgment
from modalign.feedback.server.tasks import next_task_id, open_task_ids, progress
from modalign.feedback.server.views import progress_json, task_json

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
