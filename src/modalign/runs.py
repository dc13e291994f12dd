"""The run folder: config.yaml, metrics.jsonl, TensorBoard events, checkpoints/, samples/, summary.json."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from modalign.config import save_config


def default_run_dir(kind: str) -> Path:
    """runs/<kind>-<time>; under `accelerate launch` the main process's name in every process (their clocks
    may straddle a second), so every process calls it at the same point of a recipe."""
    from modalign.dist import processes

    return Path(processes().broadcast(str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")))


class RunDir:
    """One run's folder. `create` starts a run; `open` continues one (resume).

    With many processes only the main one writes (`main=False` elsewhere): logs, checkpoints
    and the summary are no-ops in the others, which still read checkpoints to resume.
    """

    def __init__(self, path: Path, main: bool = True) -> None:
        self.path = path
        self.main = main
        self._writer = None

    @classmethod
    def create(cls, path: str | Path, config: Any = None, main: bool = True) -> "RunDir":
        path = Path(path)
        if not main:
            return cls(path, main=False)
        if (path / "config.yaml").is_file():
            # Starting over in a used folder would mix two runs' metrics and checkpoints.
            raise FileExistsError(f"{path} already holds a run: continue it with --resume {path} or pick another --out")
        for sub in ("checkpoints", "samples"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        if config is not None:
            save_config(config, path / "config.yaml")
        return cls(path)

    @classmethod
    def open(cls, path: str | Path, main: bool = True) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
        return cls(path, main=main)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append a JSON line to metrics.jsonl and TensorBoard scalars; NaN/inf become null."""
        if not self.main:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
        writer = self._tensorboard()
        for key, value in clean.items():
            if value is not None:
                writer.add_scalar(key, value, step)

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path / "tb"))
        return self._writer

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        if not self.main:
            return self.path / "summary.json"
        return write_json_atomic(self.path / "summary.json", summary)

    def write_json(self, name: str, data: Any) -> Path:
        """One JSON record of the run beside its summary (e.g. `self_check.json`), written by the main process."""
        if not self.main:
            return self.path / name
        return write_json_atomic(self.path / name, data)

    def save_checkpoint(self, state: Mapping[str, Any], step: int, keep: int = 2) -> Path:
        """Write to a temp folder, then rename: a kill mid-save never breaks the latest checkpoint."""
        final = self.path / "checkpoints" / f"step-{step:06d}"
        if not self.main:
            return final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(dict(state), tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in (self.path / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        return torch.load(Path(path) / "state.pt", weights_only=False)

    def rewind(self, step: int) -> None:
        """Drop log lines after `step` (a resumed run redoes them): metrics.jsonl and skipped_steps.jsonl.

        A run killed after its last checkpoint may have logged steps it will now repeat;
        without this a resumed run's curves would hold those steps twice.
        """
        if not self.main:
            return
        for name in ("metrics.jsonl", "skipped_steps.jsonl"):
            log = self.path / name
            if not log.is_file():
                continue
            kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _logged_step(line) <= step]
            tmp = log.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(tmp, log)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # a line cut by the kill: dropped


def write_json_atomic(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


def write_jsonl_atomic(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One JSON object per line, written to a temp file and renamed (readers never see half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any] | Sequence[Mapping[str, Any]], rank: int = 0) -> None:
    """Restore `rng_state()`; from a list (one state per process of a multi-process run) this process's."""
    if isinstance(state, (list, tuple)):
        state = state[rank % len(state)]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def start_rounds_folder(cfg: Any, out: Path, may_change: tuple[str, ...] = ("out", "rounds")) -> None:
    """Write `out/config.yaml` for a run in rounds; a rerun must match the first run's settings but `may_change`.

    Under `accelerate launch` every process checks (so a mismatch stops them all, none left waiting)
    before the main process writes.
    """
    import dataclasses

    from modalign.config import ConfigError, load_config
    from modalign.dist import processes

    saved = out / "config.yaml"
    if saved.is_file():
        before, now = dataclasses.asdict(load_config(type(cfg), saved)), dataclasses.asdict(cfg)
        changed = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now if k not in may_change and before[k] != now[k]]
        if changed:
            raise ConfigError(f"{saved}: this folder was run with other settings ({'; '.join(changed)}); rerun "
                              f"with the same ones to resume (only {', '.join(may_change[1:])} may change) or pick "
                              "another out")
    dist = processes()
    dist.wait()  # every process has read the old config before the main one replaces it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, saved)
    dist.wait()


def resumable(folder: Path) -> str | None:
    """`folder` if a killed run left its `config.yaml` there (resume it), else None; under `accelerate
    launch` the main process's view for all (it may create the folder while another still looks)."""
    from modalign.dist import processes

    return processes().broadcast(str(folder) if (folder / "config.yaml").is_file() else None)
