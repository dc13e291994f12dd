"""Terminal output: one rich console and a progress bar per stage."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Under `accelerate launch` only the main process (RANK 0) prints; the others would repeat it.
QUIET = os.environ.get("RANK", "0") != "0"
console = Console(stderr=True, quiet=QUIET)


@contextmanager
def progress_bar(label: str, total: int, completed: int = 0) -> Iterator[Callable[..., None]]:
    """Yields `advance(n, **fields)`; fields (e.g. loss=0.3) are shown beside the bar."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False, disable=QUIET) as progress:
        task = progress.add_task(label, total=total, completed=completed, info="")

        def advance(n: int = 1, **fields: float) -> None:
            info = " ".join(f"{k}={v:.4g}" for k, v in fields.items())
            progress.update(task, advance=n, info=info)

        yield advance


def quiet_library_bars() -> None:
    """Silence transformers' and the hub's own tqdm bars ("Loading weights", "Writing model shards"):
    a modalign command shows one progress display, rich's."""
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by both libraries when they are imported
    if "transformers" in sys.modules:  # imported already (e.g. a test or a notebook): tell it now
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
