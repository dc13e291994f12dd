"""Load and crash safety of the annotation server: a real uvicorn process on 127.0.0.1.

20 concurrent clients each submit 200 judgments: none is lost, none duplicated, each stored as sent.
Then a second run is cut short by SIGKILL; after a restart on the same store, every judgment
that got a 2xx answer is there, each task is either answered or still queued, and new answers
are taken without duplicates. The same on a real PostgreSQL server (tests/pg_server.py) with 20
clients x 25 judgments (the checks are the same, exact ones; fewer judgments for the suite's time).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from annotation_support import build_world, free_port, start_process_server

CLIENTS = 20
FINISH = 10  # judgments per client after the restart


@dataclass(frozen=True)
class Load:
    backend: str  # sqlite or postgres
    per_run: int  # judgments per client in the first run (and the most in the second)
    kill_after: int  # acknowledged judgments in the second run before the SIGKILL


LOADS = [Load("sqlite", 200, 1000), Load("postgres", 25, 125)]


class Client:
    """One annotator's scripted session: answers its queue in order, remembers every acknowledgement."""

    def __init__(self, base: str, name: str, token: str) -> None:
        self.name = name
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.rng = random.Random(name)
        self.acked: dict[int, tuple[int, str]] = {}  # task id -> (judgment id, choice sent)

    def queue(self) -> list[int]:
        return self.http.get("/api/queue").raise_for_status().json()["task_ids"]

    def run(self, count: int, on_ack=None) -> None:
        """Answer the next `count` open tasks; stops quietly when the server goes away."""
        for task_id in self.queue()[:count]:
            choice = self.rng.choice(["a", "b", "tie"])
            try:
                response = self.http.post(f"/api/tasks/{task_id}/judgment", json={"choice": choice})
            except httpx.TransportError:
                return  # the server was killed: this answer may or may not be stored, it was not acknowledged
            assert response.status_code == 201, response.text
            self.acked[task_id] = (response.json()["judgment_id"], choice)
            if on_ack:
                on_ack()


def run_all(clients: list[Client], count: int, on_ack=None) -> None:
    with ThreadPoolExecutor(len(clients)) as pool:
        for future in [pool.submit(client.run, count, on_ack) for client in clients]:
            future.result()


def stored_rows(url: str) -> list[tuple[int, int, str, str]]:
    """(judgment id, task id, annotator, choice), read with the plain driver (sqlite3, psycopg) as a second opinion."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with sqlite3.connect(parsed.database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            return connection.execute("SELECT id, task_id, annotator, json_extract(payload, '$.choice') "
                                      "FROM judgments").fetchall()
    import psycopg

    libpq_url = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq_url) as connection:
        return connection.execute("SELECT id, task_id, annotator, payload->>'choice' FROM judgments").fetchall()


def check_acknowledged(clients: list[Client], rows) -> None:
    by_key = {(task_id, who): (jid, choice) for jid, task_id, who, choice in rows}
    assert len(by_key) == len(rows), "a (task, annotator) pair was stored twice"
    for client in clients:
        for task_id, acked in client.acked.items():
            assert by_key.get((task_id, client.name)) == acked, f"{client.name}'s answer to task {task_id} was lost"


@pytest.mark.slow
@pytest.mark.parametrize("load", LOADS, ids=[load.backend for load in LOADS])
def test_concurrent_clients_lose_nothing_even_across_a_kill(tmp_path, request, load):
    per_run, kill_after = load.per_run, load.kill_after
    url = request.getfixturevalue("postgres_url") if load.backend == "postgres" else None
    world = build_world(tmp_path, store_url=url)
    names = [f"rater{i:02d}" for i in range(CLIENTS)]
    world.add_accounts(*names)
    world.tasks("pairwise", CLIENTS * per_run, 2, names, overlap=2)  # 2 x per_run open tasks per annotator
    port, log = free_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"

    server = start_process_server(world.store.url, port, log)
    try:
        clients = [Client(base, name, world.tokens[name]) for name in names]
        run_all(clients, per_run)
        rows = stored_rows(world.store.url)
        assert len(rows) == CLIENTS * per_run and all(len(c.acked) == per_run for c in clients)
        check_acknowledged(clients, rows)
        _racing_double_submits_store_one(clients[0])

        acks, enough = [0], threading.Event()
        lock = threading.Lock()

        def count_ack() -> None:
            with lock:
                acks[0] += 1
                if acks[0] >= kill_after:
                    enough.set()

        second = [Client(base, name, world.tokens[name]) for name in names]
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client.run, per_run, count_ack) for client in second]
            assert enough.wait(timeout=60), "the second run stalled"
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
            for future in futures:
                future.result()
    finally:
        if server.poll() is None:
            server.kill()

    server = start_process_server(world.store.url, port, log)  # same store, same port
    try:
        rows = stored_rows(world.store.url)
        acked_second = sum(len(c.acked) for c in second)
        assert kill_after <= acked_second < CLIENTS * per_run  # the kill really cut the run short
        check_acknowledged(clients + second, rows)
        # Answers committed but not acknowledged (in flight at the kill) are stored *and* off the
        # queue: a task is either answered or still queued, never both, never neither.
        finish = [Client(base, name, world.tokens[name]) for name in names]
        for client in finish:
            answered, queued = {t for _, t, who, _ in rows if who == client.name}, set(client.queue())
            assert not answered & queued and len(answered | queued) == 2 * per_run
        run_all(finish, FINISH)  # the restarted server takes new answers
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
    final = stored_rows(world.store.url)
    assert len(final) == len({(task, who) for _, task, who, _ in final}) == len(rows) + CLIENTS * FINISH
    check_acknowledged(clients + second + finish, final)


def _racing_double_submits_store_one(client: Client) -> None:
    """Eight simultaneous answers to one task: the unique constraint lets exactly one through."""
    task_id = client.queue()[0]
    barrier = threading.Barrier(8)

    def submit(choice: str) -> int:
        with httpx.Client(base_url=str(client.http.base_url), headers=dict(client.http.headers), timeout=60) as http:
            barrier.wait()
            return http.post(f"/api/tasks/{task_id}/judgment", json={"choice": choice}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(submit, ["a", "b"] * 4))
    assert codes == [201] + [409] * 7
