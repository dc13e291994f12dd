"""SFT batches grouped by shared media, and media encoded once per distinct item: same numbers, less work."""

from __future__ import annotations

import torch

from modalign.data.records import Example
from modalign.recipes.sft import batch_at, media_groups
from test_tinyvlm import make_policy


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.vision.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def test_repeated_media_are_encoded_once_with_the_same_features_and_gradients(monkeypatch):
    model = make_policy().model.eval()
    torch.manual_seed(0)
    images = torch.randn(3, 3, 48, 48)[[0, 1, 0, 2, 1]]  # 5 items, 3 distinct
    clips = torch.randn(2, 16000)[[1, 1, 0, 1, 0]] * 0.1
    calls = []
    vision_forward = model.vision.forward
    monkeypatch.setattr(model.vision, "forward", lambda x: calls.append(x.shape[0]) or vision_forward(x))
    ids = torch.tensor([[model.config.image_token_id] * model.config.image_seq_length
                        + [model.config.audio_token_id] * model.config.audio_seq_length] * 5)
    media = model.encode_media(ids, images, clips)
    assert calls == [3]
    weights = torch.randn(media.image.shape)
    (media.image * weights).sum().backward()
    shared = _grads(model)
    each = model.image_projector(vision_forward(images))  # every copy encoded on its own
    (each * weights).sum().backward()
    assert torch.allclose(media.image, each, atol=1e-5)
    assert torch.allclose(media.audio, model.audio_projector(model.audio(clips)), atol=1e-5)
    for a, b in zip(shared, _grads(model), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _example(i: int, scene: int | None) -> Example:
    content = [{"type": "image"}] if scene is not None else []
    media = [{"kind": "image", "path": f"img/{scene}.png"}] if scene is not None else []
    return Example.from_dict({"id": f"e{i}", "media": media, "messages": [
        {"role": "user", "content": [*content, {"type": "text", "text": "describe"}]},
        {"role": "assistant", "content": "a circle"}]})


def test_grouped_batches_keep_scenes_together_and_cover_every_example_once_per_epoch():
    examples = [_example(i, i % 4 if i < 20 else None) for i in range(22)]  # 4 scenes of 5, 2 without media
    groups = media_groups(examples)
    assert sorted(len(g) for g in groups) == [1, 1, 5, 5, 5, 5]
    batches = [batch_at(list(range(22)), step, 5, 4, seed=3, groups=groups) for step in range(4)]
    seen = [i for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == 20  # the last 2 of the epoch's order are left out, as without groups
    scene_of = {i: e.media[0].path if e.media else None for i, e in enumerate(examples)}
    runs = [scene_of[i] for i in seen]
    changes = sum(1 for a, b in zip(runs, runs[1:]) if a != b)
    assert changes <= 5  # whole groups, one after the other
    assert batch_at(list(range(22)), 4, 5, 4, seed=3, groups=groups) != batches[0]  # a new order each epoch


def test_chunked_groups_hold_at_most_the_chunk_size_of_a_scene_and_cover_every_example_once_per_epoch():
    examples = [_example(i, i % 4) for i in range(20)]  # 4 scenes of 5
    groups = media_groups(examples)
    scene_of = {i: e.media[0].path for i, e in enumerate(examples)}
    epochs = []
    for epoch in range(2):
        batches = [batch_at(list(range(20)), epoch * 4 + step, 5, 4, seed=3, groups=groups, group_size=2)
                   for step in range(4)]
        seen = [i for batch in batches for i in batch]
        assert sorted(seen) == list(range(20))
        runs, length = [], 1  # lengths of the runs of one scene in the epoch's order
        for a, b in zip(seen, seen[1:]):
            if scene_of[a] == scene_of[b]:
                length += 1
            else:
                runs.append(length)
                length = 1
        runs.append(length)
        assert max(runs) <= 4  # two chunks of one scene may meet, never more
        assert len(runs) >= 10  # 12 chunks (2 + 2 + 1 per scene), mixed
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new cut and order each epoch
    whole = [batch_at(list(range(20)), step, 5, 4, seed=3, groups=groups) for step in range(4)]
    assert whole == [batch_at(list(range(20)), step, 5, 4, seed=3, groups=groups, group_size=0) for step in range(4)]


def test_a_negative_chunk_size_is_one_config_error_before_any_work(tmp_path):
    import pytest

    from modalign.config import ConfigError
    from modalign.recipes.sft import SFTConfig, run_sft

    with pytest.raises(ConfigError, match="media_group_size=-1"):
        run_sft(SFTConfig(out=str(tmp_path / "run"), group_by_media=True, media_group_size=-1))
    assert not (tmp_path / "run").exists()


def test_distinct_media_are_encoded_as_given_and_copies_with_equal_sums_are_still_found():
    from modalign.models.tinyvlm.modeling import once_per_item

    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return x * 2

    items = torch.arange(12.0).view(4, 3)
    assert torch.equal(once_per_item(encode, items), items * 2) and calls == [4]
    same_sum = torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0]])  # rows 0 and 2 equal; row 1 only shares the sum
    assert torch.equal(once_per_item(encode, same_sum), same_sum * 2) and calls == [4, 2]
