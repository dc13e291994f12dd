"""Admin pages: the dashboard (progress, agreement) and the exports. All need an admin token."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from modalign.feedback.server.accounts import Account, list_accounts
from modalign.feedback.server.deps import app_state, html, require_admin
from modalign.feedback.server.exports import judgments_jsonl, preferences_parquet, trl_jsonl
from modalign.feedback.server.stats import agreement_by_kind, annotator_progress, task_progress

router = APIRouter()


def dashboard_stats(request: Request) -> dict[str, Any]:
    store = app_state(request).store
    tasks_done, tasks_total = task_progress(store)
    return {"tasks_done": tasks_done, "tasks_total": tasks_total, "judgments": store.count_judgments(),
            "annotators": annotator_progress(store), "agreement": agreement_by_kind(store.judgments())}


@router.get("/admin")
def dashboard(request: Request, account: Account = Depends(require_admin)) -> Response:
    return html("admin", title="Dashboard", account=account, accounts=list_accounts(app_state(request).store),
                fmt=_fmt, **dashboard_stats(request))


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
def export_judgments(request: Request, _: Account = Depends(require_admin)) -> Response:
    return _download(judgments_jsonl(app_state(request).store), "judgments.jsonl", "application/jsonl")


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
