"""The feedback store: every judgment kind round-trips, writes are durable and all-or-nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modalign.data.records import Completion, Example, MediaRef, assistant_turn, user_turn
from modalign.feedback.judgments import (
    CritiqueJudgment, ImplicitJudgment, JudgmentError, PairwiseJudgment, RankingJudgment, RatingJudgment,
)
from modalign.feedback.store import FeedbackStore


@pytest.fixture
def store(tmp_path, backend_url):
    """A store with one example and three candidates, on SQLite and on PostgreSQL."""
    (tmp_path / "img.png").write_bytes(b"x")
    (tmp_path / "a.wav").write_bytes(b"x")
    store = FeedbackStore(backend_url)
    example = Example("e1", (user_turn("describe the scene.", 1, 1), assistant_turn("ref")),
                      media=(MediaRef("image", "img.png"), MediaRef("audio", "a.wav")))
    store.add_examples([example], root=tmp_path)
    store.ids = store.add_candidates([Completion("e1", f"answer {i}", "sft") for i in range(3)])
    return store


def test_every_kind_round_trips(store):
    a, b, c = store.ids
    judgments = [
        PairwiseJudgment(example_id="e1", annotator="ann", candidate_a=a, candidate_b=b, choice="a", reason="b invents a square"),
        RankingJudgment(example_id="e1", annotator="ann", ranking=(c, a, b)),
        RatingJudgment(example_id="e1", annotator="ann", candidate=a, ratings={"accuracy": 4, "fluency": 5}),
        CritiqueJudgment(example_id="e1", annotator="ann", candidate=b, critique="no square",
                         corrected_text="answer 1", corrected_spans=((0, 3, "one"),)),
        ImplicitJudgment(example_id="e1", annotator="ann", candidate=c, signal="accepted"),
    ]
    store.add_judgments(judgments)
    assert store.judgments() == judgments
    assert store.count_judgments("pairwise") == 1 and store.count_judgments() == 5


def test_durable_for_another_process(store):
    a, b, _ = store.ids
    store.add_judgment(PairwiseJudgment(example_id="e1", annotator="ann", candidate_a=a, candidate_b=b, choice="b"))
    code = f"from modalign.feedback.store import FeedbackStore; print(FeedbackStore({store.url!r}).count_judgments())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "1"


def test_bad_judgments_store_nothing(store):
    a, b, _ = store.ids
    with pytest.raises(JudgmentError, match="nope"):
        store.add_judgment(PairwiseJudgment(example_id="nope", annotator="x", candidate_a=a, candidate_b=b, choice="a"))
    with pytest.raises(JudgmentError, match="999"):
        store.add_judgments([PairwiseJudgment(example_id="e1", annotator="x", candidate_a=a, candidate_b=b, choice="a"),
                             PairwiseJudgment(example_id="e1", annotator="x", candidate_a=a, candidate_b=999, choice="a")])
    store.add_judgment(PairwiseJudgment(example_id="e1", annotator="x", candidate_a=a, candidate_b=b, choice="a", task_id=7))
    with pytest.raises(JudgmentError, match="already stored"):
        store.add_judgment(PairwiseJudgment(example_id="e1", annotator="x", candidate_a=a, candidate_b=b, choice="b", task_id=7))
    assert store.count_judgments() == 1
    with pytest.raises(JudgmentError, match="choice"):
        PairwiseJudgment(example_id="e1", annotator="x", candidate_a=a, candidate_b=b, choice="maybe")
    with pytest.raises(JudgmentError, match="fluency"):
        RatingJudgment(example_id="e1", annotator="x", candidate=a, ratings={"fluency": 9})


def test_majority_pairs_and_trl_export(store, tmp_path):
    a, b, _ = store.ids
    for annotator, choice, (first, second) in [("p", "a", (a, b)), ("q", "b", (b, a)), ("r", "b", (a, b))]:
        store.add_judgment(PairwiseJudgment(example_id="e1", annotator=annotator, candidate_a=first,
                                            candidate_b=second, choice=choice))
    (pair,) = store.preference_pairs()
    assert (pair.chosen.text, pair.rejected.text, pair.votes, pair.tie) == ("answer 0", "answer 1", 3, False)
    assert pair.margin == pytest.approx(1 / 3)
    rows = store.export_trl(tmp_path / "trl.jsonl")
    assert set(rows[0]) == {"example_id", "prompt", "chosen", "rejected", "images", "audios"}
    assert rows[0]["chosen"][0]["content"][0]["text"] == "answer 0"
    assert all(__import__("os").path.exists(p) for p in rows[0]["images"] + rows[0]["audios"])
    assert json.loads((tmp_path / "trl.jsonl").read_text().splitlines()[0]) == rows[0]


def test_dataset_roots_are_stored_absolute(tmp_path, monkeypatch):
    """A store written from one folder must find the media when read from another."""
    monkeypatch.chdir(tmp_path)
    store = FeedbackStore.sqlite(tmp_path / "f.db")
    store.add_examples([Example("r1", (user_turn("describe.", 0, 0), assistant_turn("ref")))], root="data/shapes")
    assert store.example_root("r1") == str(tmp_path / "data" / "shapes")


def test_sqlite_paths_with_url_characters_open_that_file(tmp_path):
    """`?`, `#` and `%` are URL syntax: a folder named with them must still hold the store (not `a`)."""
    from modalign.feedback.store_spec import open_store

    folder = tmp_path / "a?b#c%d"
    store = FeedbackStore.sqlite(folder / "feedback.db")
    store.add_examples([Example("r1", (user_turn("describe.", 0, 0), assistant_turn("ref")))])
    assert (folder / "feedback.db").is_file() and not (tmp_path / "a").exists()
    assert open_store(str(folder)).get_example("r1").id == "r1"  # a folder spec: the same file
    assert FeedbackStore(store.url).get_example("r1").id == "r1"  # its URL names it for other commands
