"""Load figures of the annotation server: judgments/s and p50/p99 latency of one uvicorn process.

    PYTHONPATH=src python bench/annotation_load.py [--clients 20] [--per-client 200]

Builds a ShapesWorld store in a temp folder, starts `serve` in a subprocess on 127.0.0.1 and has
`clients` threads each post `per-client` pairwise answers through the JSON API (Bearer tokens).
Run it with another PYTHONPATH to measure other code (the server subprocess inherits it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from annotation_support import build_world, free_port, start_process_server  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=200)
    args = parser.parse_args()
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
