"""The annotation app's API, forms, access rules and dashboard, in-process (TestClient) on a
ShapesWorld store. Every refused request must leave the store exactly as it was."""

from __future__ import annotations

import io
import math
import random

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from annotation_support import ADMIN_TOKEN, build_shapes, build_world, free_port, thread_server
from modalign.data.records import Completion, Example, MediaRef, assistant_turn, user_turn
from modalign.feedback.judgments import PairwiseJudgment, RankingJudgment, RatingJudgment
from modalign.feedback.schema import AnnotatorRow, TaskRow
from modalign.feedback.server import create_app, create_tasks, reset_token
from modalign.feedback.server.accounts import AccountError, authenticate, create_account
from modalign.feedback.server.answers import apply_spans, corrected_spans
from modalign.feedback.server.stats import agreement_by_kind
from modalign.feedback.server.tasks import TaskError, open_task_ids


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return build_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def world(tmp_path, shapes_root):
    """alice and bob share two pairwise tasks (1, 2); alice alone has a ranking (3), a rating (4) and a
    critique (5); carol has task 6; boss is an admin."""
    w = build_world(tmp_path, shapes_root)
    w.add_accounts("alice", "bob", "carol")
    w.add_accounts("boss", role="admin")
    w.tasks("pairwise", 2, 2, ["alice", "bob"], overlap=2)
    w.tasks("ranking", 1, 3, ["alice"])
    w.tasks("rating", 1, 1, ["alice"], axes=["accuracy", "fluency"], scale=5)
    w.tasks("critique", 1, 1, ["alice"])
    create_tasks(w.store, "pairwise", w.items(1, 2, start=5), annotators=["carol"])
    return w


ORIGIN = "http://testserver"  # the TestClient's own origin, as a browser on our pages sends it


@pytest.fixture
def client(world):
    with TestClient(create_app(world.store.url, ADMIN_TOKEN), headers={"Origin": ORIGIN}) as client:
        yield client


def bearer(world, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.tokens[name]}"}


def shown(client, world, task_id: int, who: str = "alice") -> list[int]:
    """The task's candidate ids in the order `who` is shown them (each assignment has its own)."""
    task = client.get(f"/api/tasks/{task_id}", headers=bearer(world, who)).json()
    return [c["id"] for c in task["candidates"]]


def side_of(client, world, task_id: int, who: str, candidate: int) -> str:
    """The pairwise choice ("a" / "b") that picks `candidate` as `who` sees the task."""
    return "ab"[shown(client, world, task_id, who).index(candidate)]


def post(client, world, task_id: int, body, who: str = "alice"):
    return client.post(f"/api/tasks/{task_id}/judgment", json=body, headers=bearer(world, who))


# ---- the happy path -----------------------------------------------------------------------------


def test_every_kind_is_stored_with_its_content(client, world):
    first = client.get("/api/next", headers=bearer(world, "alice")).json()
    assert first["progress"] == {"done": 0, "total": 5}
    assert first["task"]["id"] == 1 and [c["label"] for c in first["task"]["candidates"]] == ["A", "B"]
    assert "sft-v0" not in str(first)  # labels stay blind to the policy
    a, b, c = world.candidates[world.examples[0].id]
    original = client.get("/api/tasks/5", headers=bearer(world, "alice")).json()["candidates"][0]["text"]
    corrected = original.replace(", a large yellow triangle in the middle", "").replace("high", "low")
    bodies = {1: {"choice": "b", "reason": "A misses the beep"}, 2: {"choice": "tie"}, 3: {"ranking": [c, a, b]},
              4: {"ratings": {"accuracy": 2, "fluency": 5}}, 5: {"corrected_text": corrected, "critique": "wrong pitch"}}
    for task_id, body in bodies.items():
        response = post(client, world, task_id, body)
        assert response.status_code == 201, response.text
    stored = {j.task_id: j for j in world.store.judgments()}
    assert stored[1].choice == "b" and stored[1].reason == "A misses the beep" and stored[1].guideline_version == "pairwise-v1"
    assert stored[3].ranking == (c, a, b) and stored[3].guideline_version == "ranking-v1"
    assert dict(stored[4].ratings) == {"accuracy": 2, "fluency": 5} and stored[4].candidate == a
    assert stored[5].corrected_text == corrected and stored[5].critique == "wrong pitch"
    assert apply_spans(original, stored[5].corrected_spans) == corrected
    assert (original.index(", a large"), original.index(", a large") + 39, "") in stored[5].corrected_spans
    assert all(j.annotator == "alice" for j in stored.values())
    assert client.get("/api/next", headers=bearer(world, "alice")).json() == {"task": None, "progress": {"done": 5, "total": 5}}


def test_a_second_answer_is_refused_and_the_first_kept(client, world):
    assert post(client, world, 1, {"choice": "a"}).status_code == 201
    again = post(client, world, 1, {"choice": "b"})
    assert again.status_code == 409 and again.json()["field"] == "task_id"
    assert [j.choice for j in world.store.judgments()] == ["a"]


# ---- bad input: the right 4xx, naming the field, and nothing stored ---------------------------------

def _chunks():
    for _ in range(20):
        yield b"x" * 8192


BAD_REQUESTS = [  # (id, task, headers: who / None / "wrong", request kwargs, status, field)
    ("no-token", 1, None, {"json": {"choice": "a"}}, 401, "token"),
    ("wrong-token", 1, "wrong", {"json": {"choice": "a"}}, 401, "token"),
    ("unknown-task", 999, "alice", {"json": {"choice": "a"}}, 404, "task_id"),
    ("task-id-not-a-number", "x", "alice", {"json": {"choice": "a"}}, 422, "task_id"),
    ("another-annotators-task", 6, "alice", {"json": {"choice": "a"}}, 403, "task_id"),
    ("admin-not-assigned", 1, "boss", {"json": {"choice": "a"}}, 403, "task_id"),
    ("not-json", 1, "alice", {"content": b"{choice: a", "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("empty-body", 1, "alice", {"content": b"", "headers": {"Content-Type": "application/json"}}, 400, "body"),
    ("not-an-object", 1, "alice", {"json": ["a"]}, 422, "body"),
    ("bad-choice", 1, "alice", {"json": {"choice": "c"}}, 422, "choice"),
    ("unknown-field", 1, "alice", {"json": {"choice": "a", "score": 1}}, 422, "score"),
    ("reason-not-text", 1, "alice", {"json": {"choice": "a", "reason": 5}}, 422, "reason"),
    ("ranking-incomplete", 3, "alice", {"json": {"ranking": [1, 2]}}, 422, "ranking"),
    ("ranking-not-ids", 3, "alice", {"json": {"ranking": "1,2,3"}}, 422, "ranking"),
    ("rating-out-of-range", 4, "alice", {"json": {"ratings": {"accuracy": 6, "fluency": 1}}}, 422, "ratings.accuracy"),
    ("rating-missing-axis", 4, "alice", {"json": {"ratings": {"accuracy": 3}}}, 422, "ratings.fluency"),
    ("rating-unknown-axis", 4, "alice", {"json": {"ratings": {"accuracy": 3, "fluency": 3, "tone": 2}}}, 422, "ratings.tone"),
    ("rating-not-int", 4, "alice", {"json": {"ratings": {"accuracy": 2.5, "fluency": 3}}}, 422, "ratings.accuracy"),
    ("critique-without-text", 5, "alice", {"json": {"critique": "bad"}}, 422, "corrected_text"),
    ("stale-guidelines", 1, "alice", {"json": {"choice": "a", "guideline_version": "pairwise-v0"}}, 409, "guideline_version"),
    ("oversized", 1, "alice", {"json": {"choice": "a", "reason": "x" * 70_000}}, 413, "body"),
    ("oversized-chunked", 1, "alice", {"content": _chunks}, 413, "body"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_are_refused_and_store_nothing(client, world, case):
    _, task_id, who, kwargs, status, field = case
    headers = {} if who is None else {"Authorization": "Bearer nope"} if who == "wrong" else bearer(world, who)
    kwargs = {k: v() if callable(v) else v for k, v in kwargs.items()}
    before = world.store.count_judgments()
    response = client.post(f"/api/tasks/{task_id}/judgment", headers=headers | kwargs.pop("headers", {}), **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and response.json()["detail"]
    assert world.store.count_judgments() == before
    assert open_task_ids(world.store, "alice") == [1, 2, 3, 4, 5]


def test_over_a_real_socket_the_limits_hold(world):
    with thread_server(world.store.url) as base:
        big = httpx.post(f"{base}/api/tasks/1/judgment", content=b"{" + b" " * 70_000 + b"}",
                         headers={**bearer(world, "alice"), "Content-Type": "application/json"})
        anonymous = httpx.post(f"{base}/api/tasks/1/judgment", json={"choice": "a"})
        good = httpx.post(f"{base}/api/tasks/1/judgment", json={"choice": "a"}, headers=bearer(world, "alice"))
    assert (big.status_code, anonymous.status_code, good.status_code) == (413, 401, 201)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert world.store.count_judgments() == 1


# ---- who sees what ---------------------------------------------------------------------------------


def test_annotators_see_only_their_tasks_and_never_others_answers(client, world):
    assert post(client, world, 1, {"choice": "b", "reason": "alice-secret-reason"}).status_code == 201
    bob = client.get("/api/queue", headers=bearer(world, "bob")).json()
    assert bob == {"task_ids": [1, 2], "progress": {"done": 0, "total": 2}}
    seen = client.get("/api/tasks/1", headers=bearer(world, "bob"))
    assert seen.status_code == 200 and seen.json()["status"] == "queued"
    page = client.get("/tasks/1", headers=bearer(world, "bob"))
    assert "alice-secret-reason" not in seen.text + page.text
    assert client.get("/api/tasks/3", headers=bearer(world, "bob")).status_code == 403
    assert client.get("/tasks/3", headers=bearer(world, "bob")).status_code == 403


def test_media_route_serves_only_the_examples_files(client, world, tmp_path):
    image = client.get("/tasks/1/media/0", headers=bearer(world, "alice"))
    example = world.examples[0]
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (world.root / example.media[0].path).read_bytes()
    audio = client.get("/tasks/1/media/1", headers=bearer(world, "alice"))
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav" and audio.content[:4] == b"RIFF"
    assert client.get("/tasks/1/media/2", headers=bearer(world, "alice")).status_code == 404
    assert client.get("/tasks/6/media/0", headers=bearer(world, "alice")).status_code == 403
    assert client.get("/tasks/1/media/0").status_code == 401


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_media_route_refuses_paths_out_of_the_root(client, world, tmp_path, how):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret bytes")
    path = "../secret.png"
    if how == "symlink":
        (world.root / "media" / "link.png").symlink_to(secret)
        path = "media/link.png"
    evil = Example("evil", (user_turn("what is shown?", 1), assistant_turn("x")), media=(MediaRef("image", path),))
    world.store.add_examples([evil], root=world.root)
    ids = world.store.add_candidates([Completion("evil", "one"), Completion("evil", "two")])
    [task_id] = create_tasks(world.store, "pairwise", [("evil", ids)], annotators=["alice"])
    response = client.get(f"/tasks/{task_id}/media/0", headers=bearer(world, "alice"))
    assert response.status_code == 404 and b"top secret" not in response.content
    assert str(tmp_path) not in response.text  # no server paths in the answer


# ---- HTML forms go through the same checks ---------------------------------------------------------------


def test_login_sets_an_httponly_cookie_and_forms_validate(client, world):
    assert client.post("/login", data={"token": "nope"}).status_code == 401
    assert client.get("/next", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
    login = client.post("/login", data={"token": world.tokens["alice"]}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/next"
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/next")  # the client keeps the cookie
    assert page.url.path == "/tasks/1" and "0 of 5 done" in page.text and "pairwise-v1" in page.text
    assert '<audio controls' in page.text and 'src="/tasks/1/media/0"' in page.text
    assert "nonce-" in page.headers["content-security-policy"]

    bad = client.post("/tasks/1", data={"choice": "c", "guideline_version": "pairwise-v1"})
    assert bad.status_code == 422 and "choice" in bad.text and world.store.count_judgments() == 0
    forged = client.post("/tasks/1", data={"choice": "a"}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and world.store.count_judgments() == 0
    unranked = client.post("/tasks/3", data={"ranking": "1,4"})
    assert unranked.status_code == 422 and "ranking" in unranked.text

    done = client.post("/tasks/1", data={"choice": "a", "reason": "", "guideline_version": "pairwise-v1"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/next"
    first, second, third = shown(client, world, 3)  # the answer numbers typed refer to the order shown
    assert client.post("/tasks/3", data={"ranking": "3, 1, 2"}, follow_redirects=False).status_code == 303
    assert client.post("/tasks/4", data={"rating.accuracy": "4", "rating.fluency": "2"},
                       follow_redirects=False).status_code == 303
    stored = {j.task_id: j for j in world.store.judgments()}
    assert stored[1].choice == "a" and stored[3].ranking == (third, first, second) and dict(stored[4].ratings) == {"accuracy": 4, "fluency": 2}
    assert 'id="answered"' in client.get("/tasks/1").text and 'id="answer"' not in client.get("/tasks/1").text


# ---- admin --------------------------------------------------------------------------------------------


def test_admin_pages_need_an_admin(client, world):
    assert client.get("/admin", headers=bearer(world, "alice")).status_code == 403
    assert client.get("/api/admin/stats").status_code == 401
    assert client.get("/admin/export/trl.jsonl", headers=bearer(world, "bob")).status_code == 403
    assert client.get("/admin", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/admin", headers=bearer(world, "boss")).status_code == 200
    assert client.get("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


def test_dashboard_shows_progress_agreement_and_exports(client, world):
    first, second = world.candidates[world.examples[0].id][0], world.candidates[world.examples[1].id][1]
    for who in ("alice", "bob"):  # both prefer the first candidate in task 1 (example 0), the second in task 2
        assert post(client, world, 1, {"choice": side_of(client, world, 1, who, first)}, who).status_code == 201
        assert post(client, world, 2, {"choice": side_of(client, world, 2, who, second)}, who).status_code == 201
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    stats = client.get("/api/admin/stats", headers=admin).json()
    assert stats["tasks_done"] == 2 and stats["tasks_total"] == 6 and stats["judgments"] == 4
    assert {r["name"]: (r["done"], r["assigned"]) for r in stats["annotators"]} == {
        "alice": (2, 5), "bob": (2, 2), "carol": (0, 1)}
    [pairwise] = stats["agreement"]
    assert pairwise["kind"] == "pairwise" and pairwise["units"] == 2 and pairwise["raters"] == 2
    assert pairwise["alpha"] == pytest.approx(1.0) and pairwise["kappa"] == pytest.approx(1.0)
    assert pairwise["with_majority"] == {"alice": 1.0, "bob": 1.0}
    page = client.get("/admin", headers=admin).text
    assert "Krippendorff" in page and "/admin/export/trl.jsonl" in page and "/admin/export/preferences.parquet" in page

    trl = client.get("/admin/export/trl.jsonl", headers=admin)
    rows = [line for line in trl.text.splitlines() if line]
    assert trl.status_code == 200 and len(rows) == 2 and '"chosen"' in rows[0] and '"images"' in rows[0]
    assert len(client.get("/admin/export/judgments.jsonl", headers=admin).text.splitlines()) == 4
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(client.get("/admin/export/preferences.parquet", headers=admin).content))
    assert table.num_rows == 2 and {"prompt", "chosen", "rejected", "images", "audios"} <= set(table.column_names)


def test_agreement_on_hand_computed_labels():
    """alice a,a,b,b vs bob a,b,b,b: p_o = 3/4, p_e = (2*1 + 2*3)/16 = 1/2, so kappa = 1/2."""
    def pair(who, example, choice):
        return PairwiseJudgment(example_id=example, annotator=who, candidate_a=1, candidate_b=2, choice=choice)

    judgments = [pair("alice", f"e{i}", c) for i, c in enumerate("aabb")]
    judgments += [pair("bob", f"e{i}", c) for i, c in enumerate("abbb")]
    judgments += [RankingJudgment(example_id="e0", annotator=w, ranking=r) for w, r in (("alice", (3, 4, 5)), ("bob", (3, 5, 4)))]
    judgments += [RatingJudgment(example_id="e0", annotator="solo", candidate=1, ratings={"accuracy": 3})]
    by_kind = {row.kind: row for row in agreement_by_kind(judgments)}
    assert by_kind["pairwise"].kappa == pytest.approx(0.5) and by_kind["pairwise"].with_majority == {"alice": 0.75, "bob": 0.75}
    assert by_kind["ranking"].units == 3 and by_kind["ranking"].with_majority == {"alice": 2 / 3, "bob": 2 / 3}
    assert by_kind["rating"].units == 0 and math.isnan(by_kind["rating"].alpha)


# ---- tasks and accounts ---------------------------------------------------------------------------------


def test_create_tasks_balances_queues_and_refuses_bad_items(world):
    world.add_accounts("a1", "a2", "a3")
    ids = world.tasks("pairwise", 10, 2, ["a1", "a2", "a3"], overlap=2)
    queues = {name: open_task_ids(world.store, name) for name in ("a1", "a2", "a3")}
    assert sorted(len(q) for q in queues.values()) == [6, 7, 7]
    assert all(sum(t in q for q in queues.values()) == 2 for t in ids)
    other = world.candidates[world.examples[1].id][0]
    bad_calls = [
        dict(kind="pairwise", items=world.items(1, 2), overlap=4, annotators=["a1", "a2", "a3"]),
        dict(kind="pairwise", items=world.items(1, 3), annotators=["a1"]),
        dict(kind="ranking", items=[(world.examples[0].id, (world.candidates[world.examples[0].id][0], other))], annotators=["a1"]),
        dict(kind="rating", items=world.items(1, 1), annotators=["nobody"]),
        dict(kind="rating", items=world.items(1, 1), annotators=["a1"], scale=10),
        dict(kind="essay", items=world.items(1, 1), annotators=["a1"]),
    ]
    with Session(world.store.engine) as session:
        before = session.query(TaskRow).count()
    for call in bad_calls:
        with pytest.raises(TaskError):
            create_tasks(world.store, **call)
    with Session(world.store.engine) as session:
        assert session.query(TaskRow).count() == before


def test_accounts_store_only_token_hashes(world, tmp_path):
    token = world.tokens["alice"]
    with Session(world.store.engine) as session:
        assert session.get(AnnotatorRow, "alice").token_hash.startswith("sha256$")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.db*"))
    assert token.encode() not in raw
    assert authenticate(world.store, token).name == "alice"
    fresh = reset_token(world.store, "alice")
    assert authenticate(world.store, token) is None and authenticate(world.store, fresh).name == "alice"
    for name, role in (("alice", "annotator"), (" spaced", "annotator"), ("dora", "owner")):
        with pytest.raises(AccountError):
            create_account(world.store, name, role)


# ---- corrected spans -----------------------------------------------------------------------------------


def test_corrected_spans_are_word_edits_that_rebuild_the_correction():
    original = "a small red circle on the left. two low beeps."
    assert corrected_spans(original, "a small blue circle on the left. two low beeps.") == ((8, 11, "blue"),)
    assert corrected_spans(original, original) == ()
    rng = random.Random(0)
    words = "a the red blue circle square left right beep beeps . , two one".split()
    for _ in range(200):
        old = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        new = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert apply_spans(old, corrected_spans(old, new)) == new


# ---- CLI glue ------------------------------------------------------------------------------------------


def test_cli_glue_creates_accounts_and_refuses_a_missing_store(world, tmp_path, capsys):
    from modalign.feedback.server.cli_glue import add_annotator_command, annotate_command

    db = str(tmp_path / "feedback.db")
    token = add_annotator_command(db, "dora", "annotator")
    assert token in capsys.readouterr().out and authenticate(world.store, token).name == "dora"
    with pytest.raises(SystemExit, match="already exists"):
        add_annotator_command(db, "dora", "annotator")
    with pytest.raises(FileNotFoundError, match="no feedback store"):
        annotate_command(str(tmp_path / "missing.db"), "127.0.0.1", free_port())
