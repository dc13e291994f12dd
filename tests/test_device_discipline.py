"""Device discipline: each recipe runs end to end with its models on a second device, and no op mixes devices.

The second device is `fakegpu:0` (tests/fake_device.py): real values, so sampling, data-dependent
indexing and the recipes' own checks run as on a GPU, and any op given tensors on both the CPU and
the device fails with `MixedDevices`, as CUDA fails with "Expected all tensors to be on the same
device". Each test passes `device=fakegpu:0` the way a user passes `--set device=cuda`.

Covered: what the recipes run, forward and backward: SFT steps; the reward model (frozen backbone
on cached features, and trained end to end); DPO (the reference pass, steps, checkpoints); PPO
(rollout sampling with the shared prompt cache and cached media features, old-policy, reference and
critic passes, a reward model's dense scores, the adaptive KL controller, PPO-ptx, the update);
GRPO (rule rewards, the update), with the built-in model and with a Hugging Face Qwen2-VL (its fast
path: cached image features, 3-D rotary positions, the shared prompt cache); evaluation (greedy
generation, gold scoring, the exact KL to a reference, a judge's win rate); each recipe's final
evaluation and checkpoints.
Not covered: anything only a real GPU has (CUDA kernels, streams, memory, the CUDA generator's
random numbers), many processes (tests/test_multiprocess.py runs DDP on CPU processes), bf16
autocast on a GPU, and the other Hugging Face families and the generic path (run by hand on the
device for the report of issue 22; here only on the CPU).
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from fake_device import DEVICE, MixedDevices, fake_device
from hf_tiny import shapes, tiny  # noqa: F401  (module fixtures: a tiny Hugging Face model and its data)


@contextlib.contextmanager
def on_device():
    """The fake device for one run. Saving goes through CPU copies of the weights: safetensors reads storage
    pointers, which a tensor without storage on the CPU side cannot give (a GPU tensor can)."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.save_pretrained

    def save_from_cpu(self, *args, **kwargs):
        return original(self, *args, state_dict={k: v.cpu() for k, v in self.state_dict().items()}, **kwargs)

    with pytest.MonkeyPatch.context() as patch, fake_device() as mode:
        patch.setattr(PreTrainedModel, "save_pretrained", save_from_cpu)
        yield mode


def ran_on_device(mode) -> bool:
    return mode.device_ops > 1000  # the models' passes ran there, not just a few tensors


def test_the_fake_device_refuses_mixed_devices_as_cuda_does():
    with fake_device() as mode:
        on = torch.ones(3, device=DEVICE)
        assert on.device == DEVICE and (on * 2).device == DEVICE
        assert (on + torch.tensor(1.0)).tolist() == [2.0, 2.0, 2.0]  # a CPU scalar may join, as with CUDA
        assert on[torch.tensor([0, 2])].device == DEVICE  # CPU indices are moved, as with CUDA
        with pytest.raises(MixedDevices, match="a .to\\(device\\) is missing"):
            on + torch.ones(3)
        layer = torch.nn.Linear(3, 2).to(DEVICE)
        with pytest.raises(MixedDevices):
            layer(torch.ones(1, 3))
        layer(on[None]).sum().backward()  # backward runs on the device too
        assert layer.weight.grad.device == DEVICE
    assert mode.host_reads["tolist"] == 1


def test_the_device_setting_is_resolved_or_refused_with_one_error():
    from modalign.config import ConfigError
    from modalign.device import resolve_device

    assert resolve_device("auto") == torch.device("cpu")  # accelerate's device on a machine without a GPU
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(str(DEVICE)) == DEVICE
    with pytest.raises(ConfigError, match="device='cuda': this machine has no cuda device"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device='gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="has 1 fakegpu device"):
        resolve_device("fakegpu:3")


def test_loaded_models_are_never_kernelized_so_train_and_eval_run_their_own_layers(sft_model, tiny, monkeypatch):
    """transformers 5.25 kernelizes a loaded model by default and again at each train() / eval() switch (on a
    GPU: layers fetched from the hub, some for inference only; on this fake device: ValueError 'Unsupported
    device type'). modalign loads with hub kernels off: no load or switch, on the CPU or the device, reaches
    `kernelize`, for the built-in model and a Hugging Face one."""
    import transformers.modeling_utils
    from modalign.models.policy import load_policy

    calls = []
    monkeypatch.setattr(transformers.modeling_utils, "kernelize", lambda *a, **k: calls.append(a), raising=False)
    for folder in (sft_model[0], tiny("qwen2_vl")[0]):
        model = load_policy(folder).model
        raw = getattr(model, "model", model)  # the transformers model inside modalign's HF adapter
        assert not getattr(raw, "use_kernels", False)
        model.train().eval()
        with fake_device():
            model.to(DEVICE).train().eval()
    assert calls == []


@pytest.fixture(scope="module")
def store(tmp_path_factory, sft_model):
    """Simulated rankings of the SFT policy's answers to 3 train captions (built on the CPU)."""
    from hf_tiny import caption_store
    from modalign.models.policy import load_policy

    model, data = sft_model
    return caption_store(load_policy(model), data, tmp_path_factory.mktemp("device_store"))


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, sft_model, store):
    """The reward recipe on the device (frozen backbone, the default): (summary, mode)."""
    from modalign.recipes.reward import RewardConfig, run_reward

    out = tmp_path_factory.mktemp("device_reward") / "run"
    with on_device() as mode:
        summary = run_reward(RewardConfig(out=str(out), policy=str(sft_model[0]), store=str(store), steps=5,
                                          heldout_fraction=0.0, device=str(DEVICE)))
    return summary, mode


def test_sft_steps_on_device(tmp_path, sft_model):
    from modalign.recipes.sft import SFTConfig, run_sft

    model, data = sft_model
    with on_device() as mode:
        summary = run_sft(SFTConfig(out=str(tmp_path / "run"), data=str(data), policy=str(model), max_steps=2,
                                    batch_size=4, eval_examples=1, max_new_tokens=4, device=str(DEVICE)))
    assert summary["steps"] == 2 and (tmp_path / "run" / "model" / "config.json").is_file()
    assert ran_on_device(mode)


def test_reward_model_on_device(reward_run):
    summary, mode = reward_run
    assert summary["train_pairs"] > 0 and 0.0 <= summary["train_accuracy"] <= 1.0
    assert ran_on_device(mode)


def test_reward_model_trained_end_to_end_on_device(tmp_path, sft_model, store):
    from modalign.recipes.reward import RewardConfig, run_reward

    with on_device() as mode:
        summary = run_reward(RewardConfig(out=str(tmp_path / "run"), policy=str(sft_model[0]), store=str(store),
                                          steps=2, batch_size=4, backbone_lr=1e-4, heldout_fraction=0.0,
                                          device=str(DEVICE)))
    assert summary["train_pairs"] > 0 and ran_on_device(mode)


def test_dpo_steps_on_device(tmp_path, sft_model, store):
    from modalign.recipes.dpo import DPOConfig, run_dpo

    model, data = sft_model
    with on_device() as mode:
        summary = run_dpo(DPOConfig(out=str(tmp_path / "run"), policy=str(model), store=str(store), data=str(data),
                                    batch_size=4, epochs=1.0, checkpoint_every=1, eval_examples=1, max_new_tokens=4,
                                    device=str(DEVICE)))
    assert summary["steps"] >= 2 and list((tmp_path / "run" / "checkpoints").iterdir())
    assert ran_on_device(mode)


def test_ppo_with_a_reward_model_and_critic_on_device(tmp_path, sft_model, reward_run):
    from modalign.recipes.ppo import PPOConfig, run_ppo

    model, data = sft_model
    with on_device() as mode:
        summary = run_ppo(PPOConfig(out=str(tmp_path / "run"), policy=str(model), data=str(data),
                                    reward_model=reward_run[0]["model"], steps=1, prompts_per_step=2,
                                    samples_per_prompt=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4,
                                    kl_target=0.1, ptx_coef=0.1, eval_examples=1, device=str(DEVICE)))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 1 and "ppo/value_loss" in lines[0] and "ppo/ptx_loss" in lines[0]
    assert ran_on_device(mode)


def test_grpo_update_on_device(tmp_path, sft_model):
    from modalign.recipes.online import OnlineConfig, run_online

    model, data = sft_model
    with on_device() as mode:
        summary = run_online(OnlineConfig(out=str(tmp_path / "run"), algorithm="grpo", policy=str(model),
                                          data=str(data), reward_model="rule:shapes_gold", steps=1,
                                          prompts_per_step=2, samples_per_prompt=2, minibatch_size=2,
                                          max_new_tokens=4, eval_examples=1, device=str(DEVICE)))
    assert summary["steps"] == 1 and ran_on_device(mode)


def test_grpo_against_a_claims_self_judge_on_device(tmp_path, sft_model, monkeypatch):
    """The judge reward asks the policy about its own claims (feedback/judges/ask.py) on the device, and claims
    are really asked: an answer without claims scores 0 unasked (the test would be the plain GRPO one), and the
    `shapes` splitter finds none in this barely trained policy's answers; `sentences` finds one in any text."""
    import modalign.feedback.judges.ask as ask
    from modalign.recipes.online import OnlineConfig, run_online

    score_options, asked = ask.score_options, []  # asked: the device of each question's scores

    def counted(*args, **kwargs):
        scores = score_options(*args, **kwargs)  # (questions, options)
        asked.extend([scores.device] * scores.shape[0])
        return scores

    monkeypatch.setattr(ask, "score_options", counted)
    model, data = sft_model
    with on_device() as mode:
        summary = run_online(OnlineConfig(out=str(tmp_path / "run"), algorithm="grpo", policy=str(model),
                                          data=str(data), reward_model="judge:claims:self?splitter=sentences",
                                          steps=1, prompts_per_step=2, samples_per_prompt=2, minibatch_size=2,
                                          max_new_tokens=8, eval_examples=1, device=str(DEVICE)))
    assert summary["steps"] == 1 and ran_on_device(mode)
    assert len(asked) > 0 and set(asked) == {DEVICE}


@pytest.mark.parametrize("packed", [True, False])
def test_a_judge_is_asked_on_device(sft_model, monkeypatch, packed):
    """`score_options` (model judges and claim verification) scores packed and unpacked options there."""
    from modalign.data.dataset import read_examples
    from modalign.feedback.judges.ask import Query, score_options
    from modalign.models.inputs import MediaStore
    from modalign.models.policy import load_policy

    if not packed:
        monkeypatch.setattr("modalign.feedback.judges.ask.supports_shared_prefix", lambda model: False)
    model, data = sft_model
    examples = read_examples(data, "test")[:2]
    with on_device() as mode:
        policy = load_policy(model)
        policy.model.to(DEVICE)
        scores = score_options(policy, [Query(e, "is there a red circle?") for e in examples], ["yes", "no"],
                               MediaStore(data))
    assert scores.shape == (2, 2) and scores.device == DEVICE and mode.device_ops > 100


def test_grpo_on_a_hugging_face_vlm_on_device(tmp_path, tiny):
    from modalign.recipes.online import OnlineConfig, run_online

    model, data = tiny("qwen2_vl")
    with on_device() as mode:
        summary = run_online(OnlineConfig(out=str(tmp_path / "run"), algorithm="grpo", policy=str(model),
                                          data=str(data), reward_model="rule:shapes_gold", steps=1,
                                          prompts_per_step=2, samples_per_prompt=2, minibatch_size=2,
                                          max_new_tokens=4, eval_examples=1, device=str(DEVICE)))
    assert summary["steps"] == 1 and ran_on_device(mode)
    check = json.loads((tmp_path / "run" / "self_check.json").read_text())["self_check"]
    assert check["path"] == "fast" and check["device"] == str(DEVICE)  # checked where the run computes


def test_eval_scoring_on_device(tmp_path, sft_model, reward_run):
    from modalign.recipes.evaluate import EvalConfig, run_eval

    model, data = sft_model
    with on_device() as mode:
        summary = run_eval(EvalConfig(policy=str(model), data=str(data), out=str(tmp_path / "eval"), max_examples=2,
                                      max_new_tokens=4, reference=str(model), compare=str(model),
                                      judge=reward_run[0]["model"], device=str(DEVICE)))
    assert summary["metrics"]["kl_to_ref"] == pytest.approx(0.0, abs=1e-5)  # the policy against itself
    assert summary["win_rate"]["ties"] == 2  # the same greedy answers: every pair ties
    assert ran_on_device(mode)


def test_seeded_sampling_gives_back_the_device_random_state(sft_model, monkeypatch):
    """`generate_answers` samples from its own seed, then restores the random state of the CPU and of the
    model's device: `torch.manual_seed` reseeds a GPU too, and a GPU left at the seed would make training
    after each evaluation replay the same random numbers."""
    from modalign.data.dataset import read_examples
    from modalign.eval.generation import generate_answers
    from modalign.models.inputs import MediaStore
    from modalign.models.policy import load_policy

    model, data = sft_model
    with on_device():
        backend = torch.get_device_module(DEVICE.type)  # the fake device's generator, apart from the CPU's (as CUDA's)
        state = {"device": torch.Generator().manual_seed(1).get_state()}
        monkeypatch.setattr(backend, "manual_seed_all",
                            lambda seed: state.update(device=torch.Generator().manual_seed(seed).get_state()))
        monkeypatch.setattr(backend, "get_rng_state", lambda device=None: state["device"].clone())
        monkeypatch.setattr(backend, "set_rng_state", lambda new, device=None: state.update(device=new.clone()))
        policy = load_policy(model)
        policy.model.to(DEVICE)
        device_before, cpu_before = state["device"].clone(), torch.get_rng_state()
        answers = generate_answers(policy, MediaStore(data), read_examples(data, "test")[:1], max_new_tokens=2,
                                   temperature=1.0, seed=5)
    assert len(answers) == 1 and torch.equal(torch.get_rng_state(), cpu_before)
    assert torch.equal(state["device"], device_before)
