"""A person's session in a real browser (Debian's chromium, headless) against a real uvicorn server:
log in, then label a pairwise task, a ranking and a rating by keyboard alone, and correct an answer.
Screenshots go to test-artifacts/annotation-browser/ (ignored by git)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from annotation_support import build_world, thread_server
from modalign.feedback.server.answers import apply_spans

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
    a, b, c = world.candidates[world.examples[0].id]
    assert stored[1].choice == "b" and (stored[1].candidate_a, stored[1].candidate_b) == (a, b)
    assert stored[2].ranking == (c, a, b)
    assert dict(stored[3].ratings) == {"accuracy": 4, "fluency": 5, "safety": 3} and stored[3].candidate == a
    assert stored[4].corrected_text == corrected and apply_spans(original, stored[4].corrected_spans) == corrected
    assert len(stored[4].corrected_spans) == 1 and stored[4].corrected_spans[0][2] == "blue"
    assert [stored[t].guideline_version for t in (1, 2, 3, 4)] == ["pairwise-v1", "ranking-v1", "rating-v1", "critique-v1"]
    assert all(j.annotator == "alice" for j in stored.values())


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
