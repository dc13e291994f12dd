"""`modalign import` / `modalign export`: HF datasets and TRL rows in (inline media, relative paths,
ids), content-addressed media, one-line errors with nothing written, and round trips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modalign.cli import app
from modalign.data.dataset import read_examples
from modalign.data.media import sha256_file
from modalign.data.records import Example, RecordError, assistant_turn, user_turn
from modalign.feedback.store import FeedbackStore
from modalign.models.inputs import MediaStore
from modalign.recipes.reward import open_store
from modalign.recipes.transfer import export_source, import_source

runner = CliRunner()


def photo(seed: int, size: int = 12) -> Image.Image:
    """A small image with real pixel variation (so two seeds never share a file)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size + 2, 3), dtype=np.uint8))


def tone(hz: float, rate: int = 16000, seconds: float = 0.2) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def sft_rows() -> list[dict]:
    """A new user's rows: inline PIL images, audio arrays, top-level task / answer columns, one row shares an image."""
    shared = photo(0)
    return [
        dict(id="cap-0", task="caption", answer=None, images=[shared], audios=[],
             messages=[user_turn("describe the photo.", n_images=1), assistant_turn("noise")]),
        dict(id="vqa-0", task="vqa", answer="many", images=[shared.copy()], audios=[],
             messages=[user_turn("how many colours?", n_images=1), assistant_turn("many")]),
        dict(id="aud-0", task="audio", answer="high", images=[],
             audios=[{"array": tone(880.0), "sampling_rate": 16000}],
             messages=[user_turn("high or low?", n_audio=1), assistant_turn("high")]),
    ]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})  # no wrapping of the error line


def test_dataset_with_pil_images_and_audio_arrays_imports_into_a_loadable_dataset(tmp_path):
    rows = sft_rows()
    dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    assert isinstance(dataset[0]["images"][0], Image.Image)  # what a hub dataset holds
    dataset.save_to_disk(str(tmp_path / "saved"))

    result = cli("import", tmp_path / "saved", "--out", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "imported 3 examples" in result.output

    examples = read_examples(tmp_path / "data", "train")
    assert [e.id for e in examples] == ["cap-0", "vqa-0", "aud-0"]
    assert [e.meta for e in examples] == [{"task": "caption"}, {"task": "vqa", "answer": "many"},
                                          {"task": "audio", "answer": "high"}]  # extra columns -> meta, None dropped
    media = MediaStore(tmp_path / "data")
    assert np.array_equal(np.asarray(media.images(examples[0])[0]), np.asarray(rows[0]["images"][0]))
    wave = media.audio(examples[2])[0]
    assert np.abs(wave - tone(880.0)).max() < 1e-3  # 16-bit WAV of the same samples
    ref = examples[0].media[0]
    assert ref.path == f"media/{ref.sha256[:2]}/{ref.sha256}.png"  # content-addressed
    assert examples[1].media == examples[0].media  # the same picture twice: one file
    assert len(list((tmp_path / "data" / "media").rglob("*.*"))) == 2


def test_dataset_dict_imports_each_split_or_the_one_asked_for(tmp_path):
    table = datasets.Dataset.from_list(sft_rows()).cast_column("images", datasets.List(datasets.Image()))
    datasets.DatasetDict({"train": table.select([0, 2]), "test": table.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert import_source(str(tmp_path / "dd"), str(tmp_path / "data"))["examples"] == {"train": 2, "test": 1}
    assert [e.id for e in read_examples(tmp_path / "data", "test")] == ["vqa-0"]
    result = cli("import", tmp_path / "dd", "--out", tmp_path / "data", "--data-split", "test", "--split", "eval")
    assert result.exit_code == 0, result.output
    assert read_examples(tmp_path / "data", "eval") == read_examples(tmp_path / "data", "test")
    missing = cli("import", tmp_path / "dd", "--out", tmp_path / "other", "--data-split", "validation")
    assert missing.exit_code == 2 and "no split 'validation' (splits: train, test)" in missing.output
    both = cli("import", tmp_path / "dd", "--out", tmp_path / "other", "--split", "all")
    assert both.exit_code == 2 and "pick one with --data-split" in both.output
    assert not (tmp_path / "other").exists()


def test_parquet_keeps_encoded_bytes_and_resolves_relative_paths_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "src" / "pics").mkdir(parents=True)
    photo(1).save(tmp_path / "src" / "pics" / "a.jpg", quality=90)
    rows = [{"id": "p1", "messages": [user_turn("what is it?", n_images=1)], "images": ["pics/a.jpg"]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "src" / "rows.parquet"))
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working folder

    summary = import_source(str(tmp_path / "src" / "rows.parquet"), str(tmp_path / "data"), split="test")
    assert summary == {"kind": "sft", "out": str(tmp_path / "data"), "examples": {"test": 1}}
    (example,) = read_examples(tmp_path / "data", "test")
    (ref,) = example.media
    assert ref.path.endswith(".jpg")  # the JPEG is stored as it is, not re-encoded
    assert sha256_file(tmp_path / "data" / ref.path) == sha256_file(tmp_path / "src" / "pics" / "a.jpg") == ref.sha256


def test_trl_preference_rows_with_relative_paths_become_a_store(tmp_path):
    source = tmp_path / "user" / "prefs"
    for name, seed in (("a.png", 2), ("b.png", 3)):
        (source / "img").mkdir(parents=True, exist_ok=True)
        photo(seed).save(source / "img" / name)
    rows = [
        {"id": "q1", "prompt": [user_turn("which one?", n_images=1)], "chosen": "left", "rejected": "right",
         "images": ["img/a.png"], "task": "choice"},
        {"id": "q1", "prompt": [user_turn("which one?", n_images=1)], "chosen": "left", "rejected": "none",
         "images": ["img/a.png"], "task": "choice"},
        {"id": "q2", "prompt": [user_turn("which one?", n_images=1)], "chosen": "right", "rejected": "left",
         "images": ["img/b.png"]},
    ]
    (source / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = cli("import", source / "pairs.jsonl", "--out", tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"imported 3 preference pairs into {tmp_path / 'store' / 'feedback.db'}" in result.output
    store = open_store(str(tmp_path / "store" / "feedback.db"))  # what `--set store=` takes
    assert open_store(str(tmp_path / "store")).url == store.url  # the folder works too
    pairs = store.preference_pairs()
    assert [(p.example_id, p.chosen.text, p.rejected.text) for p in pairs] == [
        ("q1", "left", "right"), ("q1", "left", "none"), ("q2", "right", "left")]
    assert {j.annotator for j in store.judgments()} == {"import:pairs.jsonl"}
    for example_id, name in (("q1", "a.png"), ("q2", "b.png")):
        example, root = store.get_example(example_id), Path(store.example_root(example_id))
        assert root == (tmp_path / "store").resolve()
        assert sha256_file(root / example.media[0].path) == sha256_file(source / "img" / name)
    assert store.get_example("q1").meta == {"task": "choice"}


def test_dpo_and_reward_read_a_preference_file_in_place(tmp_path):
    """`store=pairs.jsonl`: relative paths from the file's folder, media referenced there, nothing copied into the run."""
    source = tmp_path / "user"
    (source / "img").mkdir(parents=True)
    photo(4).save(source / "img" / "a.png")
    elsewhere = tmp_path / "elsewhere" / "b.png"
    elsewhere.parent.mkdir()
    photo(5).save(elsewhere)
    rows = [
        {"id": "q1", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": "b", "images": ["img/a.png"]},
        {"id": "q2", "prompt": [user_turn("which?", n_images=1)], "chosen": "b", "rejected": "a", "images": [str(elsewhere)]},
    ]
    (source / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tmp_path / "run"
    run.mkdir()

    store = open_store(str(source / "pairs.jsonl"), run)
    assert {p.name for p in run.iterdir()} <= {"feedback.db", "feedback.db-wal", "feedback.db-shm"}  # no media copies
    for example_id, original in (("q1", source / "img" / "a.png"), ("q2", elsewhere)):
        example, root = store.get_example(example_id), store.example_root(example_id)
        (image,) = MediaStore(root).images(example)  # the loader's checks (inside the root, decodable) pass
        assert os.path.realpath(Path(root) / example.media[0].path) == os.path.realpath(original)
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(original).convert("RGB")))
    assert store.example_root("q1") == os.path.realpath(source)
    assert open_store(str(source / "pairs.jsonl"), run).count_judgments() == 2  # a resumed run reuses the import


def test_a_preference_file_is_checked_without_writing_anything(tmp_path):
    from modalign.feedback.trl_import import check_preference_file

    (tmp_path / "img").mkdir()
    photo(13).save(tmp_path / "img" / "a.png")
    good = {"id": "q1", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": "b", "images": ["img/a.png"]}
    bad = {**good, "id": "q2", "images": ["img/gone.png"]}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert check_preference_file(tmp_path / "pairs.jsonl") == 2
    (tmp_path / "pairs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"pairs.jsonl:2 \(record 'q2'\): images\[0\]: image file .*gone.png does not exist"):
        check_preference_file(tmp_path / "pairs.jsonl")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "img", "pairs.jsonl"]


def test_inline_media_parts_in_messages(tmp_path):
    picture = photo(6)
    (tmp_path / "src" / "pics").mkdir(parents=True)
    photo(7).save(tmp_path / "src" / "pics" / "b.png")
    messages = [{"role": "user", "content": [
        {"type": "image", "image": picture}, {"type": "audio", "audio": {"array": tone(440.0), "sampling_rate": 16000}},
        {"type": "text", "text": "what do you see and hear?"}]}, assistant_turn("a tone")]
    dataset = datasets.Dataset.from_list([{"id": "in-1", "messages": messages}])
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert import_source(str(tmp_path / "saved"), str(tmp_path / "data"))["examples"] == {"train": 1}
    (example,) = read_examples(tmp_path / "data", "train")
    assert example.messages[0]["content"][:2] == [{"type": "image"}, {"type": "audio"}]  # bare placeholders
    assert [ref.kind for ref in example.media] == ["image", "audio"]
    media = MediaStore(tmp_path / "data")
    assert np.array_equal(np.asarray(media.images(example)[0]), np.asarray(picture))
    assert np.abs(media.audio(example)[0] - tone(440.0)).max() < 1e-3

    # a JSONL row: an inline path part (relative to the file) and a bare placeholder taking the `images` column
    row = {"id": "in-2", "messages": [{"role": "user", "content": [
        {"type": "image", "image": "pics/b.png"}, {"type": "image"}, {"type": "text", "text": "same?"}]}],
        "images": [str(tmp_path / "src" / "pics" / "b.png")]}
    (tmp_path / "src" / "rows.jsonl").write_text(json.dumps(row) + "\n")
    import_source(str(tmp_path / "src" / "rows.jsonl"), str(tmp_path / "data"), split="extra")
    (example,) = read_examples(tmp_path / "data", "extra")
    assert len(example.media) == 2 and example.media[0] == example.media[1]
    assert example.media[0].sha256 == sha256_file(tmp_path / "src" / "pics" / "b.png")


def test_a_dataset_file_may_hold_inline_path_parts(tmp_path):
    photo(8).save(tmp_path / "a.png")
    raw = {"id": "x", "messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"},
                                                               {"type": "text", "text": "?"}]}]}
    example = Example.from_dict(raw)
    assert example.media[0].path == "a.png" and example.messages[0]["content"][0] == {"type": "image"}
    assert MediaStore(tmp_path).images(example)[0].size == (14, 12)
    with pytest.raises(RecordError, match="record 'x': placeholder 0 .*must be a path string"):
        Example.from_dict({**raw, "messages": [{"role": "user", "content": [{"type": "image", "image": 3}]}]})


def test_duplicate_ids_name_both_rows_and_write_nothing(tmp_path):
    rows = [{"id": "same", "messages": [user_turn(text)]} for text in ("a", "b")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = cli("import", tmp_path / "rows.jsonl", "--out", tmp_path / "data")
    assert result.exit_code == 2
    assert f"{tmp_path / 'rows.jsonl'}:2" in result.output and f"{tmp_path / 'rows.jsonl'}:1" in result.output
    assert "'same'" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no data folder, no staging left


def test_id_column_and_rows_without_ids(tmp_path):
    rows = [{"qid": "k7", "messages": [user_turn("hi")]}, {"messages": [user_turn("yo")]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    import_source(str(tmp_path / "rows.json"), str(tmp_path / "data"), id_column="qid")
    assert [e.id for e in read_examples(tmp_path / "data", "train")] == ["k7", "row-1"]


def test_json_file_holding_json_lines(tmp_path):
    rows = [{"id": f"r{i}", "messages": [user_turn("hi"), assistant_turn(f"hello {i}")]} for i in range(2)]
    (tmp_path / "rows.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    import_source(str(tmp_path / "rows.json"), str(tmp_path / "data"))
    assert [e.answer for e in read_examples(tmp_path / "data", "train")] == ["hello 0", "hello 1"]
    result = cli("import", tmp_path / "rows.json", "--out", tmp_path / "rows.json")
    assert result.exit_code == 2 and "exists and is not a folder" in result.output


def test_implicit_prompt_preference_rows(tmp_path):
    prompt = [user_turn("capital of france?")]
    rows = [{"chosen": prompt + [assistant_turn("paris")], "rejected": prompt + [assistant_turn("rome")]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "prefs.parquet"))
    assert import_source(str(tmp_path / "prefs.parquet"), str(tmp_path / "store"))["pairs"] == 1
    (pair,) = open_store(str(tmp_path / "store")).preference_pairs()
    assert (pair.chosen.text, pair.rejected.text) == ("paris", "rome")


def test_dataset_round_trips_through_trl_jsonl_and_hf(tmp_path):
    dataset = datasets.Dataset.from_list(sft_rows()).cast_column("images", datasets.List(datasets.Image()))
    dataset.save_to_disk(str(tmp_path / "saved"))
    import_source(str(tmp_path / "saved"), str(tmp_path / "data"))
    original = read_examples(tmp_path / "data", "train")

    for fmt, out in (("trl-jsonl", tmp_path / "rows.jsonl"), ("hf", tmp_path / "hf")):
        result = cli("export", tmp_path / "data", "--out", out, "--format", fmt)
        assert result.exit_code == 0, result.output
        import_source(str(out), str(tmp_path / f"back-{fmt}"))
        back = read_examples(tmp_path / f"back-{fmt}", "train")
        assert back == original  # same ids, messages, meta and media: same content, same content path
        assert all((tmp_path / f"back-{fmt}" / ref.path).is_file() for e in back for ref in e.media)


def test_store_round_trips_through_export_and_import(tmp_path):
    (tmp_path / "img").mkdir()
    photo(9).save(tmp_path / "img" / "a.png")
    rows = [{"id": "q1", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": "b",
             "images": ["img/a.png"]}]
    (tmp_path / "pairs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    import_source(str(tmp_path / "pairs.jsonl"), str(tmp_path / "store"))
    for fmt, out in (("trl-jsonl", tmp_path / "out.jsonl"), ("hf", tmp_path / "out-hf")):
        assert export_source(str(tmp_path / "store"), str(out), fmt)["pairs"] == 1
        import_source(str(out), str(tmp_path / f"again-{fmt}"))
        again = open_store(str(tmp_path / f"again-{fmt}"))
        (pair,) = again.preference_pairs()
        example = again.get_example(pair.example_id)
        assert (pair.example_id, pair.chosen.text, pair.rejected.text) == ("q1", "a", "b")
        assert example.media[0].sha256 == sha256_file(tmp_path / "img" / "a.png")


def test_preference_rows_go_to_the_store_named_as_in_every_command(tmp_path):
    """`--store` takes what `--set store=` takes (`store_spec.open_store`), here an SQLite URL; the media go
    under --out, which then holds no feedback.db of its own."""
    (tmp_path / "img").mkdir()
    photo(9).save(tmp_path / "img" / "a.png")
    row = {"id": "q1", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": "b",
           "images": ["img/a.png"]}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    url = f"sqlite:///{tmp_path / 'prefs.db'}"
    result = cli("import", tmp_path / "pairs.jsonl", "--out", tmp_path / "media", "--store", url)
    assert result.exit_code == 0, result.output
    assert f"imported 1 preference pairs into {url}  (use --set store={url})" in result.output
    store = FeedbackStore(url)
    (pair,) = store.preference_pairs()
    example, root = store.get_example("q1"), Path(store.example_root("q1"))
    assert (pair.chosen.text, pair.rejected.text) == ("a", "b") and root == (tmp_path / "media").resolve()
    assert sha256_file(root / example.media[0].path) == sha256_file(tmp_path / "img" / "a.png")
    assert not (tmp_path / "media" / "feedback.db").exists()
    bad = cli("import", tmp_path / "pairs.jsonl", "--out", tmp_path / "other", "--store", "nosuchdb://host/db")
    assert bad.exit_code == 2 and bad.output.startswith("error: --store 'nosuchdb://host/db'"), bad.output
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("make_source, fragment", [
    (lambda d: d / "missing.jsonl", "missing.jsonl: no such file or folder"),
    (lambda d: _write(d / "rows.csv", "a,b\n"), "cannot import a .csv file"),
    (lambda d: _write(d / "rows.jsonl", '{"id": "r1", "messages": [{"role": "user", "content": "hi"}]}\n{oops\n'),
     "rows.jsonl:2: not valid JSON"),
    (lambda d: _write(d / "rows.jsonl", json.dumps({"id": "r1", "messages": [user_turn("x", n_images=1)],
                                                    "images": ["pics/gone.png"]}) + "\n"),
     "rows.jsonl:1 (record 'r1'): images[0]: image file"),
    (lambda d: _write(d / "rows.jsonl", json.dumps({"id": "r1", "messages": [user_turn("x", n_images=1)],
                                                    "images": ["bad.png"]}) + "\n", extra=("bad.png", b"not a png")),
     "rows.jsonl:1 (record 'r1'): images[0]: not a readable image"),
    (lambda d: _write(d / "rows.jsonl", json.dumps({"id": "r1", "messages": [{"role": "user", "content": [
        {"type": "image", "image": "https://example.com/a.png"}]}]}) + "\n"),
     "messages[0].content[0]: remote image https://example.com/a.png is not downloaded"),
    (lambda d: _write(d / "rows.jsonl", ""), "no rows to import"),
    (lambda d: _write(d / "rows.jsonl", json.dumps({"prompt": "hi", "completion": "yo", "label": True}) + "\n"),
     "TRL's KTO format"),
])
def test_bad_sources_are_one_line_and_write_nothing(tmp_path, make_source, fragment):
    source = make_source(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli("import", source, "--out", tmp_path / "data")
    assert result.exit_code == 2, result.output
    assert fragment in result.output and result.output.startswith("error:")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _write(path: Path, text: str, extra: tuple[str, bytes] | None = None) -> Path:
    path.write_text(text)
    if extra:
        (path.parent / extra[0]).write_bytes(extra[1])
    return path


def test_a_bad_preference_row_leaves_no_store_and_no_staged_media(tmp_path):
    rows = [{"id": "q1", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": "b", "images": [photo(11)]},
            {"id": "q2", "prompt": [user_turn("which?", n_images=1)], "chosen": "a", "rejected": None, "images": [photo(12)]}]
    dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    dataset.to_parquet(str(tmp_path / "prefs.parquet"))
    result = cli("import", tmp_path / "prefs.parquet", "--out", tmp_path / "store")
    assert result.exit_code == 2
    assert f"error: {tmp_path / 'prefs.parquet'} row 1 (record 'q2'): no 'rejected' column" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.parquet"]


def test_existing_split_or_export_target_is_not_overwritten(tmp_path):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"id": "r", "messages": [user_turn("hi")]}) + "\n")
    assert cli("import", tmp_path / "rows.jsonl", "--out", tmp_path / "data").exit_code == 0
    first = (tmp_path / "data" / "train.jsonl").read_bytes()
    again = cli("import", tmp_path / "rows.jsonl", "--out", tmp_path / "data")
    assert again.exit_code == 2 and "train.jsonl already exists" in again.output
    assert (tmp_path / "data" / "train.jsonl").read_bytes() == first
    (tmp_path / "taken.jsonl").write_text("keep")
    taken = cli("export", tmp_path / "data", "--out", tmp_path / "taken.jsonl")
    assert taken.exit_code == 2 and "already exists" in taken.output
    assert (tmp_path / "taken.jsonl").read_text() == "keep"


def test_hub_id_offline_is_one_line_not_a_hang(tmp_path):
    import modalign

    source_root = str(Path(modalign.__file__).parents[1])  # this checkout's sources, not the installed ones
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": source_root,
           "COLUMNS": "1000"}
    done = subprocess.run([sys.executable, "-m", "modalign.cli", "import", "someone/some-dataset", "--out",
                           str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: someone/some-dataset: could not load it from the "
                                                   "Hugging Face hub (the hub is offline")
    assert not (tmp_path / "data").exists()


def test_hub_id_unreachable_fails_before_any_download(tmp_path, monkeypatch):
    import modalign.data.importing as importing

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(importing, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("tried to download"))
    result = cli("import", "someone/some-dataset", "--out", tmp_path / "data")
    assert result.exit_code == 2 and "Hugging Face hub cannot be reached" in result.output


def test_content_path_is_the_sha256_of_the_bytes(tmp_path):
    photo(10).save(tmp_path / "a.png")
    row = {"id": "r", "messages": [user_turn("?", n_images=1)], "images": ["a.png"]}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    import_source(str(tmp_path / "rows.jsonl"), str(tmp_path / "data"))
    (example,) = read_examples(tmp_path / "data", "train")
    digest = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert example.media[0].path == f"media/{digest[:2]}/{digest}.png"


def test_reward_and_dpo_commands_train_from_a_preference_file_without_copying_media(tmp_path, sft_model):
    """The CLI route a user takes: TRL rows with paths relative to the file, in a folder of their own."""
    import shutil

    model, data = sft_model
    user = tmp_path / "user"
    rows = []
    for example in read_examples(data, "train")[:8]:
        paths = []
        for ref in example.media:
            target = user / "files" / Path(ref.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / ref.path, target)
            paths.append((ref.kind, f"files/{target.name}"))
        rows.append({"id": example.id, "prompt": [dict(m) for m in example.prompt_messages],
                     "chosen": example.answer, "rejected": "no idea",
                     "images": [p for kind, p in paths if kind == "image"],
                     "audios": [p for kind, p in paths if kind == "audio"]})
    (user / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    reward = cli("reward", "--set", f"policy={model}", "--set", f"store={user / 'pairs.jsonl'}", "--set", "steps=5",
                 "--out", tmp_path / "reward")
    assert reward.exit_code == 0, reward.output
    summary = json.loads((tmp_path / "reward" / "summary.json").read_text())
    assert summary["train_pairs"] + summary["heldout_pairs"] == 8
    dpo = cli("dpo", "--set", f"policy={model}", "--set", f"store={user / 'pairs.jsonl'}", "--set", "batch_size=4",
              "--out", tmp_path / "dpo")
    assert dpo.exit_code == 0, dpo.output
    assert json.loads((tmp_path / "dpo" / "summary.json").read_text())["pairs"] == 8
    for run in ("reward", "dpo"):
        copied = [p for p in (tmp_path / run).rglob("*") if p.suffix in (".png", ".wav")]
        assert copied == [] and not (tmp_path / run / "pairs").exists()
        store = FeedbackStore.sqlite(tmp_path / run / "feedback.db")
        assert {store.example_root(row["id"]) for row in rows} == {os.path.realpath(user)}
