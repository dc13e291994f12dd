"""The `modalign` command. Subcommands map 1:1 to recipes and tools.

Nothing heavy is imported at module level, so `modalign --help` starts at once; each
command imports its recipe when it runs.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

app = typer.Typer(
    help="modalign: RLHF for multimodal (image, audio, text) models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOption = typer.Option(None, "--set", help="Override a config field: key=value (repeatable).")
ConfigOption = typer.Option(None, "--config", help="YAML file of the recipe's config.")


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _run(call):
    """Run a recipe; user errors (config, records, media) print one line instead of a traceback."""
    from modalign.config import ConfigError
    from modalign.data.media import MediaError
    from modalign.data.records import RecordError

    try:
        return call()
    except (ConfigError, RecordError, MediaError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))


@app.command()
def sft(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/sft-<time>)."),
    resume: Optional[str] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Supervised fine-tuning on ShapesWorld or a JSONL + media dataset."""
    from modalign.recipes.sft import SFTConfig, run_sft

    _recipe_command(SFTConfig, run_sft, config, set_, out, resume, help_config)


@app.command("eval")
def evaluate(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    policy: Optional[str] = typer.Option(None, help="Saved policy folder or hub id (shortcut for --set policy=...)."),
    data: Optional[str] = typer.Option(None, help="Dataset folder, or 'shapes' (shortcut for --set data=...)."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default test)."),
    out: Optional[str] = typer.Option(None, help="Output folder (default runs/eval-<time>)."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Answer accuracy, BLEU/ROUGE-L per task and modality (gold metrics on ShapesWorld), KL to a reference,
    win rate against another policy; greedy by default; writes OUT/summary.json."""
    from modalign.recipes.evaluate import EvalConfig, run_eval

    shortcuts = [f"{key}={value}" for key, value in (("policy", policy), ("data", data), ("split", split)) if value]
    _recipe_command(EvalConfig, run_eval, config, [*(set_ or []), *shortcuts], out, help_config=help_config)


@app.command()
def report(
    runs: List[str] = typer.Argument(..., help="Run folders (sft, dpo, grpo/ppo, reward, eval, loop, demo...)."),
    out: str = typer.Option("report.html", help="HTML file to write."),
    title: Optional[str] = typer.Option(None, help="Page title (default: the run names)."),
    answers: int = typer.Option(12, help="Sample answers shown per run."),
) -> None:
    """A self-contained report.html of one or more run folders, side by side: config, summary, curves,
    evaluation by task and modality, sample answers with their images and audio."""
    from modalign.eval.run_report import write_runs_report

    path = _run(lambda: write_runs_report(runs, out, title=title, answers=answers))
    typer.echo(f"wrote {path}")


def _recipe_command(config_class, runner, config: str | None, set_: list[str] | None, out: str | None,
                    resume: str | None = None, help_config: bool = False) -> None:
    from modalign.config import describe_config, load_config

    if help_config:
        typer.echo(describe_config(config_class))
        return

    def call():
        cfg = load_config(config_class, f"{resume}/config.yaml" if resume else config, set_ or [])
        if resume or out:
            cfg.out = resume or out
        return runner(cfg, resume=resume) if resume else runner(cfg)

    _run(call)


@app.command()
def reward(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/reward-<time>)."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Train a reward model (backbone + scalar head) from the feedback store."""
    from modalign.recipes.reward import RewardConfig, run_reward

    _recipe_command(RewardConfig, run_reward, config, set_, out, help_config=help_config)


@app.command()
def ppo(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/ppo-<time>)."),
    resume: Optional[str] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """PPO with a critic against a reward model."""
    from modalign.recipes.ppo import PPOConfig, run_ppo

    _recipe_command(PPOConfig, run_ppo, config, set_, out, resume, help_config)


@app.command()
def dpo(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/dpo-<time>)."),
    resume: Optional[str] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """DPO (or IPO, cDPO, hinge) from the feedback store's preference pairs."""
    from modalign.recipes.dpo import DPOConfig, run_dpo

    _recipe_command(DPOConfig, run_dpo, config, set_, out, resume, help_config)


@app.command("iterative-dpo")
def iterative_dpo(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/iterative-dpo-<time>); rerun it to resume."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Online DPO in rounds: sample from the current policy, judge (simulated panel or a reward), DPO, repeat."""
    from modalign.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo

    _recipe_command(IterativeDPOConfig, run_iterative_dpo, config, set_, out, help_config=help_config)


@app.command()
def loop(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/loop-<time>); rerun it to resume."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Iterative online RLHF: sample -> feedback (simulated or people via `modalign annotate`) -> reward model -> RL, in rounds."""
    from modalign.recipes.loop import LoopConfig, run_loop

    _recipe_command(LoopConfig, run_loop, config, set_, out, help_config=help_config)


@app.command()
def bon(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/bon-<time>)."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Best-of-N: sample N answers per prompt, keep the reward's best, SFT on the winners."""
    from modalign.recipes.bon import BoNConfig, run_bon

    _recipe_command(BoNConfig, run_bon, config, set_, out, help_config=help_config)


def _online_command(algorithm: str, summary: str) -> None:
    """Register `modalign <algorithm>`: the online recipe with `algorithm` preset."""

    def command(
        config: Optional[str] = ConfigOption,
        set_: Optional[List[str]] = SetOption,
        out: Optional[str] = typer.Option(None, help=f"Run folder (default runs/{algorithm}-<time>)."),
        resume: Optional[str] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
        help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
    ) -> None:
        from modalign.recipes.online import OnlineConfig, run_online

        preset = [f"algorithm={algorithm}"] + list(set_ or [])
        _recipe_command(OnlineConfig, run_online, config, preset, out, resume, help_config)

    command.__doc__ = summary
    app.command(name=algorithm)(command)


_online_command("grpo", "GRPO: group-relative advantages over G answers per prompt, k3 KL in the loss.")
_online_command("rloo", "RLOO: REINFORCE with the leave-one-out baseline over G answers per prompt.")
_online_command("reinforce", "REINFORCE with a moving-average baseline.")
_online_command("a2c", "A2C: one update per rollout against a learned critic, entropy bonus.")


@app.command()
def annotate(
    store: str = typer.Option(..., help="Feedback store: a feedback.db path or an SQLAlchemy URL."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (plain HTTP: keep it local or put TLS in front)."),
    port: int = typer.Option(8000, help="Port."),
) -> None:
    """Serve the annotation web app over a feedback store (admin token also from $MODALIGN_ADMIN_TOKEN)."""
    from modalign.feedback.server.cli_glue import annotate_command

    _run(lambda: annotate_command(store, host, port))


@app.command("add-annotator")
def add_annotator(
    store: str = typer.Option(..., help="Feedback store: a feedback.db path or an SQLAlchemy URL."),
    name: str = typer.Option(..., help="Account name."),
    role: str = typer.Option("annotator", help="annotator or admin."),
) -> None:
    """Create an annotator (or admin) account and print its token once."""
    from modalign.feedback.server.cli_glue import add_annotator_command

    _run(lambda: add_annotator_command(store, name, role))


@app.command()
def demo(
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/demo-<time>)."),
    seed: int = typer.Option(0, help="Seed of data, model and sampling."),
    quick: bool = typer.Option(False, help="A small version for tests (under 90 s)."),
    resume: Optional[str] = typer.Option(None, help="Continue a killed demo in this folder (its seed and size kept)."),
) -> None:
    """The main job, no arguments needed."""
    from modalign.recipes.demo import run_demo

    _run(lambda: run_demo(out=out, seed=seed, quick=quick, resume=resume))


@app.command()
def shapes(
    out: str = typer.Option(..., help="Dataset folder to write."),
    train: int = typer.Option(1000, help="Train scenes."),
    test: int = typer.Option(100, help="Test scenes."),
    seed: int = typer.Option(0, help="Seed."),
    caption_noise: float = typer.Option(0.0, help="Share of train captions that hallucinate."),
) -> None:
    """Generate a ShapesWorld dataset (JSONL + media folder)."""
    from modalign.data.shapes import build_shapes_dataset

    root = build_shapes_dataset(out, n_train=train, n_test=test, seed=seed, caption_noise=caption_noise)
    typer.echo(f"wrote {root}")


def main() -> None:
    app(prog_name="modalign")


if __name__ == "__main__":
    sys.exit(main())
