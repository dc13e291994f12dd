"""TRL preference rows into the feedback store: round trip with export_trl, in-memory media, HF datasets, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modalign.data.dataset import read_examples
from modalign.data.media import load_image, sha256_file
from modalign.data.media_items import content_path
from modalign.data.records import Completion, RecordError, assistant_turn, user_turn
from modalign.data.shapes import build_shapes_dataset
from modalign.feedback.judgments import PairwiseJudgment
from modalign.feedback.schema import CandidateRow, ExampleRow, JudgmentRow
from modalign.feedback.store import FeedbackStore
from modalign.feedback.trl_import import import_trl_preferences


@pytest.fixture
def exported(tmp_path):
    """A store over a tiny ShapesWorld with 4 decided pairs (and one tie) on 3 examples, exported to JSONL."""
    data = build_shapes_dataset(tmp_path / "data", n_train=4, n_test=1, seed=0, caption_noise=0.0)
    examples = read_examples(data, "train")[:3]
    store = FeedbackStore.sqlite(tmp_path / "a.db")
    store.add_examples(examples, root=data)
    texts = {e.id: [f"{e.id} answer {k}" for k in range(3)] for e in examples}
    ids = store.add_candidates([Completion(e.id, text, "sft") for e in examples for text in texts[e.id]])
    (a0, b0, c0), (a1, b1, _), (a2, b2, _) = ids[0:3], ids[3:6], ids[6:9]
    e0, e1, e2 = (e.id for e in examples)
    store.add_judgments([
        PairwiseJudgment(example_id=e0, annotator="ann", candidate_a=a0, candidate_b=b0, choice="a"),
        PairwiseJudgment(example_id=e0, annotator="ann", candidate_a=a0, candidate_b=c0, choice="b"),
        PairwiseJudgment(example_id=e1, annotator="ann", candidate_a=a1, candidate_b=b1, choice="b"),
        PairwiseJudgment(example_id=e2, annotator="ann", candidate_a=a2, candidate_b=b2, choice="tie"),  # not exported
        PairwiseJudgment(example_id=e2, annotator="ann", candidate_a=b2, candidate_b=ids[8], choice="a"),
    ])
    path = tmp_path / "pairs.jsonl"
    store.export_trl(path)
    return store, path, data, examples


def pair_contents(store: FeedbackStore) -> list[tuple]:
    """Per decided pair: example id, prompt, chosen, rejected and the bytes of its media files."""
    out = []
    for pair in store.preference_pairs():
        if pair.tie:
            continue
        example, root = store.get_example(pair.example_id), Path(store.example_root(pair.example_id))
        media = [(ref.kind, (root / ref.path).read_bytes()) for ref in example.media]
        prompt = json.dumps(list(example.prompt_messages))
        out.append((pair.example_id, prompt, pair.chosen.text, pair.rejected.text, media))
    return out


def count(store: FeedbackStore, table) -> int:
    with Session(store.engine) as session:
        return int(session.scalar(select(func.count()).select_from(table)))


def test_export_then_import_round_trips(exported, tmp_path):
    source, path, data, examples = exported
    target = FeedbackStore.sqlite(tmp_path / "b.db")
    assert import_trl_preferences(target, path, tmp_path / "imported") == 4

    got, want = pair_contents(target), pair_contents(source)
    assert got == want
    assert [(c, r) for _, _, c, r, _ in got] == [
        (f"{examples[0].id} answer 0", f"{examples[0].id} answer 1"),
        (f"{examples[0].id} answer 2", f"{examples[0].id} answer 0"),
        (f"{examples[1].id} answer 1", f"{examples[1].id} answer 0"),
        (f"{examples[2].id} answer 1", f"{examples[2].id} answer 2"),
    ]
    # rows sharing an example id share one stored example; media outside the root are copied in by content hash
    assert count(target, ExampleRow) == 3 and count(target, CandidateRow) == 8
    imported = target.get_example(examples[0].id)
    assert imported.messages == examples[0].prompt_messages and imported.answer is None
    image, audio = imported.media
    assert image.path == content_path(image.sha256, ".png") and audio.path == content_path(audio.sha256, ".wav")
    assert image.sha256 == sha256_file(data / examples[0].media[0].path)
    assert sha256_file(tmp_path / "imported" / image.path) == image.sha256
    judgments = target.judgments()
    assert [(j.annotator, j.choice) for j in judgments] == [("import", "a")] * 4
    assert target.get_candidate(judgments[1].candidate_a).text == f"{examples[0].id} answer 2"
    # and back out again: the same TRL rows apart from where the media now live
    strip = lambda rows: [{k: v for k, v in row.items() if k not in ("images", "audios")} for row in rows]
    assert strip(target.export_trl()) == strip(source.export_trl())


def test_import_into_its_own_root_keeps_paths_and_stored_examples(exported):
    source, path, data, examples = exported
    assert import_trl_preferences(source, path, data, annotator="second-pass") == 4
    kept = source.get_example(examples[0].id)
    assert kept == examples[0] and kept.answer is not None  # the stored record, answer and meta, is untouched
    assert count(source, ExampleRow) == 3 and source.count_judgments("pairwise") == 9
    assert {j.annotator for j in source.judgments()} == {"ann", "second-pass"}


def test_pil_images_are_copied_into_root_media(tmp_path):
    red, blue = Image.new("RGB", (4, 3), (255, 0, 0)), Image.new("RGB", (4, 3), (0, 0, 255))
    prompt = [user_turn("what colour is it?", n_images=1)]
    rows = [
        {"prompt": prompt, "chosen": [assistant_turn("red")], "rejected": [assistant_turn("blue")], "images": [red]},
        {"prompt": prompt, "chosen": "a red box", "rejected": "green", "images": [red.copy()]},
        {"prompt": prompt, "chosen": "blue", "rejected": "red", "images": [blue], "meta": {"answer": "blue"}},
    ]
    store = FeedbackStore.sqlite(tmp_path / "a.db")
    assert import_trl_preferences(store, rows, tmp_path / "root") == 3

    pairs = store.preference_pairs()
    texts = [(p.chosen.text, p.rejected.text) for p in pairs]
    assert texts == [("red", "blue"), ("a red box", "green"), ("blue", "red")]
    assert pairs[0].example_id == pairs[1].example_id != pairs[2].example_id  # same prompt + same pixels: one example
    assert pairs[0].example_id.startswith("trl-") and count(store, ExampleRow) == 2
    for pair, rgb in ((pairs[0], (255, 0, 0)), (pairs[2], (0, 0, 255))):
        example = store.get_example(pair.example_id)
        (ref,) = example.media
        assert ref.path == content_path(ref.sha256, ".png")
        assert sha256_file(tmp_path / "root" / ref.path) == ref.sha256
        assert load_image(ref, store.example_root(pair.example_id), example.id).getpixel((3, 2)) == rgb
    assert store.get_example(pairs[2].example_id).meta == {"answer": "blue"}
    assert sorted(p.name for p in (tmp_path / "root" / "media").rglob("*.*")) == sorted(
        Path(store.get_example(p.example_id).media[0].path).name for p in (pairs[0], pairs[2]))


def test_import_from_hf_dataset_with_image_feature_and_string_answers(exported, tmp_path):
    source, path, data, examples = exported
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    dataset = datasets.Dataset.from_list([
        {"id": row["example_id"], "prompt": row["prompt"], "chosen": row["chosen"][0]["content"][0]["text"],
         "rejected": row["rejected"][0]["content"][0]["text"], "images": row["images"], "audios": row["audios"]}
        for row in rows
    ])
    dataset = dataset.cast_column("images", datasets.List(datasets.Image()))
    assert isinstance(dataset[0]["images"][0], Image.Image)  # what TRL trainers see

    target = FeedbackStore.sqlite(tmp_path / "b.db")
    assert import_trl_preferences(target, dataset, data) == 4
    assert pair_contents(target) == pair_contents(source)
    # files inside the root keep their dataset-relative paths
    assert target.get_example(examples[1].id).media == examples[1].media


def test_row_without_rejected_names_file_and_line_and_stores_nothing(tmp_path):
    good = {"id": "q1", "prompt": [user_turn("hi")], "chosen": "hello", "rejected": "go away"}
    bad = {"id": "q2", "prompt": [user_turn("hi again")], "chosen": "hello again"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    store = FeedbackStore.sqlite(tmp_path / "a.db")

    with pytest.raises(RecordError) as err:
        import_trl_preferences(store, path, tmp_path)
    assert str(err.value) == f"{path}:2 (record 'q2'): no 'rejected' column"
    assert (count(store, ExampleRow), count(store, CandidateRow), count(store, JudgmentRow)) == (0, 0, 0)


@pytest.mark.parametrize("change, fragment", [
    ({"prompt": 3}, "'prompt' must be a list of messages"),
    ({"chosen": [assistant_turn("a"), assistant_turn("b")]}, "'chosen' must be a string or a list with one assistant"),
    ({"rejected": [user_turn("no")]}, "'rejected' must be a string or a list with one assistant"),
    ({"prompt": [user_turn("hi"), assistant_turn("hello")]}, "'prompt' ends with an assistant message"),
    ({"images": ["/nowhere/x.png"]}, "0 {'type': 'image'} placeholder(s) in messages but 1 item(s)"),
])
def test_malformed_rows_name_the_row_and_field(tmp_path, change, fragment):
    rows = [{"id": "q1", "prompt": [user_turn("hi")], "chosen": "hello", "rejected": "go away"}]
    rows.append({**rows[0], "id": "q2", **change})
    store = FeedbackStore.sqlite(tmp_path / "a.db")
    with pytest.raises(RecordError, match=r"^row 1\b") as err:
        import_trl_preferences(store, rows, tmp_path)
    assert fragment in str(err.value)
    assert count(store, ExampleRow) == 0


def test_one_id_with_two_prompts_is_an_error(tmp_path):
    rows = [{"id": "q1", "prompt": [user_turn(text)], "chosen": "yes", "rejected": "no"} for text in ("hi", "bye")]
    with pytest.raises(RecordError, match=r"row 1: example id 'q1' has another prompt or media than at row 0"):
        import_trl_preferences(FeedbackStore.sqlite(tmp_path / "a.db"), rows, tmp_path)


def test_relative_paths_resolve_against_the_file_and_symlinked_folders_are_read_in_place(tmp_path):
    photos = tmp_path / "photo_library"
    photos.mkdir()
    Image.new("RGB", (4, 3), (0, 255, 0)).save(photos / "green.png")
    user = tmp_path / "user"
    user.mkdir()
    (user / "pics").symlink_to(photos)  # the user's folder links to where the photos really are
    row = {"id": "q1", "prompt": [user_turn("colour?", n_images=1)], "chosen": "green", "rejected": "red",
           "images": ["pics/green.png"]}
    (user / "pairs.jsonl").write_text(json.dumps(row) + "\n")

    copied = FeedbackStore.sqlite(tmp_path / "a.db")
    assert import_trl_preferences(copied, user / "pairs.jsonl", tmp_path / "store") == 1
    (ref,) = copied.get_example("q1").media
    assert ref.sha256 == sha256_file(photos / "green.png")  # read from the file's folder, stored by content

    in_place = FeedbackStore.sqlite(tmp_path / "b.db")
    assert import_trl_preferences(in_place, user / "pairs.jsonl", None) == 1
    example, root = in_place.get_example("q1"), in_place.example_root("q1")
    # the nearest real folder holding the file's folder and the photo, so the loader's inside-root check holds
    assert root == str(tmp_path.resolve()) and example.media[0].path == "photo_library/green.png"
    assert load_image(example.media[0], root, "q1").getpixel((3, 2)) == (0, 255, 0)
    assert not (tmp_path / "store" / "pairs").exists() and not any((user).glob("media*"))
