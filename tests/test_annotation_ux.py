"""What annotators and admins can do in the annotation app beyond answering (issue 21), through its
HTTP API and forms (TestClient) on a ShapesWorld store: skip / flag, undo / edit of recent answers,
preference strength, guidelines that open once (and from a file), the dark theme; and for admins,
disagreements, one task's judgments, individual judgments, accounts, and stalled assignments.
Every state-changing route keeps the origin and JSON rules of the rest of the app."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from annotation_support import ADMIN_TOKEN, build_shapes, build_world
from modalign.feedback.queue import judged_tasks
from modalign.feedback.schema import AssignmentMoveRow, JudgmentRevisionRow, SkipRow, TaskRow
from modalign.feedback.server import create_app
from modalign.feedback.server.accounts import deactivated_names, list_accounts
from modalign.feedback.server.guidelines import load_guidelines
from modalign.feedback.server.review import EditPolicy
from modalign.feedback.server.tasks import TaskError

ORIGIN = "http://testserver"  # the TestClient's own origin
OTHER_PORT = "http://testserver:8001"  # same site, another origin


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return build_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def world(tmp_path, shapes_root):
    """alice and bob share pairwise tasks 1-3 (overlap 2); carol has none yet; boss is an admin."""
    w = build_world(tmp_path, shapes_root)
    w.add_accounts("alice", "bob", "carol")
    w.add_accounts("boss", role="admin")
    w.tasks("pairwise", 3, 2, ["alice", "bob"], overlap=2)
    return w


@pytest.fixture
def client(world):
    with TestClient(create_app(world.store.url, ADMIN_TOKEN), headers={"Origin": ORIGIN}) as client:
        yield client


def bearer(world, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[name]}"}


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def answer(client, world, task_id: int, body, who: str = "alice"):
    return client.post(f"/api/tasks/{task_id}/judgment", json=body, headers=bearer(world, who))


def pick(client, world, task_id: int, candidate: int, who: str, **extra) -> None:
    """`who` prefers `candidate` on a pairwise task (whichever side their own A/B order shows it on)."""
    shown = [c["id"] for c in client.get(f"/api/tasks/{task_id}", headers=bearer(world, who)).json()["candidates"]]
    response = answer(client, world, task_id, {"choice": "ab"[shown.index(candidate)], **extra}, who)
    assert response.status_code == 201, response.text


def first_two(world, index: int = 0) -> tuple[int, int]:
    return tuple(world.candidates[world.examples[index].id][:2])


def login(client, world, name: str) -> None:
    response = client.post("/login", data={"token": world.tokens[name]}, follow_redirects=False)
    assert response.status_code == 303, response.text


# ---- skip / flag -------------------------------------------------------------------------------------


def test_skipped_and_flagged_tasks_leave_the_queue_and_never_become_training_pairs(client, world):
    skip = client.post("/api/tasks/1/skip", json={"reason": "cant_judge"}, headers=bearer(world, "alice"))
    assert skip.status_code == 201 and skip.json()["action"] == "skip"
    login(client, world, "bob")  # bob flags task 2 from the page's form
    flagged = client.post("/tasks/2/skip", data={"reason": "broken_media", "note": "image is black"}, follow_redirects=False)
    assert flagged.status_code == 303 and flagged.headers["location"] == "/next"
    pick(client, world, 1, first_two(world, 0)[0], "bob")  # bob still answers task 1; alice answers 2 and 3
    for task_id in (2, 3):
        pick(client, world, task_id, first_two(world, task_id - 1)[0], "alice")
    pick(client, world, 3, first_two(world, 2)[0], "bob")

    with Session(world.store.engine) as session:
        rows = {(r.task_id, r.annotator): r for r in session.scalars(select(SkipRow))}
    assert set(rows) == {(1, "alice"), (2, "bob")}
    assert (rows[1, "alice"].action, rows[1, "alice"].reason) == ("skip", "cant_judge")
    assert (rows[2, "bob"].action, rows[2, "bob"].note) == ("flag", "image is black") and rows[2, "bob"].created_at
    queue = client.get("/api/queue", headers=bearer(world, "alice")).json()
    assert queue == {"task_ids": [], "progress": {"done": 3, "total": 3}}
    # training reads only task 3: tasks 1 and 2 were set aside by someone, whatever the others answered
    assert [(p.example_id, p.votes) for p in world.store.preference_pairs()] == [(world.examples[2].id, 2)]
    assert [row["example_id"] for row in world.store.export_trl()] == [world.examples[2].id]
    assert {j.task_id for j in world.store.judgments(training=True)} == {3}
    assert len(judged_tasks(world.store, [1, 2, 3]).groups) == 1
    assert {j.task_id for j in world.store.judgments()} == {1, 2, 3}  # nothing is deleted
    listed = client.get("/api/admin/set-aside", headers=ADMIN).json()["items"]
    assert [(i["task_id"], i["annotator"], i["action"], i["reason"]) for i in listed] == [
        (2, "bob", "flag", "broken_media"), (1, "alice", "skip", "cant_judge")]
    dashboard = client.get("/admin", headers=ADMIN).text
    assert 'id="set-aside"' in dashboard and "image is black" in dashboard


@pytest.mark.parametrize("task_id, body, status, field", [
    (1, {"reason": "bored"}, 422, "reason"),
    (1, {"reason": "other"}, 422, "note"),  # "other" must say what
    (1, {"reason": "cant_judge", "note": 5}, 422, "note"),
    (1, {"reason": "cant_judge", "why": "x"}, 422, "why"),
    (2, {"reason": "cant_judge"}, 409, "task_id"),  # already answered
    (99, {"reason": "cant_judge"}, 404, "task_id"),
])
def test_a_bad_skip_is_refused_naming_the_field(client, world, task_id, body, status, field):
    pick(client, world, 2, first_two(world, 1)[0], "alice")
    response = client.post(f"/api/tasks/{task_id}/skip", json=body, headers=bearer(world, "alice"))
    assert (response.status_code, response.json()["field"]) == (status, field)
    assert world.store.set_aside_task_ids() == set()


def test_a_recent_skip_can_be_undone_and_is_kept_in_the_history(client, world):
    login(client, world, "alice")
    client.post("/tasks/1/skip", data={"reason": "cant_judge"})
    assert client.get("/api/recent").json()["set_aside"] == [
        {"task_id": 1, "action": "skip", "reason": "cant_judge", "note": ""}]
    assert 'id="unskip"' in client.get("/tasks/1").text
    assert client.post("/tasks/1/unskip", follow_redirects=False).headers["location"] == "/tasks/1"
    assert world.store.set_aside_task_ids() == set() and client.get("/api/queue").json()["task_ids"] == [1, 2, 3]
    detail = client.get("/api/admin/tasks/1", headers=ADMIN).json()
    assert [(h["annotator"], h["change"], h["answer"]) for h in detail["history"]] == [("alice", "undo", "skip (cant_judge)")]
    assert client.delete("/api/tasks/1/skip").status_code == 404  # nothing left to undo
    assert answer(client, world, 1, {"choice": "a"}).status_code == 201
    client.post("/tasks/2/skip", data={"reason": "cant_judge"})
    client.app.state.annotation.edit_policy = EditPolicy(last=10, window=timedelta(0))
    assert client.delete("/api/tasks/2/skip").status_code == 409


def test_a_task_is_skipped_once(client, world):
    assert client.post("/api/tasks/1/skip", json={"reason": "cant_judge"}, headers=bearer(world, "alice")).status_code == 201
    again = client.post("/api/tasks/1/skip", json={"reason": "broken_media"}, headers=bearer(world, "alice"))
    assert again.status_code == 409 and answer(client, world, 1, {"choice": "a"}).status_code == 409


# ---- undo / edit ---------------------------------------------------------------------------------------


def test_an_edit_replaces_the_answer_training_reads_and_keeps_the_old_one(client, world):
    a, b = first_two(world, 0)
    pick(client, world, 1, a, "alice")
    pick(client, world, 1, a, "bob")
    assert world.store.preference_pairs()[0].chosen.text == world.store.get_candidate(a).text
    judgment_id = world.store.judgments(annotator="alice")[0]
    shown = [c["id"] for c in client.get("/api/tasks/1", headers=bearer(world, "alice")).json()["candidates"]]
    edit = client.put("/api/tasks/1/judgment", json={"choice": "ab"[shown.index(b)], "strength": "strong"},
                      headers=bearer(world, "alice"))
    assert edit.status_code == 200, edit.text
    mine = world.store.judgments(annotator="alice")
    assert len(mine) == 1 and mine[0].created_at == judgment_id.created_at
    assert {"a": mine[0].candidate_a, "b": mine[0].candidate_b}[mine[0].choice] == b and mine[0].strength == "strong"
    pair = world.store.preference_pairs()[0]  # one vote each way now: a tie, by the majority rule
    assert pair.votes == 2 and pair.tie
    with Session(world.store.engine) as session:
        history = session.scalars(select(JudgmentRevisionRow)).all()
    assert [(h.annotator, h.change, h.task_id) for h in history] == [("alice", "edit", 1)]
    old = history[0].payload
    assert {"a": old["candidate_a"], "b": old["candidate_b"]}[old["choice"]] == a
    detail = client.get("/api/admin/tasks/1", headers=ADMIN).json()
    assert [(h["annotator"], h["change"], h["answer"]) for h in detail["history"]] == [("alice", "edit", f"candidate {a}")]


def test_undo_puts_the_task_back_in_the_queue_and_a_new_answer_can_follow(client, world):
    pick(client, world, 1, first_two(world, 0)[0], "alice")
    pick(client, world, 2, first_two(world, 1)[0], "alice")
    recent = client.get("/api/recent", headers=bearer(world, "alice")).json()
    assert [r["task_id"] for r in recent["answers"]] == [2, 1] and recent["last"] == 10
    undo = client.delete("/api/tasks/1/judgment", headers=bearer(world, "alice"))
    assert undo.json() == {"task_id": 1, "status": "queued"}
    assert [j.task_id for j in world.store.judgments(annotator="alice")] == [2]
    assert client.get("/api/next", headers=bearer(world, "alice")).json()["task"]["id"] == 1
    with Session(world.store.engine) as session:
        assert session.get(TaskRow, 1).status == "open"
        assert [h.change for h in session.scalars(select(JudgmentRevisionRow))] == ["undo"]
    pick(client, world, 1, first_two(world, 0)[1], "alice")
    assert client.delete("/api/tasks/3/judgment", headers=bearer(world, "alice")).status_code == 404  # never answered


def test_only_recent_answers_can_be_undone_or_changed(client, world):
    for task_id in (1, 2):
        pick(client, world, task_id, first_two(world, task_id - 1)[0], "alice")
    client.app.state.annotation.edit_policy = EditPolicy(last=1, window=timedelta(minutes=30))
    older = client.delete("/api/tasks/1/judgment", headers=bearer(world, "alice"))
    assert older.status_code == 409 and older.json()["field"] == "task_id" and "last 1 answers" in older.json()["detail"]
    client.app.state.annotation.edit_policy = EditPolicy(last=10, window=timedelta(0))
    assert client.put("/api/tasks/2/judgment", json={"choice": "tie"}, headers=bearer(world, "alice")).status_code == 409
    assert client.get("/api/recent", headers=bearer(world, "alice")).json()["answers"] == []
    assert world.store.count_judgments() == 2  # both still stored as given
    # another annotator's answer is not yours to undo
    assert client.delete("/api/tasks/1/judgment", headers=bearer(world, "bob")).status_code == 404


def test_the_task_page_offers_undo_and_change_while_allowed(client, world):
    login(client, world, "alice")
    assert client.post("/tasks/1", data={"choice": "a", "strength": "clear"}, follow_redirects=False).status_code == 303
    page = client.get("/tasks/2").text
    assert 'action="/tasks/1/undo"' in page and 'id="undo-last"' in page
    done = client.get("/tasks/1").text
    assert "A is better (clear)" in done and 'href="/tasks/1?edit=1"' in done
    edit_form = client.get("/tasks/1?edit=1").text
    assert 'action="/tasks/1/edit"' in edit_form and 'value="clear"\nchecked' in edit_form
    changed = client.post("/tasks/1/edit", data={"choice": "tie"}, follow_redirects=False)
    assert changed.status_code == 303 and world.store.judgments()[0].choice == "tie"
    assert "Tie" in client.get("/recent").text
    assert client.post("/tasks/1/undo", follow_redirects=False).headers["location"] == "/tasks/1"
    assert 'id="answer"' in client.get("/tasks/1").text


# ---- preference strength -----------------------------------------------------------------------------------


def test_strength_is_stored_exported_and_weights_the_margin(client, world):
    a, b = first_two(world, 0)
    pick(client, world, 1, a, "alice", strength="strong")
    pick(client, world, 1, a, "bob", strength="slight")
    pick(client, world, 2, first_two(world, 1)[0], "alice")  # no strength: weighs 1, as before
    pick(client, world, 2, first_two(world, 1)[1], "bob", strength="clear")
    margins = {p.example_id: p.margin for p in world.store.preference_pairs()}
    assert margins[world.examples[0].id] == pytest.approx((2.0 + 0.5) / 2)
    assert margins[world.examples[1].id] == pytest.approx(0.0)
    exported = [json.loads(line) for line in client.get("/admin/export/judgments.jsonl", headers=ADMIN).text.splitlines()]
    assert sorted((row["annotator"], row["task_id"], row["strength"]) for row in exported) == [
        ("alice", 1, "strong"), ("alice", 2, None), ("bob", 1, "slight"), ("bob", 2, "clear")]
    only_bob = client.get("/admin/export/judgments.jsonl?annotator=bob", headers=ADMIN).text.splitlines()
    assert {json.loads(line)["annotator"] for line in only_bob} == {"bob"}


@pytest.mark.parametrize("body", [{"choice": "a", "strength": "huge"}, {"choice": "tie", "strength": "strong"},
                                  {"choice": "a", "strength": 2}])
def test_a_bad_strength_is_refused(client, world, body):
    response = answer(client, world, 1, body)
    assert (response.status_code, response.json()["field"]) == (422, "strength")
    assert world.store.count_judgments() == 0


# ---- guidelines and theme ---------------------------------------------------------------------------------


def test_guidelines_open_once_and_again_when_their_version_changes(world, tmp_path):
    file = tmp_path / "guide.md"
    file.write_text("Judge what is in the image.\n\n## pairwise\nPrefer the correct answer.\n\n## rating\nRate it.\n")
    first = load_guidelines(file)
    assert first["pairwise"].text == "Judge what is in the image.\n\nPrefer the correct answer."
    assert first["ranking"].text == "Judge what is in the image."  # only the shared part
    with TestClient(create_app(world.store.url, ADMIN_TOKEN, first), headers={"Origin": ORIGIN}) as client:
        login(client, world, "alice")
        assert 'id="guidelines" open>' in client.get("/tasks/1").text
        assert 'id="guidelines">' in client.get("/tasks/1").text  # second visit: closed, behind the summary
        assert 'id="guidelines">' in client.get("/tasks/2").text
        assert "Prefer the correct answer." in client.get("/guidelines").text
        assert answer(client, world, 1, {"choice": "a"}).json()["judgment_id"]
    assert world.store.judgments()[0].guideline_version == first["pairwise"].version
    file.write_text(file.read_text().replace("Rate it.", "Rate each axis."))
    assert load_guidelines(file)["pairwise"].version == first["pairwise"].version  # other kinds unchanged
    file.write_text(file.read_text().replace("correct answer", "correct, complete answer"))
    second = load_guidelines(file)
    assert second["pairwise"].version != first["pairwise"].version and second["pairwise"].version.startswith("file-")
    with TestClient(create_app(world.store.url, ADMIN_TOKEN, second), headers={"Origin": ORIGIN}) as client:
        login(client, world, "alice")
        assert 'id="guidelines" open>' in client.get("/tasks/2").text  # changed: open once more
        assert 'id="guidelines">' in client.get("/tasks/2").text


def test_the_annotate_command_serves_a_guidelines_file_and_names_a_bad_one(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import modalign.feedback.server.app as app_module
    from modalign.cli import app

    served = {}
    monkeypatch.setattr(app_module, "serve", lambda url, **kw: served.update(url=url, **kw))
    (tmp_path / "guide.md").write_text("## critique\nFix colours only.\n")
    result = CliRunner().invoke(app, ["annotate", "--store", world.store.url, "--guidelines", str(tmp_path / "guide.md")])
    assert result.exit_code == 0, result.output
    assert served["url"] == world.store.url and served["guidelines"]["critique"].text == "Fix colours only."
    assert served["guidelines"]["pairwise"].version == "pairwise-v1"  # nothing for it in the file: the built-in one
    (tmp_path / "empty.md").write_text("\n\n")
    for path in (tmp_path / "missing.md", tmp_path / "empty.md"):
        result = CliRunner().invoke(app, ["annotate", "--store", world.store.url, "--guidelines", str(path)])
        assert result.exit_code == 2 and str(path.name) in result.output and "Traceback" not in result.output


def test_pages_follow_the_system_theme_and_have_a_toggle(client, world):
    page = client.get("/login").text
    assert "@media (prefers-color-scheme: dark)" in page and ":root[data-theme=dark]" in page
    assert 'id="theme-toggle"' in page and 'localStorage.setItem("modalign-theme"' in page


# ---- admin: disagreements, one task, individual judgments ----------------------------------------------------


def test_admins_see_split_votes_and_every_annotators_judgment(client, world):
    a, b = first_two(world, 0)
    pick(client, world, 1, a, "alice", reason="B invents a star")
    pick(client, world, 1, b, "bob", strength="slight")
    for who in ("alice", "bob"):  # task 2: both agree
        pick(client, world, 2, first_two(world, 1)[0], who)
    disputed = client.get("/api/admin/disagreements", headers=ADMIN).json()["tasks"]
    assert [(d["task_id"], d["answers"]) for d in disputed] == [(1, 2)]
    assert sorted((v["annotator"], v["answer"]) for v in disputed[0]["votes"]) == [
        ("alice", f"candidate {a}"), ("bob", f"candidate {b} (slight)")]
    detail = client.get("/api/admin/tasks/1", headers=ADMIN).json()
    assert [(j["annotator"], j["detail"]) for j in detail["judgments"]] == [("alice", "B invents a star"), ("bob", "")]
    assert detail["assignments"] == [{"annotator": "alice", "status": "done"}, {"annotator": "bob", "status": "done"}]
    page = client.get("/admin/tasks/1", headers=ADMIN).text
    assert page.count('class="vote"') == 2 and "B invents a star" in page
    assert 'href="/admin/tasks/1"' in client.get("/admin/disagreements", headers=ADMIN).text
    listing = client.get("/admin/judgments?annotator=bob", headers=ADMIN).text
    assert f"candidate {b} (slight)" in listing and "B invents a star" not in listing
    for path in ("/api/admin/disagreements", "/api/admin/tasks/1", "/admin/judgments"):
        assert client.get(path, headers=bearer(world, "alice")).status_code == 403
    assert client.get("/api/admin/tasks/99", headers=ADMIN).status_code == 404


# ---- admin: accounts ------------------------------------------------------------------------------------------


def test_admins_create_reset_and_deactivate_accounts_from_the_page(client, world):
    created = client.post("/api/admin/accounts/create", json={"name": "dora"}, headers=ADMIN).json()
    assert client.get("/api/next", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 200
    reset = client.post("/api/admin/accounts/reset", json={"name": "dora"}, headers=ADMIN).json()
    assert client.get("/api/next", headers={"Authorization": f"Bearer {created['token']}"}).status_code == 401
    assert client.get("/api/next", headers={"Authorization": f"Bearer {reset['token']}"}).status_code == 200

    login(client, world, "boss")  # the page's forms, with the admin's session cookie
    page = client.post("/admin/accounts/create", data={"name": "erin", "role": "annotator"})
    assert page.status_code == 200 and 'id="new-token"' in page.text
    with TestClient(client.app, headers={"Origin": ORIGIN}) as alice_browser:
        login(alice_browser, world, "alice")
        assert alice_browser.get("/api/next").status_code == 200
        off = client.post("/admin/accounts/deactivate", data={"name": "alice"})
        assert off.status_code == 200 and "deactivated" in off.text
        assert alice_browser.get("/api/next").status_code == 401  # the open session is revoked
        assert alice_browser.post("/login", data={"token": world.tokens["alice"]}).status_code == 401
        assert client.get("/api/next", headers=bearer(world, "alice")).status_code == 401
        assert "deactivated" in client.get("/admin").text
        client.post("/admin/accounts/activate", data={"name": "alice"})
        assert client.get("/api/next", headers=bearer(world, "alice")).status_code == 200
    assert client.post("/admin/accounts/deactivate", data={"name": "boss"}).status_code == 422  # not yourself
    duplicate = client.post("/api/admin/accounts/create", json={"name": "alice"}, headers=ADMIN)
    assert (duplicate.status_code, duplicate.json()["field"]) == (422, "name")
    assert client.post("/api/admin/accounts/create", json={"name": "x"}, headers=bearer(world, "alice")).status_code == 403


CROSS_ORIGIN = [  # state-changing routes added for issue 21, sent with the session cookie from another origin
    ("post", "/api/tasks/1/skip", {"json": {"reason": "cant_judge"}}),
    ("put", "/api/tasks/1/judgment", {"json": {"choice": "b"}}),
    ("delete", "/api/tasks/1/judgment", {}),
    ("delete", "/api/tasks/1/skip", {}),
    ("post", "/tasks/1/unskip", {}),
    ("post", "/tasks/1/undo", {}),
    ("post", "/tasks/1/edit", {"data": {"choice": "b"}}),
    ("post", "/tasks/2/skip", {"data": {"reason": "cant_judge"}}),
    ("post", "/admin/accounts/create", {"data": {"name": "mallory"}}),
    ("post", "/api/admin/accounts/deactivate", {"json": {"name": "bob"}}),
    ("post", "/admin/reassign", {"data": {"older_than_minutes": "0"}}),
]


@pytest.mark.parametrize("method, path, kwargs", CROSS_ORIGIN, ids=[f"{m}-{p}" for m, p, _ in CROSS_ORIGIN])
def test_new_routes_refuse_cross_origin_requests(world, method, path, kwargs):
    with TestClient(create_app(world.store.url, ADMIN_TOKEN), headers={"Origin": ORIGIN}) as browser:
        login(browser, world, "boss" if "admin" in path else "alice")
        if "admin" not in path:
            assert browser.post("/tasks/1", data={"choice": "a"}, follow_redirects=False).status_code == 303
        for origin in (OTHER_PORT, "null"):
            response = browser.request(method.upper(), path, headers={"Origin": origin}, **kwargs)
            assert response.status_code == 403 and response.json()["field"] == "origin", origin
    assert world.store.set_aside_task_ids() == set()
    assert [j.choice for j in world.store.judgments()] == ([] if "admin" in path else ["a"])
    assert "mallory" not in {a.name for a in list_accounts(world.store)} and deactivated_names(world.store) == set()


def test_admin_json_routes_take_json_only(client, world):
    login(client, world, "boss")
    sent = client.post("/api/admin/accounts/create", content=b'{"name": "mallory"}', headers={"Content-Type": "text/plain"})
    assert sent.status_code == 415
    assert client.post("/api/admin/accounts/create", json={"name": "mallory"}).status_code == 200  # same origin, JSON


# ---- admin: stalled assignments -------------------------------------------------------------------------------


def _age(world, hours: float) -> None:
    with Session(world.store.engine) as session, session.begin():
        session.execute(update(TaskRow).values(created_at=datetime.now(timezone.utc) - timedelta(hours=hours)))


def test_stalled_assignments_go_back_to_the_pool_or_to_a_chosen_annotator(client, world):
    pick(client, world, 1, first_two(world, 0)[0], "bob")  # bob answered task 1: only his 2 and 3 are open
    assert client.post("/api/admin/reassign", json={"older_than_minutes": 60}, headers=ADMIN).json() == {"moves": []}
    _age(world, 2)
    moved = client.post("/api/admin/reassign", json={"older_than_minutes": 60, "annotator": "bob"}, headers=ADMIN).json()
    # the pool: active annotators without the task, shortest queue first -> carol
    assert [(m["task_id"], m["from_annotator"], m["to_annotator"]) for m in moved["moves"]] == [
        (2, "bob", "carol"), (3, "bob", "carol")]
    assert client.get("/api/queue", headers=bearer(world, "carol")).json()["task_ids"] == [2, 3]
    assert client.get("/api/queue", headers=bearer(world, "bob")).json()["task_ids"] == []
    assert answer(client, world, 2, {"choice": "a"}, "bob").status_code == 403
    pick(client, world, 2, first_two(world, 1)[0], "carol")
    # carol's moved assignment is fresh (its move time), so it is not stalled yet
    assert client.post("/api/admin/reassign", json={"older_than_minutes": 60, "annotator": "carol"},
                       headers=ADMIN).json() == {"moves": []}
    to_alice = client.post("/api/admin/reassign", json={"older_than_minutes": 0, "annotator": "carol", "to": "alice"},
                           headers=ADMIN).json()["moves"]
    assert to_alice == [{"task_id": 3, "from_annotator": "carol", "to_annotator": None}]  # alice has task 3 already
    to_bob = client.post("/api/admin/reassign", json={"older_than_minutes": 0, "annotator": "carol", "to": "bob"},
                         headers=ADMIN).json()["moves"]
    assert to_bob == [{"task_id": 3, "from_annotator": "carol", "to_annotator": "bob"}]
    with Session(world.store.engine) as session:
        assert [(m.task_id, m.to_annotator, m.by) for m in session.scalars(select(AssignmentMoveRow))] == [
            (2, "carol", "(admin token)"), (3, "carol", "(admin token)"), (3, "bob", "(admin token)")]
    bad = client.post("/api/admin/reassign", json={"older_than_minutes": 0, "to": "nobody"}, headers=ADMIN)
    assert (bad.status_code, bad.json()["field"]) == (422, "to")
    bad = client.post("/api/admin/reassign", json={"older_than_minutes": "soon"}, headers=ADMIN)
    assert (bad.status_code, bad.json()["field"]) == (422, "older_than_minutes")


def test_an_undone_answer_is_not_stalled_at_once(client, world):
    pick(client, world, 1, first_two(world, 0)[0], "alice")
    _age(world, 2)
    client.delete("/api/tasks/1/judgment", headers=bearer(world, "alice"))  # task 1 is queued again, from now
    moves = client.post("/api/admin/reassign", json={"older_than_minutes": 60, "annotator": "alice", "to": "carol"},
                        headers=ADMIN).json()["moves"]
    assert [m["task_id"] for m in moves] == [2, 3]


def test_deactivated_annotators_are_not_in_the_pool(client, world):
    _age(world, 2)
    client.post("/api/admin/accounts/deactivate", json={"name": "carol"}, headers=ADMIN)
    with pytest.raises(TaskError, match="deactivated"):
        world.tasks("pairwise", 1, 2, ["carol"])
    moves = client.post("/api/admin/reassign", json={"older_than_minutes": 60, "annotator": "alice"}, headers=ADMIN).json()
    assert {m["to_annotator"] for m in moves["moves"]} == {None}  # bob has them all, carol is off
    page = client.post("/api/admin/reassign", json={"older_than_minutes": 60, "to": "carol"}, headers=ADMIN)
    assert (page.status_code, page.json()["field"]) == (422, "to")


def test_a_store_from_before_these_features_opens_and_gets_them(world, tmp_path):
    """An existing feedback.db has none of the new tables: opening it adds them, nothing else changes."""
    from sqlalchemy import inspect, text

    new_tables = ("task_skips", "judgment_revisions", "guideline_views", "deactivated_accounts", "assignment_moves")
    with world.store.engine.begin() as connection:
        for table in new_tables:
            connection.execute(text(f"DROP TABLE {table}"))
    assert not set(new_tables) & set(inspect(world.store.engine).get_table_names())
    with TestClient(create_app(world.store.url, ADMIN_TOKEN), headers={"Origin": ORIGIN}) as client:
        assert set(new_tables) <= set(inspect(world.store.engine).get_table_names())
        assert client.post("/api/tasks/1/skip", json={"reason": "cant_judge"}, headers=bearer(world, "alice")).status_code == 201
        assert answer(client, world, 2, {"choice": "a"}).status_code == 201
