"""Shared builders for the annotation-app tests: a ShapesWorld store with accounts and tasks,
and real uvicorn servers on 127.0.0.1 (in a thread, or in a subprocess that can be killed)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from modalign.data.dataset import read_examples
from modalign.data.records import Completion, Example
from modalign.data.shapes import build_shapes_dataset
from modalign.feedback.server import create_account, create_tasks
from modalign.feedback.store import FeedbackStore

ADMIN_TOKEN = "admin-secret-token-for-tests"


@dataclass
class World:
    """A store over a 10-scene ShapesWorld: three candidates per example, accounts by name -> token."""

    store: FeedbackStore
    root: Path
    examples: list[Example]
    candidates: dict[str, list[int]]  # example id -> its candidate ids
    tokens: dict[str, str] = field(default_factory=dict)

    def add_accounts(self, *names: str, role: str = "annotator") -> None:
        for name in names:
            self.tokens[name] = create_account(self.store, name, role)

    def items(self, count: int, size: int, start: int = 0) -> list[tuple[str, tuple[int, ...]]]:
        """`count` task items of `size` candidates, cycling over the examples."""
        out = []
        for i in range(start, start + count):
            example = self.examples[i % len(self.examples)]
            out.append((example.id, tuple(self.candidates[example.id][:size])))
        return out

    def tasks(self, kind: str, count: int, size: int, annotators: list[str], overlap: int = 1, **kw) -> list[int]:
        return create_tasks(self.store, kind, self.items(count, size), overlap=overlap, annotators=annotators, **kw)


def build_shapes(folder: Path, scenes: int = 10) -> Path:
    return build_shapes_dataset(folder, n_train=scenes, n_test=0, seed=0, questions_per_scene=1)


def build_world(folder: Path, root: Path | None = None, store_url: str | None = None) -> World:
    """A fresh store over the ShapesWorld at `root` (built in `folder` when None): `folder/feedback.db`, or the
    empty database at `store_url` (e.g. PostgreSQL)."""
    root = root or build_shapes(folder / "data")
    examples = read_examples(root, "train")
    store = FeedbackStore(store_url) if store_url else FeedbackStore.sqlite(folder / "feedback.db")
    store.add_examples(examples, root=root)
    texts = [(e.id, t) for e in examples for t in (e.answer, f"{e.answer} and a red star", "i cannot tell.")]
    ids = store.add_candidates([Completion(example_id, text, "sft-v0") for example_id, text in texts])
    candidates = {e.id: ids[3 * i: 3 * i + 3] for i, e in enumerate(examples)}
    return World(store, root, examples, candidates)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def thread_server(store_url: str, admin_token: str | None = ADMIN_TOKEN) -> Iterator[str]:
    """A real uvicorn server in a daemon thread; yields its base URL."""
    import uvicorn

    from modalign.feedback.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store_url, admin_token), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


SERVE = "import sys; from modalign.feedback.server import serve; serve(sys.argv[1], port=int(sys.argv[2]), access_log=False)"


def start_process_server(store_url: str, port: int, log: Path) -> subprocess.Popen:
    """`serve` in a subprocess (so it can be SIGKILLed); returns once /healthz answers."""
    handle = log.open("ab")
    process = subprocess.Popen([sys.executable, "-c", SERVE, store_url, str(port)], stdout=handle, stderr=handle)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")
