"""Training runs shared by several test files (imported by conftest.py as session fixtures)."""

import pytest


@pytest.fixture(scope="session")
def media_sft(tmp_path_factory):
    """A small SFT policy that has learned to read the image and the audio: (model folder, data folder).

    One run shared by the tests that need media-aware training (the reward model's and the SFT audio test),
    instead of one SFT each: 400 steps, noise-free captions, 300 train / 60 test scenes.
    """
    from modalign.data.shapes import build_shapes_dataset
    from modalign.recipes.sft import SFTConfig, run_sft

    root = tmp_path_factory.mktemp("media_sft")
    data = build_shapes_dataset(root / "data", n_train=300, n_test=60, seed=2, caption_noise=0.0)
    run_sft(SFTConfig(out=str(root / "sft"), data=str(data), hidden_size=64, num_layers=2, num_heads=2,
                      encoder_layers=1, vocab_size=300, batch_size=32, max_steps=400, lr=3e-3, eval_examples=1,
                      warmup_steps=10, log_every=50))
    return root / "sft" / "model", data
