"""Loading media files with validation: every failure names the file and the record.

Images come back as RGB `PIL.Image`s, audio as mono float32 waveforms at the asked
sample rate. No torch here: a bad file must fail before it reaches a model.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from math import gcd
from pathlib import Path

import numpy as np
from PIL import Image

from modalign.data.records import MediaRef
from modalign.errors import UserError


class MediaError(UserError):
    """A media file is missing, unsafe or unreadable; the message names the file and the record."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_media_path(ref: MediaRef, root: str | Path, record_id: str) -> Path:
    """The file of `ref` inside `root`; refuses paths (or links) that escape the root."""
    root_real = Path(os.path.realpath(root))
    candidate = Path(ref.path) if os.path.isabs(ref.path) else root_real / ref.path
    real = Path(os.path.realpath(candidate))
    if real != root_real and root_real not in real.parents:
        raise MediaError(f"record {record_id!r}: {ref.kind} path {ref.path} escapes the dataset root {root_real}")
    if not real.is_file():
        raise MediaError(f"record {record_id!r}: {ref.kind} file {ref.path} does not exist under {root_real}")
    if ref.sha256 and sha256_file(real) != ref.sha256:
        raise MediaError(f"record {record_id!r}: {ref.kind} file {ref.path} does not match its sha256 (changed or corrupt)")
    return real


def load_image(ref: MediaRef, root: str | Path, record_id: str, max_pixels: int = 16_000_000) -> Image.Image:
    """Decode fully (so truncation shows here) and convert to RGB; transparency goes on white."""
    path = resolve_media_path(ref, root, record_id)
    where = f"record {record_id!r}: image {ref.path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MediaError(f"{where} is {width}x{height}, over the {max_pixels}-pixel limit (decompression bomb?)")
                image.load()
                return to_rgb(image, where)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MediaError(f"{where} is too large to decode safely (decompression bomb): {err}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{where} is truncated or corrupt ({err})") from None


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """RGB copy of an image of any common mode (CMYK, RGBA, LA, L, P, I;16, ...)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(1.0, float(array.max()))
        return Image.fromarray((np.clip(array / peak, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise MediaError(f"{where} has unsupported mode {image.mode} ({err})") from None


def load_audio(
    ref: MediaRef, root: str | Path, record_id: str, sample_rate: int = 16000,
    max_seconds: float = 60.0, min_seconds: float = 0.01,
) -> np.ndarray:
    """Mono float32 waveform (n_samples,) in [-1, 1] at `sample_rate` (resampled if needed)."""
    import soundfile

    path = resolve_media_path(ref, root, record_id)
    where = f"record {record_id!r}: audio {ref.path}"
    try:
        info = soundfile.info(str(path))
        if info.frames <= 0 or info.samplerate <= 0:
            raise MediaError(f"{where} holds no audio frames")
        seconds = info.frames / info.samplerate
        _check_duration(seconds, min_seconds, max_seconds, where)
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except MediaError:
        raise
    except (RuntimeError, OSError, ValueError, TypeError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise MediaError(f"{where} is truncated or corrupt ({err})") from None
    if wave.shape[0] == 0:
        raise MediaError(f"{where} holds no audio frames (truncated?)")
    _check_duration(wave.shape[0] / rate, min_seconds, max_seconds, where)
    mono = wave.mean(axis=1)
    if not np.isfinite(mono).all():
        raise MediaError(f"{where} contains NaN or infinite samples")
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def _check_duration(seconds: float, min_seconds: float, max_seconds: float, where: str) -> None:
    if seconds > max_seconds:
        raise MediaError(f"{where} lasts {seconds:.2f} s, longer than the {max_seconds:g} s limit")
    if seconds < min_seconds:
        raise MediaError(f"{where} lasts {seconds:.4f} s, shorter than the {min_seconds:g} s minimum")


def resample(wave: np.ndarray, source_rate: int, target_rate: int, taps_per_side: int = 32) -> np.ndarray:
    """Band-limited polyphase resampling with a Kaiser-windowed sinc low-pass.

    Upsample by L, low-pass at min(1/L, 1/M) of Nyquist, keep every M-th sample
    (L/M = target/source in lowest terms), as in scipy's `resample_poly`.
    """
    divisor = gcd(source_rate, target_rate)
    up, down = target_rate // divisor, source_rate // divisor
    cutoff = 1.0 / max(up, down)
    half = taps_per_side * max(up, down)
    t = np.arange(-half, half + 1)
    taps = cutoff * np.sinc(cutoff * t) * np.kaiser(2 * half + 1, 8.0) * up
    n_out = int(np.ceil(wave.shape[0] * up / down))
    # Output k sits at upsampled index k*down; only every up-th upsampled sample is non-zero,
    # so it sums input samples j with |k*down - j*up| <= half.
    centre = np.arange(n_out) * down  # (n_out,)
    first = np.maximum(0, -((half - centre) // up))  # ceil((centre - half) / up)
    j = first[:, None] + np.arange((2 * half) // up + 1)[None, :]  # (n_out, W)
    tap = centre[:, None] - j * up + half
    valid = (j < wave.shape[0]) & (tap >= 0) & (tap <= 2 * half)
    out = (wave[np.minimum(j, wave.shape[0] - 1)] * taps[np.clip(tap, 0, 2 * half)] * valid).sum(axis=1)
    return out.astype(np.float32)


def save_image(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def save_audio(wave: np.ndarray, path: str | Path, sample_rate: int) -> Path:
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, sample_rate, subtype="PCM_16")
    return path
