"""Media items of imported rows (paths, PIL images, HF `datasets` dicts, audio arrays) as `MediaRef`s.

Where an item ends up is a `MediaTarget`:

- files already inside the target root are referenced where they are (dataset-relative path);
- everything else - in-memory images and audio, embedded bytes, files outside the root - is
  written once under `root/media/<sha256[:2]>/<sha256>.<ext>` (`content_path`): the same content
  always gets the same name, so importing it twice, or from two rows, stores it once;
- with `root=None` files are referenced in place by absolute path (nothing is written, in-memory
  media are refused): how `dpo` / `reward` read a TRL preference file without copying its media.

Relative paths in rows resolve against `base`, the source file's folder. New files go to
`staging` (a temp folder the caller renames into place), so a failed import leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modalign.data.records import MediaRef, RecordError

IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
AUDIO_SUFFIXES = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3", "AIFF": ".aiff"}


@dataclass(frozen=True)
class MediaTarget:
    """Where imported media go (see the module docstring).

    root: folder the refs are relative to (a dataset or store folder); None: reference files in place.
    base: folder relative paths in rows resolve against; None: they already are `root`-relative.
    staging: folder new files are written to before the caller moves them into `root` (None: `root`).
    """

    root: Path | None
    base: Path | None = None
    staging: Path | None = None

    @classmethod
    def of(cls, root: str | Path | None, base: str | Path | None = None,
           staging: str | Path | None = None) -> "MediaTarget":
        return cls(_absolute(root), _absolute(base), _absolute(staging))


def _absolute(folder: str | Path | None) -> Path | None:
    return None if folder is None else Path(os.path.abspath(folder))


def content_path(digest: str, suffix: str) -> str:
    """Dataset-relative path of a content-addressed file: `media/ab/ab12....png` (256 subfolders)."""
    return f"media/{digest[:2]}/{digest}{suffix}"


def media_ref(kind: str, item: Any, target: MediaTarget, label: str) -> MediaRef:
    """A `MediaRef` for one media item: a path, a PIL image, or an HF `datasets` dict."""
    if isinstance(item, (str, os.PathLike)):
        return _path_ref(kind, Path(item), target, label)
    if isinstance(item, Mapping):
        return _dict_ref(kind, item, target, label)
    if kind == "image" and _is_pil_image(item):
        return _store(kind, _png_bytes(item), target, label)
    if kind == "audio" and isinstance(item, np.ndarray):
        raise RecordError(f"{label}: an audio array needs its rate: give {{'array': ..., 'sampling_rate': ...}}")
    raise RecordError(f"{label}: cannot read a {kind} from {type(item).__name__}")


def _dict_ref(kind: str, item: Mapping[str, Any], target: MediaTarget, label: str) -> MediaRef:
    """HF `datasets` storage: `{"bytes", "path"}` (undecoded) or `{"array", "sampling_rate"}`."""
    path = str(item.get("path") or "")
    if path and os.path.isfile(_resolved(Path(path), target)):  # a local file: keep its path
        return _path_ref(kind, Path(path), target, label)
    if item.get("bytes"):
        return _store(kind, bytes(item["bytes"]), target, label)
    if path:
        return _path_ref(kind, Path(path), target, label)
    if kind == "audio" and item.get("array") is not None and item.get("sampling_rate"):
        return _store(kind, _wav_bytes(item["array"], int(item["sampling_rate"]), label), target, label)
    raise RecordError(f"{label}: a {kind} entry needs 'path', 'bytes' or 'array' + 'sampling_rate'")


def _resolved(path: Path, target: MediaTarget) -> Path:
    """`path` made absolute: relative ones against `base`, else `root`, else the working folder."""
    if path.is_absolute():
        return Path(os.path.normpath(path))
    anchor = target.base or target.root or Path.cwd()
    return Path(os.path.normpath(anchor / path))


def _path_ref(kind: str, path: Path, target: MediaTarget, label: str) -> MediaRef:
    if target.base is None and (target.root is None or not path.is_absolute()):
        return MediaRef(kind, path.as_posix())  # type: ignore[arg-type]  # already dataset-relative
    full = _resolved(path, target)
    relative = None if target.root is None else _relative_inside(full, target.root)
    if relative is not None and (target.base is None or full.is_file()):
        return MediaRef(kind, relative)  # type: ignore[arg-type]
    if not full.is_file():
        raise RecordError(f"{label}: {kind} file {full} does not exist")
    if target.root is None:
        return MediaRef(kind, str(full))  # type: ignore[arg-type]  # referenced in place
    return _store(kind, full.read_bytes(), target, label, suffix=full.suffix.lower())


def _relative_inside(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (posix) if it lies inside, comparing plain then real paths."""
    for resolve in (os.path.abspath, os.path.realpath):
        full, base = resolve(path), resolve(root)
        if full != base and os.path.commonpath([full, base]) == base:
            return Path(os.path.relpath(full, base)).as_posix()
    return None


def _store(kind: str, data: bytes, target: MediaTarget, label: str, suffix: str = "") -> MediaRef:
    """Write `data` once under its content path; the ref carries the digest."""
    if target.root is None:
        raise RecordError(f"{label}: an in-memory or outside {kind} needs a dataset root to be written into")
    suffix = _checked_suffix(kind, data, suffix, label)
    digest = hashlib.sha256(data).hexdigest()
    relative = content_path(digest, suffix)
    if not (target.root / relative).is_file():  # stored by an earlier import: nothing to write
        destination = (target.staging or target.root) / relative
        if not destination.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            tmp = destination.with_name(f"{destination.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(destination)
    return MediaRef(kind, relative, sha256=digest)  # type: ignore[arg-type]


def _checked_suffix(kind: str, data: bytes, suffix: str, label: str) -> str:
    """The file suffix of `data`'s real format (its header is read), so a non-image fails here, not in training."""
    from modalign.data.media import MediaError

    try:
        if kind == "image":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                return IMAGE_SUFFIXES.get(image.format or "", suffix or f".{(image.format or 'img').lower()}")
        import soundfile

        audio_format = soundfile.info(io.BytesIO(data)).format
        return AUDIO_SUFFIXES.get(audio_format, suffix or f".{audio_format.lower()}")
    except Exception as err:  # noqa: BLE001 - PIL and libsndfile raise many types for unreadable data
        raise MediaError(f"{label}: not a readable {kind} file ({type(err).__name__}: {err})") from None


def _is_pil_image(item: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(item, Image.Image)


def _png_bytes(image: Any) -> bytes:
    from modalign.data.media import to_rgb

    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = to_rgb(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(array: Any, sample_rate: int, label: str) -> bytes:
    """16-bit WAV of a waveform: (samples,), or (channels, samples) as `datasets` decodes multi-channel audio."""
    import soundfile

    wave = np.asarray(array, dtype=np.float32)
    if wave.ndim == 2 and wave.shape[0] < wave.shape[1]:
        wave = wave.T  # (samples, channels), what soundfile writes
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise RecordError(f"{label}: an audio array must be (samples,) or (channels, samples), got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise RecordError(f"{label}: the audio array contains NaN or infinite samples")
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()
