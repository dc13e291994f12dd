"""Synthesising a scene's sound: `beeps` tone bursts, low (~400 Hz) or high (~1600 Hz)."""

from __future__ import annotations

import random

import numpy as np

from modalign.data.shapes.world import Scene

PITCH_HZ = {"low": 400.0, "high": 1600.0}
BEEP_SECONDS, GAP_SECONDS, FADE_SECONDS = 0.12, 0.10, 0.01


def synth_audio(scene: Scene, sample_rate: int = 16000, seconds: float = 1.0, rng: random.Random | None = None) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] of `seconds` length."""
    rng = rng or random.Random(0)
    wave = np.zeros(int(round(sample_rate * seconds)), dtype=np.float32)
    frequency = PITCH_HZ[scene.pitch] * rng.uniform(0.95, 1.05)
    beep = _tone(frequency, BEEP_SECONDS, sample_rate)
    start = int(rng.uniform(0.02, 0.15) * sample_rate)
    for _ in range(scene.beeps):
        wave[start : start + beep.shape[0]] += beep[: max(0, wave.shape[0] - start)]
        start += int((BEEP_SECONDS + GAP_SECONDS) * sample_rate)
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(wave.shape[0]).astype(np.float32)
    return np.clip(wave + 0.01 * noise, -1.0, 1.0)


def _tone(frequency: float, seconds: float, sample_rate: int) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    envelope = np.minimum(1.0, np.minimum(t, seconds - t) / FADE_SECONDS)
    return (0.5 * envelope * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
