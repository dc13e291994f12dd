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
    from rich.markup import escape

    # soft_wrap: one line however long (paths), never cut at the terminal's width
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def _run(call):
    """Run a command; a user error (the `UserError` family: config, records, media, policy, reward, store)
    prints one line instead of a traceback. Anything else is a bug and keeps its traceback."""
    from modalign.errors import UserError
    from modalign.ui import quiet_library_bars

    quiet_library_bars()
    try:
        return call()
    except (UserError, FileNotFoundError, FileExistsError) as err:
        _fail(str(err))


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"modalign {version('modalign')}")
        except PackageNotFoundError:  # a source tree on PYTHONPATH without an install
            from modalign import __version__

            typer.echo(f"modalign {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    """modalign: RLHF for multimodal (image, audio, text) models."""


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
def explain(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    model: Optional[str] = typer.Option(None, help="Reward-model or policy folder (shortcut for --set model=...)."),
    data: Optional[str] = typer.Option(None, help="Dataset folder, or 'shapes' (shortcut for --set data=...)."),
    out: Optional[str] = typer.Option(None, help="Output folder (default runs/explain-<time>)."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """Why a reward model scored answers so, or what a policy's answers rest on: modality shares (ablation,
    integrated gradients), image occlusion heatmaps, audio-time curves, token credit; writes OUT/report.html."""
    from modalign.recipes.explain import ExplainConfig, run_explain

    shortcuts = [f"{key}={value}" for key, value in (("model", model), ("data", data)) if value]
    _recipe_command(ExplainConfig, run_explain, config, [*(set_ or []), *shortcuts], out, help_config=help_config)


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
        if resume:
            from modalign.validate import resume_status

            if resume_status(resume) == "finished":  # a rerun would retrain and overwrite its model
                typer.echo(f"run {resume} is finished (summary.json); nothing to resume")
                return None
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


@app.command()
def judge(
    config: Optional[str] = ConfigOption,
    set_: Optional[List[str]] = SetOption,
    judge_: Optional[str] = typer.Option(None, "--judge", help="model:<folder or hub id> (shortcut for --set judge=...)."),
    samples: Optional[str] = typer.Option(None, help="Answers: JSONL files or folders, comma-separated (--set samples=...)."),
    data: Optional[str] = typer.Option(None, help="Dataset folder of the answered examples (--set data=...)."),
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/judge-<time>)."),
    help_config: bool = typer.Option(False, "--help-config", help="List the config fields and exit."),
) -> None:
    """A model judges sampled answers (pairwise in both orders, ranking or rating); the judgments go to a
    feedback store (store=...) and the summary reports gold accuracy, agreement, position bias and cost."""
    from modalign.recipes.judge import JudgeConfig, run_judge

    shortcuts = [f"{key}={value}" for key, value in (("judge", judge_), ("samples", samples), ("data", data)) if value]
    _recipe_command(JudgeConfig, run_judge, config, [*(set_ or []), *shortcuts], out, help_config=help_config)


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
    guidelines: Optional[str] = typer.Option(None, help="Guidelines file (Markdown; '## pairwise' etc. per kind). "
                                                         "A change re-opens them for annotators."),
) -> None:
    """Serve the annotation web app over a feedback store (admin token also from $MODALIGN_ADMIN_TOKEN)."""
    from modalign.feedback.server.cli_glue import annotate_command

    _run(lambda: annotate_command(store, host, port, guidelines))


@app.command("add-annotator")
def add_annotator(
    store: str = typer.Option(..., help="Feedback store: a feedback.db path or an SQLAlchemy URL."),
    name: str = typer.Option(..., help="Account name."),
    role: str = typer.Option("annotator", help="annotator or admin."),
) -> None:
    """Create an annotator (or admin) account and print its token once."""
    from modalign.feedback.server.cli_glue import add_annotator_command

    _run(lambda: add_annotator_command(store, name, role))


@app.command("reset-token")
def reset_token(
    store: str = typer.Option(..., help="Feedback store: a feedback.db path or an SQLAlchemy URL."),
    name: str = typer.Option(..., help="Account name."),
) -> None:
    """Issue a new token for an account and print it once; the old token and its logins stop working."""
    from modalign.feedback.server.cli_glue import reset_token_command

    _run(lambda: reset_token_command(store, name))


@app.command()
def demo(
    out: Optional[str] = typer.Option(None, help="Run folder (default runs/demo-<time>)."),
    seed: int = typer.Option(0, help="Seed of data, model and sampling."),
    quick: bool = typer.Option(False, help="A small version for tests (under 90 s)."),
    resume: Optional[str] = typer.Option(None, help="Continue a killed demo in this folder (its seed and size kept)."),
    store: str = typer.Option("", help="Feedback store of the judgments (default OUT/loop/feedback.db): a path or an "
                                       "SQLAlchemy URL such as postgresql+psycopg://user@host/db."),
) -> None:
    """The main job, no arguments needed."""
    from modalign.recipes.demo import run_demo

    _run(lambda: run_demo(out=out, seed=seed, quick=quick, resume=resume, store=store))


@app.command()
def shapes(
    out: str = typer.Option(..., help="Dataset folder to write."),
    train: int = typer.Option(1000, help="Train scenes."),
    test: int = typer.Option(100, help="Test scenes."),
    seed: int = typer.Option(0, help="Seed."),
    caption_noise: float = typer.Option(0.0, help="Share of train captions that hallucinate."),
    modalities: str = typer.Option("", help="'' (image and audio), image or audio: write only those media; captions "
                                            "state and questions ask only what they can perceive."),
) -> None:
    """Generate a ShapesWorld dataset (JSONL + media folder)."""
    from modalign.data.shapes import build_shapes_dataset

    def call():
        return build_shapes_dataset(out, n_train=train, n_test=test, seed=seed, caption_noise=caption_noise,
                                    modalities=modalities)

    typer.echo(f"wrote {_run(call)}")


@app.command("import")
def import_data(
    source: str = typer.Argument(..., help="A save_to_disk folder, a .parquet / .jsonl / .json file (HF or TRL rows) "
                                           "or a hub dataset id (online only)."),
    out: str = typer.Option(..., help="Dataset folder (SFT rows) or feedback-store folder (preference rows) to write."),
    kind: str = typer.Option("auto", help="sft, preference, or auto: preference when rows have chosen + rejected."),
    split: Optional[str] = typer.Option(None, help="Name of the written split (SFT; default: the source's split "
                                                   "names, 'train' for a file)."),
    id_column: str = typer.Option("id", help="Column holding example ids (rows without one get row-<index>)."),
    subset: Optional[str] = typer.Option(None, help="Hub dataset configuration (subset) name."),
    data_split: Optional[str] = typer.Option(None, help="Only this split of the source (default: all of them)."),
    store: str = typer.Option("", help="Preference rows: the feedback store they go to, as store= of every command "
                                       "(a feedback.db path, a folder or an SQLAlchemy URL); default OUT/feedback.db. "
                                       "Their media go under OUT/media/."),
) -> None:
    """Import HF `datasets` / TRL rows: SFT rows -> a dataset folder, preference rows -> a feedback store.

    Media (PIL images, paths, {"bytes", "path"}, {"array", "sampling_rate"}, inline in messages too)
    are stored once under OUT/media/ by content hash; relative paths resolve against SOURCE's folder.
    """
    from modalign.recipes.transfer import import_source

    result = _run_transfer(lambda: import_source(source, out, kind, split, id_column, subset, data_split, store))
    if result["kind"] == "sft":
        counts = ", ".join(f"{name} {n}" for name, n in result["examples"].items())
        typer.echo(f"imported {sum(result['examples'].values())} examples ({counts}) into {out}  "
                   f"(use --set data={out})")
    else:
        typer.echo(f"imported {result['pairs']} preference pairs into {result['store']}  "
                   f"(use --set store={result['store']})")


@app.command("export")
def export_data(
    location: str = typer.Argument(..., help="A dataset folder, or a feedback store (folder, .db file or URL)."),
    out: str = typer.Option(..., help="File (.jsonl, one split) or folder to write; must not exist."),
    format_: str = typer.Option("trl-jsonl", "--format", help="trl-jsonl (media as absolute paths) or hf "
                                                             "(a save_to_disk folder, images embedded)."),
    split: Optional[str] = typer.Option(None, help="Only this split of a dataset (default: all)."),
) -> None:
    """Export a dataset (TRL conversational rows) or a store (TRL preference rows) as JSONL or a `datasets` folder."""
    from modalign.recipes.transfer import export_source

    result = _run_transfer(lambda: export_source(location, out, format_, split))
    what = (f"{result['pairs']} preference pairs" if result["kind"] == "preference"
            else f"{sum(result['examples'].values())} examples")
    typer.echo(f"exported {what} to {out}")


def _run_transfer(call):
    """`_run`, plus the import sources' own error (unknown format, missing split, hub unreachable)."""
    from modalign.data.importing import SourceError

    try:
        return _run(call)
    except SourceError as err:
        _fail(str(err))


def main() -> None:
    app(prog_name="modalign")


if __name__ == "__main__":
    sys.exit(main())
