"""Attribution methods on built-in models built so that the right answer is known.

Each test sets a tiny built-in VLM's weights (or swaps one of its media encoders) so that the score
reads only one modality, one image cell, one audio window or one token, then checks that the
attribution finds it and gives (near) nothing to the rest.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from modalign.eval.explain import (ExplainError, Subject, Target, ablation, audio_occlusion, encode_subject,
                                   image_occlusion, integrated_gradients, token_credit)
from modalign.models.inputs import MediaStore
from modalign.reward.model import ScalarHeadModel
from test_tinyvlm import make_policy


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from modalign.data.dataset import read_examples
    from modalign.data.shapes import build_shapes_dataset

    root = build_shapes_dataset(tmp_path_factory.mktemp("explain") / "data", n_train=1, n_test=2, seed=0)
    return root, read_examples(root, "test")


def reward_reading(policy, keep: str) -> ScalarHeadModel:
    """A reward model whose score depends on `keep` ('audio' or 'image') only: the other projector and every
    token embedding are zero, so the other medium and the text (masked or not) give the decoder the same input."""
    model = policy.model
    with torch.no_grad():
        drop = model.image_projector if keep == "audio" else model.audio_projector
        for parameter in [*drop.parameters(), model.embed_tokens.weight]:
            parameter.zero_()
    torch.manual_seed(1)
    return ScalarHeadModel(model, likelihood_feature=False).eval()


def subject_of(policy, shapes, index: int = 0, answer: str | None = None):
    root, examples = shapes
    example = examples[index]
    config = policy.model.config
    return encode_subject(policy.processor, MediaStore(root), example, answer or example.answer,
                          media_token_ids=[config.image_token_id, config.audio_token_id])


@pytest.mark.parametrize("keep, dropped", [("audio", "image"), ("image", "audio")])
def test_modality_share_is_one_for_the_only_medium_read(shapes, keep, dropped):
    policy = make_policy()
    target = Target(reward_reading(policy, keep), "reward")
    subject = subject_of(policy, shapes)
    pad = policy.processor.tokenizer.pad_token_id
    by_ablation = ablation(target, subject, pad)
    assert abs(by_ablation["delta"][keep]) > 1e-4  # the medium moves the score
    assert by_ablation["share"][keep] > 0.999
    assert by_ablation["share"][dropped] < 1e-3 and by_ablation["share"]["text"] < 1e-3
    assert "silent audio" in by_ablation["baseline"]["audio"]
    by_swap = ablation(target, subject, pad, others=[subject_of(policy, shapes, 5)])  # the other scene's media
    assert by_swap["share"][keep] > 0.999 and "1 other example" in by_swap["baseline"][keep]
    by_ig = integrated_gradients(target, subject, pad, steps=8)
    assert by_ig["share"][keep] > 0.99
    # completeness: the attributions add up to f(x) - f(baseline), here the ablation of the medium read
    assert by_ig["attribution"][keep] == pytest.approx(by_ablation["delta"][keep], rel=0.05, abs=1e-3)


class CellReader(nn.Module):
    """An image encoder that sees one cell of a 3 x 3 grid: its mean colour, on every patch token."""

    def __init__(self, width: int, patches: int, row: int, column: int) -> None:
        super().__init__()
        self.row, self.column, self.patches = row, column, patches
        self.project = nn.Linear(3, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, P, width)
        side = pixels.shape[-1] // 3
        cell = pixels[:, :, self.row * side : (self.row + 1) * side, self.column * side : (self.column + 1) * side]
        return self.project(cell.mean((2, 3))).unsqueeze(1).expand(-1, self.patches, -1)


@pytest.mark.parametrize("kind", ["reward", "policy"])
def test_occlusion_top_cell_is_the_only_cell_read(shapes, kind):
    policy = make_policy()
    config = policy.model.config
    torch.manual_seed(0)
    policy.model.vision = CellReader(config.vision_hidden_size, config.image_seq_length, row=0, column=2)
    model = ScalarHeadModel(policy.model, likelihood_feature=False) if kind == "reward" else policy.model
    target = Target(model, kind, token=0 if kind == "policy" else None)
    subject = subject_of(policy, shapes)
    result = image_occlusion(target, subject, grid=3)
    heat = torch.tensor(result["heatmap"])
    assert result["top_cell"] == [0, 2]
    assert heat[0, 2].abs() > 1e-5
    others = torch.cat([heat.flatten()[:2], heat.flatten()[3:]])
    assert others.abs().max() < 1e-6
    if kind == "reward":  # contrastive: against itself nothing differs; against another answer only the cell read
        itself = torch.tensor(image_occlusion(target, subject, contrast=subject)["heatmap"])
        assert itself.abs().max() < 1e-6
        versus = image_occlusion(target, subject, contrast=subject_of(policy, shapes, answer="one low beep."))
        assert versus["top_cell"] == [0, 2]
        heat = torch.tensor(versus["heatmap"]).flatten()
        assert torch.cat([heat[:2], heat[3:]]).abs().max() < 1e-6


class RedInCell:
    """A reward that reads only how red one cell of a 3 x 3 grid is (the caption claims a red object there):
    mean red minus mean green and blue over the cell, per row of the batch."""

    def __init__(self, row: int, column: int) -> None:
        self.row, self.column = row, column

    def __call__(self, input_ids, answer_mask, pixel_values, input_values=None) -> torch.Tensor:
        side = pixel_values.shape[-1] // 3
        rows = slice(self.row * side, (self.row + 1) * side)
        columns = slice(self.column * side, (self.column + 1) * side)
        colour = pixel_values[:, :, rows, columns].mean((2, 3))  # (N, 3)
        return colour[:, 0] - colour[:, 1:].mean(1)


def scene_image(objects: dict[tuple[int, int], tuple[float, float, float]]) -> torch.Tensor:
    """A (1, 3, 48, 48) white image with a square of the given colour in each given (row, column) cell."""
    image = torch.ones(1, 3, 48, 48)
    for (row, column), colour in objects.items():
        square = (0, slice(None), slice(row * 16 + 4, row * 16 + 12), slice(column * 16 + 4, column * 16 + 12))
        image[square] = torch.tensor(colour)[:, None, None]
    return image


def test_occlusion_fill_others_finds_a_claimed_object_that_is_not_there():
    """The caption claims a red object in the middle right cell, which is empty: blanking the empty cell changes
    nothing, filling it from other scenes (some of which hold a red object there) raises the score there only."""
    red, blue = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)
    ids = torch.tensor([[5, 6, 7]])
    answer = torch.tensor([[False, True, True]])

    def subject(image: torch.Tensor) -> Subject:
        return Subject("scene", "a red square on the right", ids, torch.ones_like(ids), answer, image, None,
                       torch.zeros_like(answer))

    own = subject(scene_image({(1, 0): blue}))
    others = [subject(scene_image(objects)) for objects in
              ({(1, 2): red}, {(1, 1): red}, {(1, 2): blue, (1, 0): red}, {(1, 2): red, (0, 0): blue})]
    target = RedInCell(1, 2)
    for fill in ("mean", "median"):  # white stays white or turns grey: no red appears, the map is flat
        assert torch.tensor(image_occlusion(target, own, fill=fill)["heatmap"]).abs().max() < 1e-6
    result = image_occlusion(target, own, fill="others", others=others, keep_samples=True)
    heat = torch.tensor(result["heatmap"])
    assert result["most_negative_cell"] == [1, 2] and result["top_cell"] == [1, 2]
    # f(x) - mean_k f(x with other k's cell): other scenes 1 and 4 put a red square (8 x 8 of 16 x 16) there
    replaced = torch.cat([target(ids, answer, _paste(own.pixel_values, o.pixel_values, 1, 2)) for o in others])
    expected = float(target(ids, answer, own.pixel_values)) - float(replaced.mean())
    assert heat[1, 2] == pytest.approx(expected, abs=1e-5) and expected < -0.1
    assert torch.cat([heat.flatten()[:5], heat.flatten()[6:]]).abs().max() < 1e-6  # nothing else is read
    samples = torch.tensor(result["sample_heatmaps"])  # (4, 3, 3): one heatmap per other image
    assert samples.shape == (4, 3, 3) and torch.allclose(samples.mean(0), heat, atol=1e-6)
    assert samples[1, 1, 2].abs() < 1e-6  # other scene 2 holds nothing in that cell
    assert "4 other example" in result["baseline"]
    with pytest.raises(ExplainError, match="fill others: no other example has a different image"):
        image_occlusion(target, own, fill="others", others=[subject(torch.ones(1, 3, 32, 32)), own])


def _paste(image: torch.Tensor, other: torch.Tensor, row: int, column: int) -> torch.Tensor:
    """`image` with cell (row, column) of a 3 x 3 grid taken from `other`."""
    out = image.clone()
    out[..., row * 16 : (row + 1) * 16, column * 16 : (column + 1) * 16] = \
        other[..., row * 16 : (row + 1) * 16, column * 16 : (column + 1) * 16]
    return out


class CornerReader(nn.Module):
    """An image encoder that sees only the last 2 x 2 pixels (bottom right) of any image."""

    def __init__(self, width: int, patches: int) -> None:
        super().__init__()
        self.patches = patches
        self.project = nn.Linear(3, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, P, width)
        return self.project(pixels[:, :, -2:, -2:].mean((2, 3))).unsqueeze(1).expand(-1, self.patches, -1)


def test_occlusion_covers_an_image_the_grid_does_not_divide():
    """50 pixels in 3 cells: the last cell reaches the last pixel (it stopped at 49 before, a blank heatmap)."""
    policy = make_policy()
    config = policy.model.config
    torch.manual_seed(0)
    policy.model.vision = CornerReader(config.vision_hidden_size, config.image_seq_length)
    target = Target(ScalarHeadModel(policy.model, likelihood_feature=False), "reward")
    ids = torch.tensor([[config.image_token_id] * config.image_seq_length + [7, 8, 9]])
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[0, -2:] = True
    subject = Subject("odd", "x", ids, torch.ones_like(ids), answer, torch.randn(1, 3, 50, 50), None,
                      torch.zeros_like(answer))
    heat = torch.tensor(image_occlusion(target, subject, grid=3)["heatmap"])
    assert heat[2, 2].abs() > 1e-5
    assert heat.flatten()[:-1].abs().max() < 1e-6
    with pytest.raises(ExplainError, match="at most 7 windows"):
        image_occlusion(target, subject, grid=9)  # stride 5, windows of 10: each overlaps both neighbours entirely


class WindowReader(nn.Module):
    """An audio encoder that hears only samples [start, end): their energy, on every audio token."""

    def __init__(self, width: int, frames: int, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end, self.frames = start, end, frames
        self.project = nn.Linear(1, width)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:  # (N, S) -> (N, T, width)
        energy = waves[:, self.start : self.end].pow(2).mean(1, keepdim=True)
        return self.project(energy).unsqueeze(1).expand(-1, self.frames, -1)


def test_audio_curve_peaks_at_the_only_window_heard(shapes):
    policy = make_policy()
    config = policy.model.config
    torch.manual_seed(0)
    # 10 windows over the 16000-sample clip: window 3 is samples 4800..6400; the reader hears 5000..6000
    policy.model.audio = WindowReader(config.audio_hidden_size, config.audio_seq_length, 5000, 6000)
    target = Target(ScalarHeadModel(policy.model, likelihood_feature=False), "reward")
    subject = subject_of(policy, shapes)
    subject = subject.__class__(**{**subject.__dict__, "input_values": torch.randn_like(subject.input_values)})
    result = audio_occlusion(target, subject, windows=10)
    curve = torch.tensor(result["curve"])
    assert result["top_window"] == 3
    assert curve[3].abs() > 1e-5
    assert torch.cat([curve[:3], curve[4:]]).abs().max() < 1e-6


def test_token_credit_goes_to_the_token_the_reward_reads(shapes):
    policy = make_policy()
    tokenizer = policy.processor.tokenizer
    answer = "two high beeps."
    subject = subject_of(policy, shapes, answer=answer)
    answer_ids = subject.input_ids[0, subject.answer_positions].tolist()
    read = answer_ids[1]  # a token inside the answer (not the last, which the head reads anyway)
    model = policy.model
    with torch.no_grad():
        for parameter in [*model.image_projector.parameters(), *model.audio_projector.parameters()]:
            parameter.zero_()
        row = model.embed_tokens.weight[read].clone()
        model.embed_tokens.weight.zero_()
        model.embed_tokens.weight[read] = row  # only this token differs from padding for the decoder
        model.embed_positions.weight.zero_()
    target = Target(ScalarHeadModel(model, likelihood_feature=False), "reward")
    credit = torch.tensor(token_credit(target, subject, tokenizer)["leave_one_out"])
    assert int(credit.abs().argmax()) == 1
    # deleting any other token leaves the decoder the same input up to one key fewer to attend to
    others = torch.cat([credit[:1], credit[2:]])
    assert others.abs().max() < credit[1].abs() / 3


def test_dense_token_credit_sums_to_the_score(shapes):
    policy = make_policy()
    model = ScalarHeadModel(policy.model, likelihood_feature=True).eval()
    with torch.no_grad():
        model.head.weight.normal_()
    target = Target(model, "reward")
    subject = subject_of(policy, shapes)
    result = token_credit(target, subject, policy.processor.tokenizer)
    assert len(result["dense"]) == len(result["tokens"]) == len(subject.answer_positions)
    with torch.no_grad():
        score = target(subject.input_ids, subject.answer_mask, **subject.media())
    assert sum(result["dense"]) == pytest.approx(float(score), rel=1e-4, abs=1e-5)


def test_policy_token_beyond_the_answer_is_one_clear_error(shapes):
    policy = make_policy()
    subject = subject_of(policy, shapes, answer="two.")
    with pytest.raises(ExplainError, match="token=40 but the answer has"):
        Target(policy.model, "policy", token=40).check_token(subject)


@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rm") / "model"
    policy = make_policy()
    ScalarHeadModel(policy.model, likelihood_feature=True).save(folder, policy.processor)
    return folder


def test_explain_recipe_writes_attributions_figures_and_report(shapes, reward_folder, tmp_path):
    from modalign.recipes.explain import ExplainConfig, run_explain

    root, _ = shapes
    out = tmp_path / "explain"
    summary = run_explain(ExplainConfig(model=str(reward_folder), data=str(root), out=str(out), max_examples=6,
                                        grid=2, audio_windows=4, ig_steps=4, ablation_baseline="others",
                                        background=1, contrast="reference", occlusion_fill="median"))
    assert summary["n_explained"] == 6 and summary["seconds_per_example"] > 0
    data = json.loads((out / "attributions.json").read_text())
    first = data["examples"][0]
    assert set(first) >= {"ablation", "ig", "occlusion", "audio", "tokens", "figures"}
    assert len(first["occlusion"]["heatmap"]) == 2 and len(first["audio"]["curve"]) == 4
    assert sum(first["ablation"]["share"].values()) == pytest.approx(1.0)
    # the background is the next example of another scene (a scene's questions share its media)
    assert "1 other example" in first["ablation"]["baseline"]["image"] and first["occlusion"]["contrast"]
    assert "median colour" in first["occlusion"]["baseline"]
    for relative in first["figures"].values():
        assert (out / relative).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "<h2>Explanations</h2>" in page and "data:image/png;base64" in page and first["example_id"] in page


def test_explain_recipe_fills_occluded_cells_from_other_examples(shapes, reward_folder, tmp_path):
    from modalign.recipes.explain import ExplainConfig, run_explain

    root, _ = shapes
    run_explain(ExplainConfig(model=str(reward_folder), data=str(root), out=str(tmp_path / "x"), max_examples=6,
                              methods="occlusion", grid=2, occlusion_fill="others", background=1))
    first = json.loads((tmp_path / "x" / "attributions.json").read_text())["examples"][0]
    assert set(first) >= {"occlusion"} and "ablation" not in first
    assert "1 other example" in first["occlusion"]["baseline"]  # the next example of another scene
    assert any(abs(v) > 0 for row in first["occlusion"]["heatmap"] for v in row)


def test_explain_cli_bad_inputs_are_one_error_line(shapes, reward_folder, tmp_path):
    from typer.testing import CliRunner

    from modalign.cli import app

    root, _ = shapes
    runner = CliRunner()
    cases = {
        ("--set", "methods=ablation,saliency"): "methods='ablation,saliency'",
        ("--set", "head=safety"): "head='safety'",
        ("--set", "answers=/nonexistent/samples.jsonl"): "answers: no samples file",
        ("--set", "occlusion_fill=grey"): "occlusion_fill='grey': use mean, median or others",
        ("--set", "occlusion_fill=others", "--set", "max_examples=1"): "explain at least 2 examples",
    }
    for extra, message in cases.items():
        result = runner.invoke(app, ["explain", "--model", str(reward_folder), "--data", str(root),
                                     "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and message in result.output
        assert "Traceback" not in result.output


def test_hugging_face_image_model_explains_and_refuses_audio(shapes, tmp_path):
    """One code path: a tiny LLaVA (image only, fast path) gets the same attributions; audio is one clear error."""
    from hf_tiny import build_family, media_only_dataset, shapes_corpus
    from modalign.recipes.explain import ExplainConfig, run_explain

    root, _ = shapes
    images = media_only_dataset(root, tmp_path / "images", "image")
    folder = build_family("llava", tmp_path / "llava", shapes_corpus(root))
    with pytest.raises(ExplainError, match="has no audio input .* drop audio from methods"):
        run_explain(ExplainConfig(model=str(folder), data=str(images), out=str(tmp_path / "a"), methods="audio"))
    assert not (tmp_path / "a").exists()  # refused before the run folder is written
    run_explain(ExplainConfig(model=str(folder), data=str(images), out=str(tmp_path / "b"), max_examples=1,
                              methods="ablation,ig,occlusion", grid=2, ig_steps=4))
    first = json.loads((tmp_path / "b" / "attributions.json").read_text())["examples"][0]
    assert set(first["ablation"]["share"]) == set(first["ig"]["share"]) == {"image", "text"}
    assert len(first["occlusion"]["heatmap"]) == 2
    # the fill from other examples' cells on the same Hugging Face path: one other scene's image here
    run_explain(ExplainConfig(model=str(folder), data=str(images), out=str(tmp_path / "c"), max_examples=2,
                              task="caption", methods="occlusion", grid=2, occlusion_fill="others", background=1))
    filled = json.loads((tmp_path / "c" / "attributions.json").read_text())["examples"][0]["occlusion"]
    assert filled["baseline"].startswith("each cell in turn set to the same cell of 1 other")
    assert len(filled["heatmap"]) == 2 and all(math.isfinite(v) for row in filled["heatmap"] for v in row)
