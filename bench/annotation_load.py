"""Load figures of the annotation server: judgments/s and p50/p99 latency of one uvicorn process.

    PYTHONPATH=src python bench/annotation_load.py [--clients 20] [--per-client 200]
        [--store sqlite|postgres|URL] [--repeat 3] [--record LABEL]

Builds a ShapesWorld store (a feedback.db in a temp folder; `postgres`: a database on a throwaway
PostgreSQL server started with tests/pg_server.py, durable settings; a URL: that empty database),
starts `serve` in a subprocess on 127.0.0.1 and has `clients` threads each post `per-client`
pairwise answers through the JSON API (Bearer tokens). Besides judgments/s and latency it reports
CPU seconds of the clients (this process), the app server and the PostgreSQL server, and the load
average: the machine may be shared, and CPU / wall shows how much of it the run got.
`--record LABEL` appends the runs to bench/results/annotation_load.json.
Run it with another PYTHONPATH to measure other code (the server subprocess inherits it).

    --critique: instead, one annotator saves a critique (a full rewrite of a 600-word answer, or
    with --crafted a repetitive 400-word one, difflib's bad case) while another saves an unrelated
    pairwise answer 50 ms later; prints how long each took.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import modalign  # noqa: E402
from annotation_support import build_world, free_port, start_process_server  # noqa: E402
from pg_server import start_postgres  # noqa: E402
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


RESULTS = Path(__file__).resolve().parent / "results" / "annotation_load.json"


def load_run(store_url: str, clients: int, per_client: int, postgres=None) -> dict:
    """One run on the empty store at `store_url` (None: a feedback.db in a temp folder)."""
    with tempfile.TemporaryDirectory() as folder:
        world = build_world(Path(folder), store_url=store_url)
        names = [f"rater{i:02d}" for i in range(clients)]
        world.add_accounts(*names)
        world.tasks("pairwise", clients * per_client, 2, names, overlap=1)
        port = free_port()
        server = start_process_server(world.store.url, port, Path(folder) / "server.log")
        world.store.engine.dispose()  # no idle connection of ours on the server during the run
        # the server's start-up (imports, tables) is not part of the run
        load_before, server_cpu_before = os.getloadavg()[0], children_cpu() + process_cpu(server.pid)
        pg_before = postgres_cpu(postgres)
        try:
            start, cpu_start = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(clients) as pool:
                runs = list(pool.map(lambda n: client_run(f"http://127.0.0.1:{port}", world.tokens[n], per_client),
                                     names))
            elapsed, client_cpu = time.perf_counter() - start, time.process_time() - cpu_start
            pg_cpu = postgres_cpu(postgres) - pg_before
        finally:
            server.kill()
            server.wait()
    latencies = sorted(x for run in runs for x in run)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    server_cpu = children_cpu() - server_cpu_before
    n = len(latencies)
    return {"judgments": len(latencies), "seconds": round(elapsed, 2),
            "judgments_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1), "p99_ms": round(1000 * p99, 1),
            "cpu_s": {"clients": round(client_cpu, 1), "server": round(server_cpu, 1),
                      "postgres": round(pg_cpu, 1) if postgres else None},
            "cpu_ms_per_judgment": {"server": round(1000 * server_cpu / n, 2),
                                    "postgres": round(1000 * pg_cpu / n, 2) if postgres else None},
            "cpu_per_wall": round((client_cpu + server_cpu + (pg_cpu if postgres else 0)) / elapsed, 2),
            "loadavg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the killed server, once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(server) -> float:
    """CPU seconds of a PostgreSQL server so far: the postmaster, its finished and its live backends."""
    if server is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((server.folder / "data" / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a backend that just exited
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
        elif ppid == postmaster:
            total += sum(int(x) for x in fields[11:13]) / tick
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--store", default="sqlite", help="sqlite, postgres (a throwaway server) or an empty database URL")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--record", help="label of these runs in bench/results/annotation_load.json")
    parser.add_argument("--render", action="store_true", help="print the recorded runs as a Markdown table (medians)")
    parser.add_argument("--critique", action="store_true")
    parser.add_argument("--crafted", action="store_true")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(RESULTS.read_text())))
        return
    if args.critique:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(critique_stall(Path(folder), args.crafted)))
        return
    postgres = start_postgres(durable=True) if args.store == "postgres" else None
    try:
        runs = []
        for i in range(args.repeat):
            url = postgres.create_database(f"load_{i}") if postgres else None if args.store == "sqlite" else args.store
            runs.append(load_run(url, args.clients, args.per_client, postgres))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if postgres:
            postgres.stop()
    if args.record:
        record(args, runs)


def record(args, runs: list[dict]) -> None:
    """Append the runs under their label to bench/results/annotation_load.json."""
    import subprocess

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    code = subprocess.run(["git", "-C", str(Path(modalign.__file__).parent), "log", "-1", "--format=%h"],
                          capture_output=True, text=True).stdout.strip()
    results.append({"label": args.record, "store": args.store if "://" not in args.store else "url",
                    "code": code, "clients": args.clients, "per_client": args.per_client, "cpus": os.cpu_count(),
                    "runs": runs})
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def render(results: list[dict]) -> str:
    """One row per label: the median of its runs (each run's own figures are in the JSON)."""
    by_label: dict[str, list[dict]] = {}
    for entry in results:
        by_label.setdefault(entry["label"], []).extend(entry["runs"])
    rows = ["| code, store | runs | judgments/s | p50 ms | p99 ms | app server CPU ms / judgment | "
            "PostgreSQL CPU ms / judgment | CPU / wall | load average (1 min) |", "|---" * 9 + "|"]
    for label, runs in by_label.items():
        def median(get):
            values = [get(run) for run in runs if get(run) is not None]
            return statistics.median(values) if values else None

        pg = median(lambda r: r["cpu_ms_per_judgment"]["postgres"])
        loads = [x for run in runs for x in run["loadavg_1min"]]
        rows.append(f"| {label} | {len(runs)} | {median(lambda r: r['judgments_per_s']):.1f} | "
                    f"{median(lambda r: r['p50_ms']):.0f} | {median(lambda r: r['p99_ms']):.0f} | "
                    f"{median(lambda r: r['cpu_ms_per_judgment']['server']):.1f} | "
                    f"{'-' if pg is None else f'{pg:.1f}'} | {median(lambda r: r['cpu_per_wall']):.2f} | "
                    f"{min(loads):.0f}-{max(loads):.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
