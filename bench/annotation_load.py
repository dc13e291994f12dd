"""Load figures of the annotation server: judgments/s and p50/p99 latency of one uvicorn process.

    PYTHONPATH=src python bench/annotation_load.py [--clients 20] [--per-client 200]

Builds a ShapesWorld store in a temp folder, starts `serve` in a subprocess on 127.0.0.1 and has
`clients` threads each post `per-client` pairwise answers through the JSON API (Bearer tokens).
Run it with another PYTHONPATH to measure other code (the server subprocess inherits it).

    --critique: instead, one annotator saves a critique (a full rewrite of a 600-word answer, or
    with --crafted a repetitive 400-word one, difflib's bad case) while another saves an unrelated
    pairwise answer 50 ms later; prints how long each took.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from annotation_support import build_world, free_port, start_process_server  # noqa: E402
from modalign.data.records import Completion  # noqa: E402
from modalign.feedback.server import create_tasks  # noqa: E402


def client_run(base: str, token: str, count: int) -> list[float]:
    """Answer `count` queued tasks; returns each POST's latency in seconds."""
    latencies = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        for task_id in http.get("/api/queue").raise_for_status().json()["task_ids"][:count]:
            start = time.perf_counter()
            response = http.post(f"/api/tasks/{task_id}/judgment", json={"choice": "a"})
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 201, response.text
    return latencies


def critique_stall(folder: Path, crafted: bool) -> dict:
    """Seconds taken by a 600-word full-rewrite critique save and by another annotator's save meanwhile."""
    world = build_world(folder)
    world.add_accounts("writer", "other")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    original = " ".join(["x"] * 400) if crafted else " ".join(rng.choice(words) for _ in range(600))
    rewrite = " ".join(["x", "y"] * 200) if crafted else " ".join(rng.choice(words) for _ in range(600))
    example = world.examples[0].id
    [cid] = world.store.add_candidates([Completion(example, original, "sft-v0")])
    [critique_task] = create_tasks(world.store, "critique", [(example, (cid,))], annotators=["writer"])
    [pair_task] = world.tasks("pairwise", 1, 2, ["other"])
    port = free_port()
    server = start_process_server(world.store.url, port, folder / "server.log")
    took = {}
    clients = {name: httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                  headers={"Authorization": f"Bearer {world.tokens[name]}"}) for name in world.tokens}
    for http in clients.values():
        http.get("/api/next").raise_for_status()  # warm up: connections and the server's first-request work

    def save(name, task_id, body):
        start = time.perf_counter()
        assert clients[name].post(f"/api/tasks/{task_id}/judgment", json=body).status_code == 201
        took[name] = round(time.perf_counter() - start, 3)

    try:
        writer = threading.Thread(target=save, args=("writer", critique_task, {"corrected_text": rewrite}))
        writer.start()
        time.sleep(0.05)
        save("other", pair_task, {"choice": "a"})
        writer.join()
    finally:
        server.kill()
        server.wait()
    return {"critique_save_s": took["writer"], "other_save_s": took["other"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--critique", action="store_true")
    parser.add_argument("--crafted", action="store_true")
    args = parser.parse_args()
    if args.critique:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(critique_stall(Path(folder), args.crafted)))
        return
    with tempfile.TemporaryDirectory() as folder:
        world = build_world(Path(folder))
        names = [f"rater{i:02d}" for i in range(args.clients)]
        world.add_accounts(*names)
        world.tasks("pairwise", args.clients * args.per_client, 2, names, overlap=1)
        port = free_port()
        server = start_process_server(world.store.url, port, Path(folder) / "server.log")
        try:
            start = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                runs = list(pool.map(lambda n: client_run(f"http://127.0.0.1:{port}", world.tokens[n], args.per_client),
                                     names))
            elapsed = time.perf_counter() - start
        finally:
            server.kill()
            server.wait()
    latencies = sorted(x for run in runs for x in run)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(json.dumps({"judgments": len(latencies), "seconds": round(elapsed, 2),
                      "judgments_per_s": round(len(latencies) / elapsed, 1),
                      "p50_ms": round(1000 * statistics.median(latencies), 1), "p99_ms": round(1000 * p99, 1)}))


if __name__ == "__main__":
    main()
