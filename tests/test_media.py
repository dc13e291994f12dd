"""Every bad media file gives a MediaError that names the file and the record."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
from PIL import Image

from modalign.data.media import MediaError, load_audio, load_image, sha256_file
from modalign.data.records import MediaRef

RECORD = "rec-7"


def image_ref(root, name, image=None, **save):
    (image or Image.new("RGB", (8, 8), (10, 20, 30))).save(root / name, **save)
    return MediaRef("image", name)


def audio_ref(root, name, wave, rate=16000, subtype="PCM_16"):
    soundfile.write(root / name, wave, rate, subtype=subtype)
    return MediaRef("audio", name)


def expect_error(call, *fragments):
    with pytest.raises(MediaError) as info:
        call()
    message = str(info.value)
    for fragment in (RECORD, *fragments):
        assert fragment in message, message
    return message


def test_good_image_loads_as_rgb(tmp_path):
    image = load_image(image_ref(tmp_path, "ok.png"), tmp_path, RECORD)
    assert image.mode == "RGB" and image.size == (8, 8)


def test_corrupt_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(os.urandom(300))
    expect_error(lambda: load_image(MediaRef("image", "bad.png"), tmp_path, RECORD), "bad.png", "corrupt")


def test_truncated_image(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    ref = image_ref(tmp_path, "cut.png", noise)
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    expect_error(lambda: load_image(ref, tmp_path, RECORD), "cut.png")


def test_decompression_bomb(tmp_path):
    ref = image_ref(tmp_path, "bomb.png", Image.new("1", (5000, 5000)))
    expect_error(lambda: load_image(ref, tmp_path, RECORD, max_pixels=1_000_000), "bomb.png", "decompression bomb")


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "I;16"])
def test_modes_convert_to_rgb(tmp_path, mode):
    image = Image.new("RGB", (4, 4), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (4, 4), 65535)
    name = f"m.{'jpg' if mode == 'CMYK' else 'png'}" if mode != "CMYK" else "m.tiff"
    ref = image_ref(tmp_path, name, image)
    assert load_image(ref, tmp_path, RECORD).mode == "RGB"


def test_transparency_becomes_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    loaded = load_image(image_ref(tmp_path, "alpha.png", image), tmp_path, RECORD)
    assert loaded.getpixel((0, 0)) == (255, 0, 0) and loaded.getpixel((1, 0)) == (255, 255, 255)


def test_missing_file(tmp_path):
    expect_error(lambda: load_image(MediaRef("image", "nope.png"), tmp_path, RECORD), "nope.png", "does not exist")


def test_paths_escaping_the_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    image_ref(tmp_path, "outside.png")
    expect_error(lambda: load_image(MediaRef("image", "../outside.png"), root, RECORD), "escapes")
    expect_error(lambda: load_image(MediaRef("image", str(tmp_path / "outside.png")), root, RECORD), "escapes")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    expect_error(lambda: load_image(MediaRef("image", "link.png"), root, RECORD), "link.png", "escapes")


def test_sha256_mismatch(tmp_path):
    ref = image_ref(tmp_path, "x.png")
    good = MediaRef("image", "x.png", sha256_file(tmp_path / "x.png"))
    assert load_image(good, tmp_path, RECORD).size == (8, 8)
    bad = MediaRef("image", ref.path, "0" * 64)
    expect_error(lambda: load_image(bad, tmp_path, RECORD), "x.png", "sha256")


def sine(freq, seconds, rate):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_audio_resampled_to_target_rate(tmp_path):
    ref = audio_ref(tmp_path, "a.wav", sine(440, 1.0, 44100), rate=44100)
    wave = load_audio(ref, tmp_path, RECORD, sample_rate=16000)
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    peak = np.fft.rfftfreq(wave.shape[0], 1 / 16000)[np.abs(np.fft.rfft(wave)).argmax()]
    assert abs(peak - 440) <= 1


def test_stereo_becomes_mono(tmp_path):
    stereo = np.stack([sine(440, 0.5, 16000), np.zeros(8000, np.float32)], axis=1)
    wave = load_audio(audio_ref(tmp_path, "s.wav", stereo), tmp_path, RECORD)
    assert wave.shape == (8000,) and np.abs(wave).max() == pytest.approx(0.25, abs=0.01)


def test_corrupt_and_truncated_audio(tmp_path):
    (tmp_path / "junk.wav").write_bytes(os.urandom(500))
    expect_error(lambda: load_audio(MediaRef("audio", "junk.wav"), tmp_path, RECORD), "junk.wav")
    audio_ref(tmp_path, "cut.wav", sine(440, 1.0, 16000))
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:40])  # header only, no frames
    expect_error(lambda: load_audio(MediaRef("audio", "cut.wav"), tmp_path, RECORD), "cut.wav")


def test_absurd_lengths(tmp_path):
    long_ref = audio_ref(tmp_path, "long.wav", sine(440, 2.0, 16000))
    expect_error(lambda: load_audio(long_ref, tmp_path, RECORD, max_seconds=1.0), "long.wav", "longer")
    short_ref = audio_ref(tmp_path, "short.wav", sine(440, 0.001, 16000))
    expect_error(lambda: load_audio(short_ref, tmp_path, RECORD, min_seconds=0.01), "short.wav", "shorter")


def test_nan_samples(tmp_path):
    wave = sine(440, 0.5, 16000)
    wave[100] = np.nan
    ref = audio_ref(tmp_path, "nan.wav", wave, subtype="FLOAT")
    expect_error(lambda: load_audio(ref, tmp_path, RECORD), "nan.wav", "NaN")
