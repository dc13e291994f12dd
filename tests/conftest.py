import pytest
import sys
from pathlib import Path

# Tests share small builders (e.g. `test_tinyvlm.make_policy`).
sys.path.insert(0, str(Path(__file__).parent))
from shared_runs import media_sft  # noqa: E402,F401  (one media-aware SFT for test_sft and test_reward_model)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A tiny SFT policy on a tiny ShapesWorld: (model folder, data folder), shared by the RL tests."""
    from modalign.data.shapes import build_shapes_dataset
    from modalign.recipes.sft import SFTConfig, run_sft

    root = tmp_path_factory.mktemp("tiny_sft")
    data = build_shapes_dataset(root / "data", n_train=30, n_test=4, seed=0, caption_noise=0.3)
    run_sft(SFTConfig(out=str(root / "sft"), data=str(data), hidden_size=32, num_layers=1, num_heads=2,
                      encoder_layers=1, vocab_size=300, batch_size=8, max_steps=20, eval_examples=1, lr=3e-3))
    return root / "sft" / "model", data
