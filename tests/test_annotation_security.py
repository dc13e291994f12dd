"""Security of the annotation app, one test per hole reported in issue 21: cross-origin writes
(another port of the same host, `Origin: null`), logout that does not revoke, unthrottled login,
reserved account names, a one-character admin token, cacheable exports, 500s on huge ids and odd
digits, a critique's diff holding the write lock, and the A/B order fixed by the task.

Each test was run against the code before the fix (PYTHONPATH=/work/wt-before/src) and failed there;
new names are imported inside the tests so the module itself loads on that code.
"""

from __future__ import annotations

import difflib
import threading

import pytest
from fastapi.testclient import TestClient

from annotation_support import ADMIN_TOKEN, build_shapes, build_world
from modalign.feedback.server import create_app, create_tasks
from modalign.feedback.server.accounts import AccountError, create_account

HOST = "http://testserver"  # the TestClient's origin
OTHER_PORT = "http://testserver:8001"  # a page served from another port of the same host: same site, not same origin


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return build_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def world(tmp_path, shapes_root):
    """alice has pairwise tasks 1-2, a rating (3), a ranking (4) and a critique (5); bob has pairwise task 6."""
    w = build_world(tmp_path, shapes_root)
    w.add_accounts("alice", "bob")
    w.tasks("pairwise", 2, 2, ["alice"])
    w.tasks("rating", 1, 1, ["alice"], axes=["accuracy"], scale=5)
    w.tasks("ranking", 1, 3, ["alice"])
    w.tasks("critique", 1, 1, ["alice"])
    create_tasks(w.store, "pairwise", w.items(1, 2, start=3), annotators=["bob"])
    return w


def app_client(world, **kw) -> TestClient:
    return TestClient(create_app(world.store.url, ADMIN_TOKEN), raise_server_exceptions=False, **kw)


def logged_in(world, name: str = "alice") -> TestClient:
    """A browser session: logged in through the form from our own origin; keeps the cookie."""
    client = app_client(world)
    response = client.post("/login", data={"token": world.tokens[name]}, headers={"Origin": HOST},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    return client


# ---- CSRF ----------------------------------------------------------------------------------------


FORGED = [  # (id, path, request kwargs): what a page on another origin can make a browser send
    # <form enctype="text/plain" method="post">: name '{"choice":"a","reason":"' value '"}' -> a JSON body
    ("text-plain-form", "/api/tasks/1/judgment",
     {"content": b'{"choice":"a","reason":"="}', "headers": {"Content-Type": "text/plain", "Origin": OTHER_PORT}}),
    # fetch(url, {mode: "no-cors", method: "POST", credentials: "include", body: JSON.stringify(...)})
    ("no-cors-fetch", "/api/tasks/1/judgment",
     {"content": b'{"choice":"a"}', "headers": {"Content-Type": "text/plain;charset=UTF-8", "Origin": OTHER_PORT}}),
    ("json-from-other-port", "/api/tasks/1/judgment", {"json": {"choice": "a"}, "headers": {"Origin": OTHER_PORT}}),
    ("json-origin-null", "/api/tasks/1/judgment", {"json": {"choice": "a"}, "headers": {"Origin": "null"}}),
    ("form-from-other-port", "/tasks/1", {"data": {"choice": "a"}, "headers": {"Origin": OTHER_PORT}}),
    ("form-origin-null", "/tasks/1", {"data": {"choice": "a"}, "headers": {"Origin": "null"}}),
    ("form-no-origin", "/tasks/1", {"data": {"choice": "a"}}),
    ("form-cross-site-fetch-metadata", "/tasks/1",
     {"data": {"choice": "a"}, "headers": {"Origin": HOST, "Sec-Fetch-Site": "same-site"}}),
]


@pytest.mark.parametrize("case", FORGED, ids=[case[0] for case in FORGED])
def test_cross_origin_writes_with_the_session_cookie_are_refused(world, case):
    _, path, kwargs = case
    with logged_in(world) as browser:
        response = browser.post(path, follow_redirects=False, **kwargs)
        assert response.status_code in (403, 415), response.text
        assert world.store.count_judgments() == 0
        # the same session, from our own page, is accepted: the refusal above is the origin's doing
        ok = browser.post("/api/tasks/1/judgment", json={"choice": "a"}, headers={"Origin": HOST})
        assert ok.status_code == 201, ok.text
    assert world.store.count_judgments() == 1


@pytest.mark.parametrize("origin", [OTHER_PORT, "null", None])
def test_login_and_logout_need_our_origin(world, origin):
    headers = {"Origin": origin} if origin else {}
    with app_client(world) as client:
        login = client.post("/login", data={"token": world.tokens["alice"]}, headers=headers, follow_redirects=False)
        assert login.status_code == 403 and "set-cookie" not in login.headers
    with logged_in(world) as browser:
        assert browser.post("/logout", headers=headers, follow_redirects=False).status_code == 403
        assert browser.get("/api/next").status_code == 200  # a forged logout ended nothing


# ---- sessions ------------------------------------------------------------------------------------


def test_logout_revokes_the_session_on_the_server(world):
    with logged_in(world) as browser:
        [cookie] = list(browser.cookies.jar)
        assert cookie.value != world.tokens["alice"]  # the cookie is a session id, not the token
        assert browser.post("/logout", headers={"Origin": HOST}, follow_redirects=False).status_code == 303
    with app_client(world) as thief:  # someone kept a copy of the cookie
        thief.cookies.set(cookie.name, cookie.value)
        assert thief.get("/api/next").status_code == 401
        assert thief.post("/api/tasks/1/judgment", json={"choice": "a"}, headers={"Origin": HOST}).status_code == 401
    assert world.store.count_judgments() == 0


def test_sessions_expire_and_a_token_reset_ends_them(world, capsys):
    from datetime import timedelta

    from modalign.feedback.server.accounts import Account
    from modalign.feedback.server.cli_glue import reset_token_command
    from modalign.feedback.server.sessions import open_session, session_account

    expired = open_session(world.store, Account("alice"), ttl=timedelta(seconds=-1))
    assert session_account(world.store, expired) is None
    with logged_in(world) as browser:
        assert browser.get("/api/next").status_code == 200
        token = reset_token_command(str(world.store.url), "alice")  # `modalign reset-token`
        assert token in capsys.readouterr().out
        assert browser.get("/api/next").status_code == 401  # its sessions ended with the old token
    with app_client(world) as client:
        assert client.get("/api/next", headers={"Authorization": f"Bearer {world.tokens['alice']}"}).status_code == 401
        assert client.get("/api/next", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with pytest.raises(SystemExit, match="no account named 'nobody'"):
        reset_token_command(str(world.store.url), "nobody")


def test_reset_token_is_a_cli_command(world):
    from typer.testing import CliRunner

    from modalign.cli import app

    result = CliRunner().invoke(app, ["reset-token", "--store", world.store.url, "--name", "bob"])
    assert result.exit_code == 0, result.output
    fresh = result.output.strip().splitlines()[-1]
    with app_client(world) as client:
        assert client.get("/api/next", headers={"Authorization": f"Bearer {fresh}"}).json()["task"]["id"] == 6


def test_wrong_logins_are_throttled(world):
    with app_client(world) as client:
        codes = [client.post("/login", data={"token": f"guess-{i}"}, headers={"Origin": HOST}).status_code
                 for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        # while throttled even the right token waits: a guesser cannot tell a hit
        right = client.post("/login", data={"token": world.tokens["alice"]}, headers={"Origin": HOST},
                            follow_redirects=False)
        assert right.status_code == 429 and "set-cookie" not in right.headers


def test_throttle_forgets_failures_after_its_window():
    from modalign.feedback.server.errors import TooManyRequests
    from modalign.feedback.server.throttle import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(max_failures=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("1.2.3.4")
        throttle.failed("1.2.3.4")
    with pytest.raises(TooManyRequests):
        throttle.check("1.2.3.4")
    throttle.check("5.6.7.8")  # another client is not held up
    now[0] = 61.0
    throttle.check("1.2.3.4")


# ---- accounts and the admin token ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["(admin token)", "(system)"])
def test_reserved_account_names_are_refused(world, name):
    with pytest.raises(AccountError, match="reserved"):
        create_account(world.store, name, "annotator")


def test_a_short_admin_token_is_refused(world, monkeypatch):
    from modalign.feedback.server.cli_glue import annotate_command

    with pytest.raises(ValueError, match="at least 16"):
        create_app(world.store.url, "x")
    monkeypatch.setenv("MODALIGN_ADMIN_TOKEN", "short")
    with pytest.raises(SystemExit, match="MODALIGN_ADMIN_TOKEN"):
        annotate_command(str(world.store.url), "127.0.0.1", 1)


def test_exports_are_not_cached(world):
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with app_client(world) as client:
        for name in ("trl.jsonl", "judgments.jsonl", "preferences.parquet"):
            response = client.get(f"/admin/export/{name}", headers=admin)
            assert response.status_code == 200 and response.headers["cache-control"] == "no-store"


# ---- malformed ids and values: 4xx, never 500 ------------------------------------------------------

BIG = 2 ** 63
MALFORMED = [  # (id, method, path, request kwargs, status, field)
    ("api-task-2^63", "get", f"/api/tasks/{BIG}", {}, 422, "task_id"),
    ("api-task-2^64", "get", f"/api/tasks/{2 ** 64}", {}, 422, "task_id"),
    ("api-judgment-2^63", "post", f"/api/tasks/{BIG}/judgment", {"json": {"choice": "a"}}, 422, "task_id"),
    ("page-task-2^63", "get", f"/tasks/{BIG}", {}, 422, "task_id"),
    ("form-task-2^63", "post", f"/tasks/{BIG}", {"data": {"choice": "a"}}, 422, "task_id"),
    ("media-task-2^63", "get", f"/tasks/{BIG}/media/0", {}, 422, "task_id"),
    ("task-id-superscript", "get", "/api/tasks/²", {}, 422, "task_id"),
    ("form-rating-superscript", "post", "/tasks/3", {"data": {"rating.accuracy": "²"}}, 422, "ratings.accuracy"),
    ("form-rating-5000-digits", "post", "/tasks/3", {"data": {"rating.accuracy": "9" * 5000}}, 422, "ratings.accuracy"),
    ("form-rating-arabic-digit", "post", "/tasks/3", {"data": {"rating.accuracy": "٣"}}, 422, "ratings.accuracy"),
    ("form-ranking-5000-digits", "post", "/tasks/4", {"data": {"ranking": "9" * 5000}}, 422, "ranking"),
    ("json-rating-5000-digits", "post", "/api/tasks/3/judgment",
     {"content": b'{"ratings": {"accuracy": ' + b"9" * 5000 + b"}}", "headers": {"Content-Type": "application/json"}},
     400, "body"),
    ("json-nested-too-deep", "post", "/api/tasks/3/judgment",
     {"content": b"[" * 20_000 + b"]" * 20_000, "headers": {"Content-Type": "application/json"}}, 400, "body"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_ids_and_values_get_4xx_naming_the_field(world, case):
    _, method, path, kwargs, status, field = case
    with logged_in(world) as browser:
        headers = {"Origin": HOST, "Authorization": f"Bearer {world.tokens['alice']}", **kwargs.pop("headers", {})}
        response = getattr(browser, method)(path, headers=headers | {"Accept": "application/json"}, **kwargs)
    assert response.status_code == status, response.text
    if response.headers["content-type"].startswith("application/json"):
        assert response.json()["field"] == field
    else:  # a form comes back as the task page with the message
        assert f"(field: {field})" in response.text
    assert world.store.count_judgments() == 0


# ---- a slow critique does not hold up other saves ----------------------------------------------------


def test_a_critique_diff_does_not_hold_the_write_lock(world, monkeypatch):
    """The critique's diff is parked mid-way; bob's unrelated save must still go through meanwhile."""
    from modalign.feedback.server import answers

    inside, release = threading.Event(), threading.Event()
    real = answers.corrected_spans

    def parked_diff(original, corrected):
        inside.set()
        assert release.wait(30)
        return real(original, corrected)

    monkeypatch.setattr(answers, "corrected_spans", parked_diff)
    results = {}
    with app_client(world) as client:
        def save(name, task_id, body):
            results[name] = client.post(f"/api/tasks/{task_id}/judgment", json=body,
                                        headers={"Authorization": f"Bearer {world.tokens[name]}"}).status_code

        critique = threading.Thread(target=save, args=("alice", 5, {"corrected_text": "all new words"}))
        critique.start()
        try:
            assert inside.wait(30)
            other = threading.Thread(target=save, args=("bob", 6, {"choice": "a"}))
            other.start()
            other.join(timeout=20)  # on the old code it waits for the parked diff, i.e. forever
            assert not other.is_alive() and results["bob"] == 201 and critique.is_alive()
        finally:
            release.set()
            critique.join(timeout=30)
    assert results == {"bob": 201, "alice": 201} and world.store.count_judgments() == 2


def test_the_critique_diff_is_bounded_and_exact(monkeypatch):
    """A full rewrite of a 600-word answer and a crafted repetitive one: no diff over the budget is
    ever run (difflib is cubic on such input), and the spans still rebuild the correction."""
    from modalign.feedback.server import answers

    sizes = []

    class Counting(difflib.SequenceMatcher):
        def __init__(self, isjunk, a, b, autojunk=True):
            sizes.append(len(a) * len(b))
            super().__init__(isjunk, a, b, autojunk=autojunk)

    monkeypatch.setattr(answers.difflib, "SequenceMatcher", Counting)
    words = "the red blue circle square left right beep beeps two one large small".split()
    rewrite = (" ".join(words[i % len(words)] for i in range(600)), " ".join(words[(i * 7) % 13] for i in range(600)))
    crafted = ("a " * 3000, "a b " * 1500)
    sentences = (". ".join(["x y z w"] * 400), ". ".join(["x q z w"] * 400))
    for original, corrected in (rewrite, crafted, sentences):
        spans = answers.corrected_spans(original, corrected)
        assert sizes and max(sizes) <= 40_000  # checked after each: unbounded, the crafted one runs for minutes
        assert answers.apply_spans(original, spans) == corrected
    # a small edit inside a long answer is still a word-level span
    long_text = ". ".join(f"sentence {i} has a red circle" for i in range(300))
    assert answers.corrected_spans(long_text, long_text.replace("sentence 150 has a red", "sentence 150 has a blue")) \
        == ((long_text.index("red circle", long_text.index("sentence 150")),
             long_text.index("red circle", long_text.index("sentence 150")) + 3, "blue"),)


# ---- A/B order -------------------------------------------------------------------------------------


def test_each_assignment_has_its_own_stored_random_order(tmp_path, shapes_root):
    world = build_world(tmp_path, shapes_root)
    world.add_accounts("alice", "bob")
    ids = world.tasks("pairwise", 20, 2, ["alice", "bob"], overlap=2)
    bearer = {name: {"Authorization": f"Bearer {world.tokens[name]}"} for name in ("alice", "bob")}
    with app_client(world) as client:
        def order(task_id, name):
            return [c["id"] for c in client.get(f"/api/tasks/{task_id}", headers=bearer[name]).json()["candidates"]]

        firsts = {name: [order(t, name)[0] == world.items(20, 2)[t - ids[0]][1][0] for t in ids] for name in bearer}
        assert 0 < sum(firsts["alice"]) < 20 and firsts["alice"] != firsts["bob"]  # not the task's order, not shared
        assert all(order(t, "alice") == order(t, "alice") for t in ids[:5])  # stored, not drawn per request
        # "a" means the candidate this annotator was shown first
        shown = order(ids[0], "bob")
        assert client.post(f"/api/tasks/{ids[0]}/judgment", json={"choice": "a"}, headers=bearer["bob"]).status_code == 201
    [judgment] = world.store.judgments()
    assert (judgment.candidate_a, judgment.candidate_b) == tuple(shown) and judgment.choice == "a"
