"""A person's session in a real browser (Debian's chromium, headless) against a real uvicorn server:
log in, then label a pairwise task, a ranking and a rating by keyboard alone, and correct an answer.
Screenshots go to test-artifacts/annotation-browser/ (ignored by git)."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from annotation_support import build_world, free_port, thread_server
from modalign.feedback.server.answers import apply_spans
from modalign.feedback.server.tasks import load_task

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "annotation-browser"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (make browsers installs it)")


def test_label_every_kind_in_the_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    world = build_world(tmp_path)
    world.add_accounts("alice")
    for kind, size in (("pairwise", 2), ("ranking", 3), ("rating", 1), ("critique", 1)):
        world.tasks(kind, 1, size, ["alice"])
    SHOTS.mkdir(parents=True, exist_ok=True)
    original = world.examples[0].answer
    corrected = original.replace("green", "blue")

    with thread_server(world.store.url) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            _label_everything(page, base, world.tokens["alice"], corrected)
        finally:
            browser.close()

    stored = {j.task_id: j for j in world.store.judgments()}
    a = world.candidates[world.examples[0].id][0]
    pair, (first, second, third) = shown(world, 1), shown(world, 2)  # each assignment has its own order
    assert stored[1].choice == "b" and (stored[1].candidate_a, stored[1].candidate_b) == pair
    assert stored[2].ranking == (third, first, second)
    assert dict(stored[3].ratings) == {"accuracy": 4, "fluency": 5, "safety": 3} and stored[3].candidate == a
    assert stored[4].corrected_text == corrected and apply_spans(original, stored[4].corrected_spans) == corrected
    assert len(stored[4].corrected_spans) == 1 and stored[4].corrected_spans[0][2] == "blue"
    assert [stored[t].guideline_version for t in (1, 2, 3, 4)] == ["pairwise-v1", "ranking-v1", "rating-v1", "critique-v1"]
    assert all(j.annotator == "alice" for j in stored.values())


def shown(world, task_id: int, who: str = "alice") -> tuple[int, ...]:
    with Session(world.store.engine) as session:
        return load_task(session, task_id, who).candidate_ids


ATTACK = """<!doctype html><title>cats</title>
<form id="f" method="post" enctype="text/plain" action="{base}/api/tasks/1/judgment">
<input name='{{"choice":"a","reason":"' value='"}}'></form>
<form id="g" method="post" action="{base}/tasks/1"><input name="choice" value="b"></form>
<script>
fetch("{base}/api/tasks/1/judgment", {{method: "POST", mode: "no-cors", credentials: "include",
  body: JSON.stringify({{choice: "tie"}})}}).finally(() => {{ document.title = "fetched"; }});
</script>"""


def test_a_page_on_another_port_cannot_answer_for_a_logged_in_annotator(tmp_path):
    """A real logged-in chromium opens a page served from another port of 127.0.0.1 (same site, other
    origin) that posts a text/plain form, a plain form and a no-cors fetch at the app: nothing is stored."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    world = build_world(tmp_path)
    world.add_accounts("alice")
    world.tasks("pairwise", 1, 2, ["alice"])
    evil_port = free_port()
    with thread_server(world.store.url) as base, _static_page(ATTACK.format(base=base), evil_port), \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{base}/login")
            page.fill("#token", world.tokens["alice"])
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/tasks/1")
            attacker = context.new_page()  # same browser profile: the session cookie goes along
            attacker.goto(f"http://127.0.0.1:{evil_port}/")
            attacker.wait_for_function("document.title === 'fetched'")
            for form in ("#f", "#g"):
                attacker.goto(f"http://127.0.0.1:{evil_port}/")
                with attacker.expect_navigation():
                    attacker.eval_on_selector(form, "f => f.submit()")
            page.reload()  # the session still works from our own page, and the task is still open
            assert page.url == f"{base}/tasks/1" and page.is_visible("#answer")
        finally:
            browser.close()
    assert world.store.count_judgments() == 0


@contextlib.contextmanager
def _static_page(html: str, port: int):
    """One HTML page on 127.0.0.1:`port` (the attacker's site)."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _label_everything(page, base: str, token: str, corrected: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/tasks/1")
    _check_media(page)
    assert page.inner_text("#progress") == "0 of 4 done"
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.screenshot(path=str(SHOTS / "1-pairwise-help.png"), full_page=True)
    page.keyboard.press("?")
    assert not page.is_visible("#help")

    page.keyboard.press("2")  # B is better
    assert page.is_checked('input[name=choice][value="b"]')
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/tasks/2")
    for key in "312":  # third answer best, then the first, then the second
        page.keyboard.press(key)
    assert page.input_value("#ranking") == "3,1,2"
    page.screenshot(path=str(SHOTS / "2-ranking.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/tasks/3")
    for key in "453":  # accuracy, fluency, safety
        page.keyboard.press(key)
    page.screenshot(path=str(SHOTS / "3-rating.png"), full_page=True)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/tasks/4")
    assert page.inner_text("#progress") == "3 of 4 done"

    page.keyboard.press("e")  # into the answer's text box
    page.keyboard.press("Control+A")
    page.keyboard.type(corrected)
    page.screenshot(path=str(SHOTS / "4-critique.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#all-done")
    page.screenshot(path=str(SHOTS / "5-done.png"), full_page=True)


def _check_media(page) -> None:
    """The image is decoded and zooms on click; the audio player has loaded its metadata."""
    page.wait_for_function("document.querySelector('.media img').naturalWidth > 0")
    page.wait_for_function("document.querySelector('audio').readyState >= 1 && document.querySelector('audio').duration > 0")
    page.click(".media img")
    assert "zoomed" in page.get_attribute(".media img", "class")
    page.screenshot(path=str(SHOTS / "0-zoomed.png"))
    page.keyboard.press("Escape")
    assert "zoomed" not in (page.get_attribute(".media img", "class") or "")
