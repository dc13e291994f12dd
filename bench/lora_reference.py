"""Issue 5: the KL reference of a LoRA policy is the base with the adapter disabled, not a second copy.

    .venv/bin/python bench/lora_reference.py [--family llava] [--hidden 256]

Builds a tiny model of the family locally (tests/hf_tiny.py, hidden size raised so weights
dominate the process), then in a fresh process each: loads the policy, makes its reference
(LoRA: `frozen_reference` = adapter disabled; full: the deep copy a full fine-tune needs), runs one
forward of both, and reports peak RSS and the reference's own parameter bytes. Writes
bench/results/lora_reference.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(mode: str, folder: str) -> dict:
    """In this process: policy + reference + one forward each; peak RSS in MiB."""
    import copy

    import torch

    from modalign.models.policy import frozen_reference, load_policy

    policy = load_policy(folder)
    model = policy.model
    reference = frozen_reference(model) if mode == "lora" else copy.deepcopy(model).eval().requires_grad_(False)
    own = {p.data_ptr() for p in model.parameters()}
    ref_params = [p for p in (reference.parameters() if hasattr(reference, "parameters") else [])]
    extra = sum(p.numel() * p.element_size() for p in ref_params if p.data_ptr() not in own)
    text = "a large red circle on the left, a small blue square on the right. two low beeps."
    ids = policy.processor.tokenizer([text, text], return_tensors="pt")["input_ids"]  # text only: no placeholders
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        reference(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {"mode": mode, "peak_rss_mib": peak_rss_mib(),
            "reference_extra_param_mib": extra / 2**20,
            "policy_param_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20}


def peak_rss_mib() -> float:
    """VmHWM of this process: ru_maxrss carries the forking parent's RSS across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_measure(mode: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--measure", mode, str(folder)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"measuring {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="llava")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import hf_tiny

    from modalign.data.shapes import build_shapes_dataset
    from modalign.models.hf.lora import init_lora

    with tempfile.TemporaryDirectory() as tmp:
        data = build_shapes_dataset(Path(tmp) / "data", n_train=20, n_test=2, seed=0)
        hf_tiny.WIDTH = args.hidden  # the builders read it when called: a wider tiny model, weights dominate
        base = hf_tiny.build_family(args.family, Path(tmp) / "base", hf_tiny.shapes_corpus(data))
        lora = init_lora(base, Path(tmp) / "lora")
        rows = [run_measure(mode, folder) for mode, folder in (("full", base), ("lora", lora))]
    out = ROOT / "bench" / "results" / "lora_reference.json"
    out.write_text(json.dumps({"family": args.family, "hidden": args.hidden, "runs": rows}, indent=2))
    for row in rows:
        print(f"{row['mode']:5s} peak RSS {row['peak_rss_mib']:.0f} MiB, reference's own parameters "
              f"{row['reference_extra_param_mib']:.1f} MiB (policy {row['policy_param_mib']:.1f} MiB)")


if __name__ == "__main__":
    main()
