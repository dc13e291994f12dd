"""Issue 21's annotator and admin features in a real browser (Debian's chromium, headless, through
Playwright) against a real uvicorn server on 127.0.0.1: skip / flag a task, undo and change an
answer, and the admin's drill-down into a disagreement. Screenshots go to
test-artifacts/annotation-browser/ (ignored by git)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from annotation_support import ADMIN_TOKEN, build_shapes, build_world, thread_server
from modalign.feedback.schema import JudgmentRevisionRow, SkipRow
from modalign.feedback.server.tasks import load_task

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "annotation-browser"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (make browsers installs it)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return build_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def world(tmp_path, shapes_root):
    """alice and bob share pairwise tasks 1 and 2 (overlap 2)."""
    w = build_world(tmp_path, shapes_root)
    w.add_accounts("alice", "bob")
    w.tasks("pairwise", 2, 2, ["alice", "bob"], overlap=2)
    return w


def log_in(page, base: str, token: str, lands_on: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}{lands_on}")


def shown(world, task_id: int, who: str) -> tuple[int, ...]:
    with Session(world.store.engine) as session:
        return load_task(session, task_id, who).candidate_ids


def test_skip_and_flag_in_the_browser(world, browser):
    """Flag task 1 by keyboard (`s`, a reason, a note, Enter): it leaves the queue, the next task opens, and
    the flag is stored with who and when. Also: guidelines open only on the first task, and the theme toggle."""
    with thread_server(world.store.url) as base:
        context = browser.new_context(viewport={"width": 1100, "height": 900}, color_scheme="light")
        page = context.new_page()
        log_in(page, base, world.tokens["alice"], "/tasks/1")
        assert page.get_attribute("#guidelines", "open") is not None  # the first time: open
        assert not page.is_visible("#skip-form")
        page.keyboard.press("s")
        assert page.is_visible("#skip-form")
        page.check('input[name=reason][value="broken_media"]')
        page.fill("#note", "the image is all black")
        page.keyboard.press("Enter")  # in the note: submits the skip form, not the answer
        page.wait_for_url(f"{base}/tasks/2")
        assert page.inner_text("#progress") == "1 of 2 done"
        assert page.get_attribute("#guidelines", "open") is None  # seen: behind its summary now
        page.goto(f"{base}/tasks/1")
        assert page.is_visible("#set-aside") and not page.is_visible("#answer")

        background = "getComputedStyle(document.body).backgroundColor"
        assert page.evaluate(background) == "rgb(246, 246, 244)"
        page.click("#theme-toggle")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        assert page.evaluate(background) == "rgb(13, 17, 23)"
        page.reload()  # the choice is remembered
        assert page.evaluate(background) == "rgb(13, 17, 23)"
        page.screenshot(path=str(SHOTS / "flagged-dark.png"))
        dark_system = browser.new_context(color_scheme="dark").new_page()  # no choice made: follows the system
        dark_system.goto(f"{base}/login")
        assert dark_system.evaluate(background) == "rgb(13, 17, 23)"
        context.close()

    with Session(world.store.engine) as session:
        flags = session.scalars(select(SkipRow)).all()
    assert [(f.task_id, f.annotator, f.action, f.reason, f.note) for f in flags] == [
        (1, "alice", "flag", "broken_media", "the image is all black")]
    assert world.store.count_judgments() == 0 and world.store.set_aside_task_ids() == {1}


def test_undo_and_change_an_answer_in_the_browser(world, browser):
    """Answer task 1 (A, strong), undo it from task 2 with `u`, answer B instead, then change it to a tie from
    the recent-answers page: training reads the tie, the history keeps the two replaced versions."""
    a_first = shown(world, 1, "alice")
    with thread_server(world.store.url) as base:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        log_in(page, base, world.tokens["alice"], "/tasks/1")
        for key in ("1", "6", "Enter"):  # A is better, strongly
            page.keyboard.press(key)
        page.wait_for_url(f"{base}/tasks/2")
        [first] = world.store.judgments()
        assert (first.choice, first.strength, first.candidate_a) == ("a", "strong", a_first[0])
        assert page.is_visible("#undo-last")
        page.keyboard.press("u")
        page.wait_for_url(f"{base}/tasks/1")
        assert page.is_visible("#answer") and world.store.count_judgments() == 0
        for key in ("2", "Enter"):
            page.keyboard.press(key)
        page.wait_for_url(f"{base}/tasks/2")
        page.goto(f"{base}/recent")
        assert "B is better" in page.inner_text("#recent")
        page.click('a[href="/tasks/1?edit=1"]')
        page.wait_for_url(f"{base}/tasks/1?edit=1")
        assert page.is_checked('input[name=choice][value="b"]')  # the form comes filled in with the answer
        for key in ("3", "Enter"):  # tie
            page.keyboard.press(key)
        page.wait_for_url(f"{base}/recent?changed=1")
        assert page.is_visible("#changed") and "Tie" in page.inner_text("#recent")
        page.screenshot(path=str(SHOTS / "recent-answers.png"))
        page.close()

    [now] = world.store.judgments()
    assert (now.task_id, now.annotator, now.choice, now.strength) == (1, "alice", "tie", None)
    with Session(world.store.engine) as session:
        history = [(h.change, h.payload["choice"]) for h in session.scalars(select(JudgmentRevisionRow))]
    assert history == [("undo", "a"), ("edit", "b")]


def test_the_admin_drills_into_a_disagreement_in_the_browser(world, browser):
    """alice and bob split on task 1 and agree on task 2; the admin finds task 1 from the dashboard and
    sees each annotator's own judgment."""
    a, b = world.candidates[world.examples[0].id][:2]
    with thread_server(world.store.url) as base:
        for who, task_id, winner in (("alice", 1, a), ("bob", 1, b), ("alice", 2, None), ("bob", 2, None)):
            order = shown(world, task_id, who)
            choice = "ab"[order.index(winner)] if winner else "tie"
            response = httpx.post(f"{base}/api/tasks/{task_id}/judgment", json={"choice": choice, "reason": f"{who} says"},
                                  headers={"Authorization": f"Bearer {world.tokens[who]}"})
            assert response.status_code == 201, response.text
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        log_in(page, base, ADMIN_TOKEN, "/admin")
        page.click("#disagreements-link")
        page.wait_for_url(f"{base}/admin/disagreements")
        rows = page.locator("#disputed tr").all_inner_texts()[1:]  # the header first
        assert len(rows) == 1 and rows[0].startswith("task 1")
        page.click('a[href="/admin/tasks/1"]')
        page.wait_for_url(f"{base}/admin/tasks/1")
        votes = sorted(page.locator("tr.vote").all_inner_texts())
        assert len(votes) == 2
        assert votes[0].startswith("alice") and f"candidate {a}" in votes[0] and "alice says" in votes[0]
        assert votes[1].startswith("bob") and f"candidate {b}" in votes[1] and "bob says" in votes[1]
        page.screenshot(path=str(SHOTS / "admin-disagreement.png"))
        page.close()
