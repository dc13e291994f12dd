"""Does an image encoder pretrained on caption words let the demo's SFT see in fewer epochs?

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/demo_encoder_pretrain.py OUT SEED PRE_EPOCHS SFT_EPOCHS [k=v ...]

Builds the demo's SFT (ShapesWorld 1500 scenes, the built-in model at the demo's size) in OUT, then
pretrains its image encoder alone to predict which words the scene's (noisy) caption holds - a
multi-label bag of words, as Joulin et al. 2016 ("Learning Visual Features from Large Weakly Supervised
Data") trained image features on caption words - through a linear head on its patch tokens, and saves
the model (head dropped) to OUT/pre. `modalign sft` then continues from OUT/pre for SFT_EPOCHS on the
same data (k=v: more SFT settings, e.g. media_lr_scale=0.3; ngram=4 for n-grams up to 4, default words
alone). Gold numbers: bench/demo_sft_eval.py OUT/sft SEED.
PRE_EPOCHS 0 skips the pretraining (same code path otherwise). bench/results/demo_speed.md, Part 8.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def ngram_targets(captions: list[str], longest: int, min_count: int = 5) -> torch.Tensor:
    """(N, G) multi-hot over the caption n-grams (n <= longest) seen at least `min_count` times.

    n > 1 binds words to each other ("green square on the left"), which a bag of words cannot
    (Li et al. 2017, "Learning Visual N-Grams from Web Data").
    """
    from collections import Counter

    words = [caption.replace(",", " ").replace(".", " ").split() for caption in captions]
    grams = [{" ".join(ws[i:i + n]) for n in range(1, longest + 1) for i in range(len(ws) - n + 1)} for ws in words]
    counts = Counter(g for gs in grams for g in gs)
    index = {g: i for i, g in enumerate(sorted(g for g, c in counts.items() if c >= min_count))}
    targets = torch.zeros(len(captions), len(index))
    for row, gs in enumerate(grams):
        targets[row, [index[g] for g in gs if g in index]] = 1.0
    return targets


def pretrain(encoder: torch.nn.Module, pixels: torch.Tensor, targets: torch.Tensor, epochs: int, seed: int,
             batch_size: int = 32, lr: float = 1e-3) -> list[float]:
    """BCE on the caption words from the flattened patch tokens; returns each epoch's mean loss."""
    torch.manual_seed(seed)
    with torch.no_grad():
        tokens = encoder(pixels[:1]).flatten(1).shape[1]
    head = torch.nn.Linear(tokens, targets.shape[1])
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    encoder.train()
    for _ in range(epochs):
        order, total = torch.randperm(len(pixels)), 0.0
        for start in range(0, len(pixels), batch_size):
            rows = order[start:start + batch_size]
            logits = head(encoder(pixels[rows]).flatten(1))  # (B, W)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(round(total / len(pixels), 4))
    return losses


def main() -> None:
    from modalign import validate
    from modalign.models.inputs import MediaStore
    from modalign.models.tinyvlm.encoders import PatchImageEncoder
    from modalign.recipes.sft import SFTConfig, make_policy, prepare_data, run_sft, tokenizer_corpus

    out, seed, pre_epochs, sft_epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    extra = dict(arg.split("=", 1) for arg in sys.argv[5:])
    out.mkdir(parents=True, exist_ok=False)
    started = time.time()
    base = SFTConfig(out=str(out / "sft"), seed=seed, eval_examples=1, epochs=sft_epochs)  # the demo's SFT, as
    # recipes/demo.py builds it, but for the epochs
    data_root = prepare_data(base, out)
    train = validate.check_dataset(data_root, [base.train_split], answers=[base.train_split])[base.train_split]
    policy = make_policy(base, tokenizer_corpus(base, data_root, train))
    encoder = next(m for m in policy.model.modules() if isinstance(m, PatchImageEncoder))
    scenes = [e for e in train if e.meta.get("task") == "caption"]  # one caption example per train scene
    media, captions = MediaStore(data_root), [e.answer for e in scenes]
    pixels = policy.processor.image_processor([media.images(e)[0] for e in scenes])["pixel_values"]
    setup = time.time() - started
    tick = time.time()
    targets = ngram_targets(captions, int(extra.pop("ngram", 1)))  # ngram=N: n-grams up to N (a pseudo-setting)
    losses = pretrain(encoder, pixels, targets, pre_epochs, seed) if pre_epochs else []
    pre_seconds = time.time() - tick
    policy.save(out / "pre")
    print(json.dumps({"setup_s": round(setup, 1), "pretrain_s": round(pre_seconds, 1), "losses": losses,
                      "targets": targets.shape[1]}), flush=True)
    cfg = SFTConfig(out=str(out / "sft"), seed=seed, eval_examples=1, epochs=sft_epochs, policy=str(out / "pre"),
                    data=str(data_root))
    for key, value in extra.items():
        setattr(cfg, key, type(getattr(cfg, key))(value))
    tick = time.time()
    summary = run_sft(cfg)
    (out / "sft" / "data").symlink_to(data_root.resolve())  # where bench/demo_sft_eval.py looks
    print(json.dumps({"sft_s": round(time.time() - tick, 1), "train_s": summary["train_seconds"]}), flush=True)


if __name__ == "__main__":
    main()
