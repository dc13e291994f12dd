"""The generic Hugging Face path, the answer spans, the self-check and `register_family`.

The six families with a fast path are run here through the generic path too (their model type
taken out of the registry, as an unregistered model type would be): the model's own forward and
generate on every processor output must give exactly the native logits and answers, and the
recipes must run on it. `tests/test_hf_any.py` does the same for other architectures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_tiny
from hf_tiny import shapes, stores, tiny  # noqa: F401  (module fixtures: tiny models, data, feedback stores)
from modalign.data.dataset import read_examples
from modalign.models.hf import FAMILIES, ModelSupportError, ProcessorMedia, concat_media, register_family
from modalign.models.hf.self_check import self_check
from modalign.models.inputs import MediaStore, answer_span, collate_sft, encode_sft_example, prompt_batch
from modalign.models.policy import load_policy
from test_hf_models import native_inputs, two_prompts

FAMILIES_TESTED = hf_tiny.FAMILIES


@pytest.fixture
def unregistered(monkeypatch):
    """Take a family's model type out of the registry for one test: it then runs the generic path."""
    def drop(family: str, fast_paths: bool = False) -> None:
        monkeypatch.delitem(FAMILIES, family)
        if not fast_paths:  # not even the `images` fast path tried on unregistered models (`models.hf.auto`)
            monkeypatch.setenv("MODALIGN_FAST_PATHS", "0")

    return drop


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- the generic path is the model's own -----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_generic_path_is_the_models_own_forward_and_generate(tiny, unregistered, family):
    model_dir, data = tiny(family)
    fast = load_policy(model_dir)
    unregistered(family)
    policy = load_policy(model_dir)
    assert policy.model.family.generic and not policy.model.supports_shared_prefix
    model, examples, store = policy.model.eval(), two_prompts(data), MediaStore(data)
    batch, native = prompt_batch(policy.processor, store, examples), native_inputs(fast, examples, store)
    assert isinstance(batch[policy.processor.family.media_slot], ProcessorMedia)
    assert torch.equal(batch["input_ids"], native["input_ids"])
    with torch.no_grad():
        media = model.encode_media(batch["input_ids"], batch.get("pixel_values"), batch.get("input_values"))
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media).logits
        theirs = model.hf(**native).logits
        mask = batch["attention_mask"].bool()
        assert torch.equal(ours[mask], theirs[mask])
        greedy = dict(max_new_tokens=5, do_sample=False, suppress_tokens=model.generation_config.suppress_tokens)
        assert torch.equal(model.generate(**batch, **greedy), model.hf.generate(**native, **greedy))
        # G samples per prompt: the media of each prompt repeated in place, as for repeated prompts
        twice = model.generate(**batch, **greedy, num_return_sequences=2)
        assert torch.equal(twice[::2], twice[1::2]) and torch.equal(twice[::2], model.generate(**batch, **greedy))


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "qwen2_audio"])
def test_generic_media_survive_concatenation_and_row_selection(tiny, unregistered, family):
    """Examples batched by `concat_media` (SFT, reward pairs) and rows picked again give each row's own logits."""
    model_dir, data = tiny(family)
    unregistered(family)
    policy = load_policy(model_dir)
    model, store = policy.model.eval(), MediaStore(data)
    encoded = [encode_sft_example(policy.processor, store, e, 1024, "two shapes.") for e in two_prompts(data)]
    batch = collate_sft(encoded, policy.processor.tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for row, item in enumerate(encoded):
            alone = model(input_ids=item.input_ids[None], attention_mask=torch.ones_like(item.input_ids[None]),
                          pixel_values=item.pixel_values, input_values=item.input_values).logits[0]
            assert torch.allclose(together[row, : item.input_ids.shape[0]], alone, atol=1e-5)
        media = model.encode_media(batch["input_ids"], batch.get("pixel_values"), batch.get("input_values"))
        swapped = model(input_ids=batch["input_ids"].flip(0), attention_mask=batch["attention_mask"].flip(0),
                        media=media.select_rows(torch.tensor([1, 0])), labels=None).logits
    assert torch.allclose(swapped.flip(0)[batch["attention_mask"].bool()], together[batch["attention_mask"].bool()],
                          atol=1e-5)


def test_processor_media_pad_and_rebuild_token_types():
    first = ProcessorMedia([{"pixel_values": torch.ones(1, 2, 3), "image_sizes": torch.tensor([[3, 3]])}],
                           {"token_type_ids": {7: 1}})
    second = ProcessorMedia([{"pixel_values": torch.ones(2, 4, 3), "image_sizes": torch.tensor([[4, 4], [5, 5]])},
                             {}], {"token_type_ids": {8: 2}})
    joined = concat_media([first, None, second])
    assert joined.batch_size == 3 and joined.token_types == {"token_type_ids": {7: 1, 8: 2}}
    inputs = joined.model_inputs()
    assert inputs["pixel_values"].shape == (3, 4, 3) and inputs["pixel_values"][0, 2:].abs().sum() == 0
    assert inputs["image_sizes"].tolist() == [[3, 3], [4, 4], [5, 5]]
    ids = torch.tensor([[7, 8, 9], [1, 7, 7]])
    assert joined.token_type_inputs(ids)["token_type_ids"].tolist() == [[1, 2, 0], [0, 1, 1]]
    assert joined.repeat_interleave(2, 3).select_rows(torch.tensor([4, 5])).rows == [{}, {}]
    assert torch.equal(concat_media([torch.zeros(1, 2), torch.ones(2, 2)]), torch.tensor([[0.0, 0], [1, 1], [1, 1]]))


def test_per_position_outputs_follow_padding_and_extend_over_answers():
    """A per-position output (Mllama's cross_attention_mask (1, L, images, tiles)) lies over each row's real
    tokens from the first one, repeats its last value over tokens after the processed text, and is 0 on
    padding; model_inputs does not pass it as a media tensor."""
    short = ProcessorMedia([{"pixel_values": torch.ones(1, 3), "mask": torch.tensor([[[1], [2]]])}],
                           positional=frozenset({"mask"}))
    long = ProcessorMedia([{"pixel_values": torch.ones(1, 3), "mask": torch.tensor([[[0, 1], [3, 4], [5, 6]]])}],
                          positional=frozenset({"mask"}))
    joined = concat_media([short, long])
    assert joined.positional == {"mask"} and set(joined.model_inputs()) == {"pixel_values"}
    ids = torch.ones(2, 5, dtype=torch.long)
    attention = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])  # left padding, one answer token each
    mask = joined.token_type_inputs(ids, attention)["mask"]  # (2, 5, 2)
    assert mask.tolist() == [[[0, 0], [0, 0], [1, 0], [2, 0], [2, 0]],
                             [[0, 0], [0, 1], [3, 4], [5, 6], [5, 6]]]
    repeated = joined.repeat_interleave(2, 2)
    assert repeated.positional == {"mask"} and repeated.token_type_inputs(ids.repeat(2, 1))["mask"].shape == (4, 5, 2)


# ---- recipes on the generic path --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "qwen2_audio"])
def test_sft_grpo_dpo_two_steps_on_the_generic_path(tmp_path, tiny, stores, unregistered, family):
    from modalign.recipes.dpo import DPOConfig, run_dpo
    from modalign.recipes.online import OnlineConfig, run_online
    from modalign.recipes.reward import encode_store_pairs, open_store
    from modalign.recipes.sft import SFTConfig, run_sft

    model_dir, data = tiny(family)
    store = str(stores(family))  # collected on the fast path: feedback is text, either path reads it
    unregistered(family)
    run_sft(SFTConfig(out=str(tmp_path / "sft"), data=str(data), policy=str(model_dir), max_steps=2, batch_size=4,
                      lr=1e-3, warmup_steps=0, log_every=1, checkpoint_every=0, eval_examples=1, max_new_tokens=4))
    assert all(np.isfinite(line["train/loss"]) for line in metric_lines(tmp_path / "sft"))
    summary = run_online(OnlineConfig(out=str(tmp_path / "grpo"), algorithm="grpo", policy=str(model_dir),
                                      reward_model="rule:shapes_gold", data=str(data), steps=2, prompts_per_step=2,
                                      samples_per_prompt=3, max_new_tokens=6, minibatch_size=6, eval_examples=1,
                                      checkpoint_every=0, lr=1e-3))
    assert [line["step"] for line in metric_lines(tmp_path / "grpo")] == [1, 2]
    before, after = load_policy(model_dir).model, load_policy(summary["model"]).model
    encoders = {id(p) for m in before.media_encoder_modules() for p in m.parameters()}
    names = {n for n, p in before.named_parameters() if id(p) in encoders}
    changed = {k for k, v in before.state_dict().items() if not torch.equal(v, after.state_dict()[k])}
    assert names and changed and not names & changed  # the decoder learned, the media encoder stayed frozen
    pairs = [p for p in encode_store_pairs(open_store(store), load_policy(model_dir).processor, 1, 256) if not p.tie]
    dpo = run_dpo(DPOConfig(out=str(tmp_path / "dpo"), policy=str(model_dir), store=store, data=str(data),
                            batch_size=2, epochs=3.0 / len(pairs), lr=1e-3, max_length=256, eval_examples=1,
                            max_new_tokens=4, checkpoint_every=0))
    assert dpo["steps"] == 2 and metric_lines(tmp_path / "dpo")[0]["dpo/reward_margin"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_audio"])
def test_reward_and_ppo_two_steps_on_the_generic_path(tmp_path, tiny, stores, unregistered, family):
    from modalign.recipes.ppo import PPOConfig, run_ppo
    from modalign.recipes.reward import RewardConfig, run_reward

    model_dir, data = tiny(family)
    store = str(stores(family))
    unregistered(family)
    run_reward(RewardConfig(out=str(tmp_path / "rm"), policy=str(model_dir), store=store, steps=2, batch_size=2,
                            heldout_fraction=0.0, max_length=256, backbone_lr=1e-3))
    run_ppo(PPOConfig(out=str(tmp_path / "ppo"), policy=str(model_dir), reward_model=str(tmp_path / "rm" / "model"),
                      data=str(data), steps=2, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6,
                      minibatch_size=4, checkpoint_every=0, eval_examples=1, lr=1e-3, critic_lr=1e-3))
    lines = metric_lines(tmp_path / "ppo")
    assert [line["step"] for line in lines] == [1, 2] and all(np.isfinite(line["ppo/value_loss"]) for line in lines)


# ---- answer spans -----------------------------------------------------------------------------------


class Framing:
    """A processor that writes a BOS before and a newline after every text, as some processors do."""

    def __init__(self, processor) -> None:
        self.inner = processor
        tokenizer = processor.tokenizer
        self.before = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id]
        self.after = tokenizer("\n", add_special_tokens=False)["input_ids"]

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, text, **kwargs):
        output = self.inner(text=text, **kwargs)
        rows = output["input_ids"].shape[0]
        before, after = torch.tensor([self.before] * rows), torch.tensor([self.after] * rows)
        output["input_ids"] = torch.cat([before, output["input_ids"], after], dim=1)
        output["attention_mask"] = torch.cat([torch.ones_like(before), output["attention_mask"],
                                              torch.ones_like(after)], dim=1)
        return output


@pytest.mark.parametrize("framed", [False, True], ids=["plain", "bos_and_newline"])
@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_first_answer_token_is_trained_and_nothing_after_the_end_of_turn(tiny, family, framed):
    model_dir, data = tiny(family)
    processor = load_policy(model_dir).processor
    processor = Framing(processor) if framed else processor
    tokenizer, store = processor.tokenizer, MediaStore(data)
    for example in read_examples(data, "train")[:3]:
        encoded = encode_sft_example(processor, store, example, max_length=1024)
        labels = collate_sft([encoded], tokenizer.pad_token_id)["labels"][0]
        trained = labels[labels != -100]
        assert labels[encoded.prompt_length] == trained[0] and labels[encoded.prompt_length - 1] == -100
        assert tokenizer.decode(trained[:-1]).strip() == example.answer and trained[-1] == tokenizer.eos_token_id
        first = tokenizer.decode(trained[:1]).strip()
        assert first and example.answer.startswith(first)
        assert encoded.input_ids[-1] == tokenizer.eos_token_id  # what the processor appends is not trained


def test_answer_span_from_the_prompt_alone():
    prompt, full = torch.tensor([1, 5, 6, 9]), torch.tensor([1, 5, 6, 7, 8, 2, 9])
    assert answer_span(prompt, full) == (3, 6)  # the trailing 9 is the processor's, not the answer's
    assert answer_span(torch.tensor([5, 6]), torch.tensor([5, 7, 8])) == (1, 3)  # a token merged across the end
    with pytest.raises(ValueError, match="adds no token"):
        answer_span(torch.tensor([5, 6]), torch.tensor([5, 6]))


# ---- self-check -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_self_check_keeps_a_correct_fast_path(tiny, family):
    model_dir, data = tiny(family)
    policy = load_policy(model_dir)
    record = self_check(policy, read_examples(data, "train"), MediaStore(data))["self_check"]
    assert record["path"] == "fast" and record["max_abs_diff"] <= record["tolerance"] == 1e-4
    assert not policy.model.family.generic


def test_self_check_falls_back_from_a_wrong_fast_path_and_says_so_once(tiny, monkeypatch, caplog):
    """A fast path whose features are wrong (zeroed) is caught, logged once, and replaced by the model's own."""
    from modalign.models.hf.encoders import encode_images

    model_dir, data = tiny("llava")
    monkeypatch.setitem(FAMILIES, "llava", dataclasses.replace(FAMILIES["llava"],
                                                               encode=lambda hf, inputs: 0 * encode_images(hf, inputs)))
    monkeypatch.setattr("modalign.models.hf.self_check._warned", set())
    examples, store = read_examples(data, "train"), MediaStore(data)
    with caplog.at_level(logging.WARNING, logger="modalign"):
        records = [self_check(policy := load_policy(model_dir), examples, store)["self_check"] for _ in range(2)]
    assert [r["path"] for r in records] == ["generic", "generic"] and records[0]["max_abs_diff"] > 1e-4
    assert len([r for r in caplog.records if "fast path differs" in r.message]) == 1
    assert policy.model.family.generic and policy.processor.family.generic
    fast = load_policy(model_dir)  # the native inputs of the same prompts: the policy now gives the native logits
    batch, native = prompt_batch(policy.processor, store, examples[:2]), native_inputs(fast, examples[:2], store)
    with torch.no_grad():
        assert torch.equal(policy.model.eval()(**batch).logits, policy.model.hf(**native).logits)


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_an_unregistered_model_gets_the_images_fast_path_only_where_it_is_exact(tiny, unregistered, family):
    """LLaVA and Gemma 3 (pixel_values only) pass the probe's self-check and keep cached features; the others
    (grids, tiles, audio) stay on the generic path. Either way the logits are the model's own."""
    model_dir, data = tiny(family)
    native_policy = load_policy(model_dir)
    unregistered(family, fast_paths=True)
    policy = load_policy(model_dir)
    fast = family in ("llava", "gemma3")
    assert policy.model.family.generic is not fast and policy.processor.family == policy.model.family
    if fast:
        assert policy.model.load_check["self_check"]["path"] == "fast" and policy.model.family.layout == "images"
    examples, store = two_prompts(data), MediaStore(data)
    batch, native = prompt_batch(policy.processor, store, examples), native_inputs(native_policy, examples, store)
    with torch.no_grad():
        ours, theirs = policy.model.eval()(**batch).logits, policy.model.hf(**native).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-5)
    record = self_check(policy, read_examples(data, "train"), store)["self_check"]
    assert record["path"] == ("fast" if fast else "generic") and record["max_abs_diff"] <= 1e-4


def test_fast_paths_off_runs_every_model_on_the_generic_path(tiny, monkeypatch):
    monkeypatch.setenv("MODALIGN_FAST_PATHS", "0")
    policy = load_policy(tiny("qwen2_vl")[0])
    assert policy.model.family.generic and policy.processor.family.generic


# ---- register_family and errors -----------------------------------------------------------------------


def test_register_family_adds_a_fast_path_for_a_model_type(tiny, monkeypatch):
    model_dir, data = tiny("llava")
    llava = FAMILIES["llava"]
    monkeypatch.delitem(FAMILIES, "llava")
    assert load_policy(model_dir).model.family is not llava  # the generic path, or the probed `images` fast path
    register_family(llava)
    assert load_policy(model_dir).model.family is llava
    with pytest.raises(ValueError, match="already has a fast path"):
        register_family(dataclasses.replace(llava, end_of_turn="<s>"), "llava")
    assert register_family(dataclasses.replace(llava, end_of_turn="</s>"), "llava", replace=True).end_of_turn == "</s>"


def without_chat_templates(folder: Path) -> None:
    """Remove every chat template a saved folder holds (processor's and tokenizer's)."""
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    for name in ("processor_config.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            config = json.loads((folder / name).read_text())
            config.pop("chat_template", None)
            (folder / name).write_text(json.dumps(config))


def test_a_model_without_chat_template_is_one_line(tiny, tmp_path):
    import shutil

    model_dir, _ = tiny("llava")
    folder = Path(shutil.copytree(model_dir, tmp_path / "llava"))
    without_chat_templates(folder)
    with pytest.raises(ModelSupportError, match=r"^model_type 'llava': the processor in .* has no chat template") as e:
        load_policy(folder)
    assert "\n" not in str(e.value) and "chat_template" in str(e.value)


def test_a_chat_template_from_the_tokenizer_or_from_load_policy(tiny, tmp_path):
    """The tokenizer's template when the processor has none (GIT, Kosmos-2); a template given to
    `load_policy` otherwise, kept by a saved copy of the policy."""
    import shutil

    model_dir, _ = tiny("llava")
    template = load_policy(model_dir).processor.chat_template
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    folder = Path(shutil.copytree(model_dir, tmp_path / "llava"))
    without_chat_templates(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "chat_template": template}))
    assert load_policy(folder).processor.chat_template == template  # the tokenizer's

    without_chat_templates(folder)
    given = template.replace("USER", "HUMAN") if "USER" in template else "HUMAN " + template
    policy = load_policy(folder, chat_template=given)
    rendered = policy.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    assert "HUMAN" in rendered and policy.processor.chat_template == given
    policy.processor.save_pretrained(tmp_path / "saved")
    policy.model.save_pretrained(tmp_path / "saved")
    assert load_policy(tmp_path / "saved").processor.chat_template == given


def test_a_text_only_model_is_one_line(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelSupportError, match=r"^model_type 'llama': no processor loads from") as e:
        load_policy(tmp_path / "llama")
    assert "\n" not in str(e.value)


def test_the_other_modality_names_the_option_that_drops_it(tiny, unregistered):
    cases = (("gemma3", "audio", "modalities=image"), ("qwen2_audio", "images", "modalities=audio"))
    for family, other, option in cases:
        processor = load_policy(tiny(family)[0]).processor
        media = {other: [np.zeros(16000, np.float32)] if other == "audio" else [torch.zeros(3, 8, 8)]}
        with pytest.raises(ValueError, match=rf"--set {option}`"):
            processor(text=["hi"], **media)


def test_a_prefix_lm_is_refused_in_one_line_not_trained_wrong(tmp_path):
    """PaliGemma's answers attend causally only when token_type_ids mark them (1); rebuilt from token ids
    they would be 0 and read the answer's own future tokens. Refused before anything loads."""
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(tmp_path / "paligemma")
    with pytest.raises(ModelSupportError, match=r"^model_type 'paligemma' is a prefix-LM") as error:
        load_policy(tmp_path / "paligemma")
    assert "\n" not in str(error.value)
