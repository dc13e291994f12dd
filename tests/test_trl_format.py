"""TRL conversational rows and HF datasets in and out, keeping media and placeholders aligned."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from modalign.data.media import load_audio, load_image, save_audio, save_image, sha256_file
from modalign.data.media_items import content_path
from modalign.data.records import Example, MediaRef, RecordError, assistant_turn, user_turn
from modalign.data.trl_format import (
    example_from_trl,
    example_to_trl,
    export_trl_jsonl,
    from_hf_dataset,
    import_trl_jsonl,
    to_hf_dataset,
)


def make_examples(root):
    """Two examples with files under `root`: one image + audio, one with two images."""
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for name, rgb in colours.items():
        save_image(Image.new("RGB", (6, 4), rgb), root / "media" / f"{name}.png")
    save_audio(np.zeros(1600, np.float32), root / "media" / "hum.wav", 16000)
    first = Example(
        id="scene-1",
        messages=(user_turn("what colour?", n_images=1, n_audio=1), assistant_turn("red")),
        media=(MediaRef("image", "media/red.png"), MediaRef("audio", "media/hum.wav")),
        meta={"answer": "red", "scene": {"shapes": [1, 2]}},
    )
    second = Example(
        id="scene-2",
        messages=({"role": "system", "content": [{"type": "text", "text": "be brief"}]}, user_turn("same?", n_images=2)),
        media=(MediaRef("image", "media/green.png"), MediaRef("image", "media/blue.png")),
    )
    return [first, second]


def test_example_to_trl_uses_trl_columns(tmp_path):
    first, second = make_examples(tmp_path)
    row = example_to_trl(first, tmp_path)
    assert row["id"] == "scene-1" and row["messages"][0]["content"][0] == {"type": "image"}
    assert row["images"] == [str(tmp_path / "media" / "red.png")]
    assert row["audios"] == [str(tmp_path / "media" / "hum.wav")]
    assert "audios" not in example_to_trl(second, tmp_path)


def test_jsonl_round_trip(tmp_path):
    examples = make_examples(tmp_path)
    out = export_trl_jsonl(examples, tmp_path, tmp_path / "export" / "train.trl.jsonl")
    assert json.loads(out.read_text().splitlines()[1])["images"][1].endswith("blue.png")
    assert import_trl_jsonl(out, tmp_path) == examples


def test_import_with_another_root_copies_media_in(tmp_path):
    examples = make_examples(tmp_path / "a")
    out = export_trl_jsonl(examples, tmp_path / "a", tmp_path / "rows.jsonl")
    imported = import_trl_jsonl(out, tmp_path / "b")
    ref = imported[0].media_of("image")[0]
    assert ref.path.startswith("media/") and ref.sha256 == sha256_file(tmp_path / "a" / "media" / "red.png")
    assert load_image(ref, tmp_path / "b", imported[0].id).getpixel((0, 0)) == (255, 0, 0)
    assert imported[0].media_of("audio")[0].path.endswith(".wav")


def test_hf_dataset_round_trip(tmp_path):
    examples = make_examples(tmp_path)
    dataset = to_hf_dataset(examples, tmp_path)
    assert isinstance(dataset[0]["images"][0], Image.Image)  # what TRL's VLM trainers expect
    assert dataset[1]["audios"] == []
    assert from_hf_dataset(dataset, tmp_path) == examples


def test_hf_dataset_with_pil_images_stores_png_by_content_hash(tmp_path):
    picture = Image.new("RGBA", (5, 3), (0, 0, 255, 255))
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": [[user_turn("what is it?", n_images=1)]],
            "completion": [[assistant_turn("a blue box")]],
            "images": [[picture]],
        }
    )
    (example,) = from_hf_dataset(dataset, tmp_path)
    (ref,) = example.media
    assert example.id == "row-0" and example.answer == "a blue box"
    assert ref.path == content_path(ref.sha256, ".png") and sha256_file(tmp_path / ref.path) == ref.sha256
    assert load_image(ref, tmp_path, example.id).getpixel((4, 2)) == (0, 0, 255)


def test_pil_images_and_audio_arrays_in_plain_rows(tmp_path):
    wave = (0.5 * np.sin(np.arange(1600) / 3)).astype(np.float32)
    row = {
        "id": 7,
        "messages": [user_turn("listen and look", n_images=1, n_audio=1)],
        "images": [Image.new("L", (2, 2), 128)],
        "audios": [{"array": wave, "sampling_rate": 16000}],
    }
    example = example_from_trl(row, 0, tmp_path)
    image_ref, audio_ref = example.media
    assert example.id == "7" and image_ref.kind == "image" and audio_ref.kind == "audio"
    assert load_image(image_ref, tmp_path, example.id).getpixel((0, 0)) == (128, 128, 128)
    assert np.abs(load_audio(audio_ref, tmp_path, example.id) - wave).max() < 1e-4
    assert example_from_trl(row, 0, tmp_path).media == example.media  # same content, same file


def test_standard_string_prompt_and_completion(tmp_path):
    row = {"prompt": "what is shown?", "completion": "a dog", "images": ["a.png"], "audios": ["b.wav"]}
    example = example_from_trl(row, 0, tmp_path)
    assert example.messages == (user_turn("what is shown?", n_images=1, n_audio=1), assistant_turn("a dog"))
    assert [ref.path for ref in example.media] == ["a.png", "b.wav"]


def test_media_order_follows_placeholders(tmp_path):
    row = {
        "messages": [{"role": "user", "content": [{"type": "audio"}, {"type": "image"}, {"type": "text", "text": "?"}]}],
        "images": ["media/x.png"],
        "audios": ["media/y.wav"],
    }
    example = example_from_trl(row, 3, tmp_path)
    assert [ref.kind for ref in example.media] == ["audio", "image"]
    assert example.media[1] == MediaRef("image", "media/x.png")


def test_single_image_column_and_no_root(tmp_path):
    row = {"messages": [user_turn("hi", n_images=1)], "image": "pics/a.png"}
    assert example_from_trl(row, 0, None).media == (MediaRef("image", "pics/a.png"),)
    with pytest.raises(RecordError, match="row 0 .*needs a dataset root"):
        example_from_trl({**row, "image": Image.new("RGB", (1, 1))}, 0, None)


@pytest.mark.parametrize(
    "images, audios, kind",
    [([], None, "image"), (["a.png", "b.png"], None, "image"), (["a.png"], ["x.wav"], "audio")],
)
def test_mismatched_placeholders_name_the_row(tmp_path, images, audios, kind):
    row = {"id": "q-9", "messages": [user_turn("look", n_images=1)], "images": images, "audios": audios}
    with pytest.raises(RecordError) as info:
        example_from_trl(row, 4, tmp_path)
    message = str(info.value)
    assert "row 4" in message and "'q-9'" in message and f"'{kind}'" in message


def test_mismatch_in_jsonl_names_file_and_line(tmp_path):
    good = {"messages": [user_turn("hi")]}
    bad = {"messages": [user_turn("look", n_images=1)], "images": []}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=f"{path}:3"):
        import_trl_jsonl(path, tmp_path)


def test_mismatch_in_hf_dataset_names_the_row(tmp_path):
    dataset = datasets.Dataset.from_dict(
        {"messages": [[user_turn("a")], [user_turn("b", n_images=1)]], "images": [[], []]}
    )
    with pytest.raises(RecordError, match="row 1 .*placeholder"):
        from_hf_dataset(dataset, tmp_path)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"text": "no messages"}, "no 'messages'"),
        ({"messages": "hello"}, "list of messages"),
        ({"messages": [{"role": "user"}]}, "messages\\[0\\]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": [user_turn("hi")], "images": "a.png"}, "'images' must be a list"),
        ({"messages": [user_turn("hi", n_images=1)], "images": [3.5]}, "images\\[0\\]"),
        ({"messages": [user_turn("hi")], "meta": "{oops"}, "'meta' is not valid JSON"),
    ],
)
def test_malformed_rows_name_the_row(tmp_path, row, fragment):
    with pytest.raises(RecordError, match=f"row 2.*{fragment}"):
        example_from_trl(row, 2, tmp_path)


def test_missing_outside_file_is_a_record_error(tmp_path):
    outside = tmp_path / "elsewhere" / "gone.png"
    row = {"messages": [user_turn("hi", n_images=1)], "images": [str(outside)]}
    with pytest.raises(RecordError, match=f"row 0 .*{outside}.*does not exist"):
        example_from_trl(row, 0, tmp_path / "root")


def test_audio_files_survive_hf_round_trip(tmp_path):
    soundfile.write(tmp_path / "tone.wav", np.zeros(800, np.float32), 8000)
    example = Example("a", (user_turn("?", n_audio=1),), (MediaRef("audio", "tone.wav"),))
    dataset = to_hf_dataset([example], tmp_path)
    assert dataset[0]["audios"] == [str(tmp_path / "tone.wav")]
    assert from_hf_dataset(dataset, tmp_path) == [example]
