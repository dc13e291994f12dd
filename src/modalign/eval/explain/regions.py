"""Where in the image and when in the audio the score comes from: occlusion (Zeiler & Fergus 2014).

Captum's `Occlusion` slides a window over the processor's tensor, sets it to the baseline and
takes f(x) - f(occluded) for every window; all windows of an example go through the model in one
batch (`perturbations_per_eval`), so an image grid of g x g cells is one forward of g^2 rows.
A positive cell supports the score (hiding it lowers the score); a negative cell holds what
lowers it (for a reward: e.g. the object a caption gets wrong).

Fill `others` marginalises a cell over the data instead of blanking it (prediction difference
analysis, Zintgraf et al. 2017): the cell is replaced by the same cell of K other images in turn
and the value is f(x) - mean_k f(x with other k's cell). A cell that a correct claim rests on
loses its evidence; a cell where the answer claims something absent gets, on average, what other
scenes hold there - sometimes what the answer claims - so the score rises (a negative cell). A
grey or background fill cannot show an object that is not there.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from modalign.eval.explain.target import ExplainError, Subject, Target, captum_attr, repeat_rows

IMAGE_BASELINES = {"mean": "each cell in turn set to pixel_values 0 (the processor's mean colour)",
                   "median": "each cell in turn set to the image's median colour (a flat background)",
                   "others": "each cell in turn set to the same cell of {k} other example(s)' images in turn (mean "
                             "score)"}
AUDIO_BASELINE = "each time window in turn set to input_values 0 (silence)"


def image_occlusion(target: Target, subject: Subject, grid: int = 3, image: int = 0, fill: str = "mean",
                    contrast: Subject | None = None, others: Sequence[Subject] = (),
                    keep_samples: bool = False) -> dict[str, Any]:
    """A grid x grid heatmap of f(x) - f(cell occluded) over image `image` of the subject.

    `fill`: what an occluded cell shows (IMAGE_BASELINES): the processor's mean colour, the image's median
    colour per channel (the background of a mostly flat image: the cell looks empty rather than grey), or
    (`others`) the same cell of each of `others`' image `image` in turn, the value then f(x) minus the mean
    score over them (all K x grid^2 variants in one batch); `keep_samples` adds each other image's heatmap.
    `contrast`: the same example with another answer (e.g. the reference): the heatmap is then of
    f(answer) - f(contrast answer), the regions that make the model score the answer differently from the
    contrast (a contrastive explanation, Jacovi et al. 2021), free of what moves both scores alike.
    """
    if fill not in IMAGE_BASELINES:
        raise ExplainError(f"occlusion fill {fill!r}: use {' or '.join(IMAGE_BASELINES)}")
    if subject.pixel_values is None or subject.pixel_values.shape[0] <= image:
        raise ExplainError(f"record {subject.example_id!r} has no image {image} to occlude")
    pixels = subject.pixel_values  # (N_img, C, H, W)
    height, width = pixels.shape[-2:]
    (win_h, stride_h), (win_w, stride_w) = _windows(height, grid), _windows(width, grid)

    def forward(variants: torch.Tensor) -> torch.Tensor:  # (K, C, H, W): variants of image `image`
        rows = variants.shape[0]
        stacked = pixels.repeat(rows, 1, 1, 1)
        stacked[image :: pixels.shape[0]] = variants  # row r's images are block r
        kwargs = {"pixel_values": stacked}
        if subject.input_values is not None:
            kwargs["input_values"] = subject.input_values.repeat(rows, *([1] * (subject.input_values.dim() - 1)))
        scores = target(repeat_rows(subject.input_ids, rows), repeat_rows(subject.answer_mask, rows), **kwargs)
        if contrast is not None:
            scores = scores - target(repeat_rows(contrast.input_ids, rows), repeat_rows(contrast.answer_mask, rows),
                                     **kwargs)
        return scores

    picture = pixels[image : image + 1]  # (1, C, H, W)
    baseline = _fill_baseline(fill, picture, subject, others, image)  # a float or (K, C, H, W)
    inputs = picture if isinstance(baseline, float) else picture.expand_as(baseline).clone()  # (K, C, H, W)
    # Captum's batch: row k of the inputs is occluded with row k of the baselines (the other image k's cell)
    attributions = _occlude(forward, inputs, (pixels.shape[1], win_h, win_w), (pixels.shape[1], stride_h, stride_w),
                            grid * grid, baseline)  # (K, C, H, W)
    centres_h, centres_w = _centres(height, win_h, stride_h, grid), _centres(width, win_w, stride_w, grid)
    cells = attributions[:, :, centres_h][..., centres_w].mean(1)  # (K, grid, grid): each cell's centre pixel
    heat = cells.mean(0).tolist()  # f(x) - mean_k f(cell from sample k)
    out = {"grid": grid, "heatmap": heat, "top_cell": _argmax(heat, abs),
           "most_negative_cell": _argmax(heat, lambda v: -v),
           "baseline": IMAGE_BASELINES[fill].format(k=inputs.shape[0])}
    if keep_samples and fill == "others":
        out["sample_heatmaps"] = cells.tolist()
    if contrast is not None:
        out["contrast"] = contrast.answer
    return out


def _fill_baseline(fill: str, picture: torch.Tensor, subject: Subject, others: Sequence[Subject], image: int):
    """What occluded cells show: 0.0 (mean colour), the image's median colour (1, C, H, W), or the images of
    `others` at index `image` with the picture's shape and not the picture itself (K, C, H, W)."""
    if fill == "mean":
        return 0.0
    if fill == "median":
        return picture.flatten(2).median(-1).values[..., None, None].expand_as(picture)
    pool = [o.pixel_values[image] for o in others
            if o.pixel_values is not None and o.pixel_values.shape[0] > image
            and o.pixel_values.shape[1:] == picture.shape[1:]
            and not torch.equal(o.pixel_values[image], picture[0])]  # the same image would change nothing
    if not pool:
        raise ExplainError(f"occlusion fill others: no other example has a different image {image} of the size of "
                           f"record {subject.example_id!r}'s ({tuple(picture.shape[1:])}); give other examples "
                           "(background > 0) or use fill mean or median")
    return torch.stack(pool)


def audio_occlusion(target: Target, subject: Subject, windows: int = 10, clip: int = 0) -> dict[str, Any]:
    """f(x) - f(window silenced) for `windows` windows over the time axis (the last) of clip `clip`."""
    if subject.input_values is None or subject.input_values.shape[0] <= clip:
        raise ExplainError(f"record {subject.example_id!r} has no audio clip {clip} to occlude")
    audio = subject.input_values  # (N_aud, S) waveforms, or (N_aud, ..., T) features
    length = audio.shape[-1]
    window, stride = _windows(length, windows)

    def forward(variants: torch.Tensor) -> torch.Tensor:
        rows = variants.shape[0]
        stacked = audio.repeat(rows, *([1] * (audio.dim() - 1)))
        stacked[clip :: audio.shape[0]] = variants
        kwargs = {"input_values": stacked}
        if subject.pixel_values is not None:
            kwargs["pixel_values"] = subject.pixel_values.repeat(rows, 1, 1, 1)
        return target(repeat_rows(subject.input_ids, rows), repeat_rows(subject.answer_mask, rows), **kwargs)

    other = tuple(audio.shape[1:-1])  # whole feature axes, windows over time only
    attribution = _occlude(forward, audio[clip : clip + 1], (*other, window), (*[1] * len(other), stride), windows,
                           0.0)[0]
    centres = _centres(length, window, stride, windows)
    curve = [float(attribution[..., t].mean()) for t in centres]
    return {"windows": windows, "curve": curve, "window_samples": window, "top_window": _argmax([curve], abs)[1],
            "baseline": AUDIO_BASELINE}


def _occlude(forward, inputs: torch.Tensor, window: tuple, strides: tuple, per_eval: int, baseline) -> torch.Tensor:
    with torch.no_grad():
        return captum_attr().Occlusion(forward).attribute(inputs, sliding_window_shapes=window, strides=strides,
                                                          baselines=baseline,
                                                          perturbations_per_eval=per_eval)


def _windows(length: int, count: int) -> tuple[int, int]:
    """(window, stride) giving exactly `count` windows that cover all of `length`: stride length // count and the
    window as long as the remainder needs (neighbours overlap by length % count when `count` does not divide it;
    each window keeps a part of its own, where `_centres` reads it)."""
    if count < 1 or count > length:
        raise ExplainError(f"cannot cut an axis of {length} into {count} windows")
    stride = length // count
    window = length - stride * (count - 1)  # the last window ends at `length`: no sample is never occluded
    if count > 1 and window - stride >= stride:  # length % count >= length // count
        raise ExplainError(f"cannot cut an axis of {length} into {count} windows that each keep a part of their own: "
                           f"use at most {math.isqrt(length)} windows or a divisor of {length}")
    return window, stride


def _centres(length: int, window: int, stride: int, count: int) -> list[int]:
    """Per window the middle of the part no other window covers (Captum averages overlapping windows' values)."""
    centres = []
    for i in range(count):
        start = i * stride + (window - stride if i > 0 else 0)  # past the previous window's end
        end = (i + 1) * stride if i < count - 1 else length  # before the next window's start
        centres.append((start + end - 1) // 2)
    return centres


def _argmax(heat: list[list[float]], key) -> list[int]:
    """[row, column] of the cell with the largest key(value)."""
    cells = [(key(v), r, c) for r, row in enumerate(heat) for c, v in enumerate(row)]
    _, row, column = max(cells)
    return [row, column]
