"""How many requests per second one core of this machine generates with Locust's
FastHttpUser against a trivial endpoint of the worker (/healthz).

Locust's documentation ("Increase performance with a more efficient HTTP client",
docs.locust.io/en/2.46.7/increase-performance.html) publishes: one Locust process (one
core) does around 16000 requests/s with FastHttpUser and 4000 with HttpUser, in a
`while True` loop of small requests, on a 2021 M1 MacBook Pro with Python 3.11.

The worker runs alone (no database: /healthz needs none) pinned to one core and the load
generator to the other, so they do not share a core. If the worker saturates before the
generator does, the wall-clock rate understates the generator; so the figure is requests per
CPU-second the generator process burned (what one fully busy core would produce), printed
beside the wall rate and the generator's CPU use. Baseline, measured in the same run: the
same loop with Locust's HttpUser (python-requests), in ROUNDS alternated rounds; each figure
is printed as the median of the rounds with its min-max. Run: .venv/bin/python tests/benchmarks/bench_loadgen.py
"""

from __future__ import annotations

import locust  # noqa: F401,I001  (first: a dedicated process, Locust's usual gevent patching)

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, HttpUser, constant, task
from locust.env import Environment
from locust.event import Events

from opsctl.local import procs

SECONDS = 10
ROUNDS = 3
USERS = 20
PUBLISHED = {"FastHttpUser": 16000, "HttpUser": 4000}


class FastHealthz(FastHttpUser):
    wait_time = constant(0)

    @task
    def healthz(self):
        self.client.get("/healthz")


class RequestsHealthz(HttpUser):
    wait_time = constant(0)

    @task
    def healthz(self):
        self.client.get("/healthz")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(user_class, host: str) -> dict:
    env = Environment(user_classes=[user_class], host=host, events=Events())
    runner = env.create_local_runner()
    runner.start(USERS, spawn_rate=USERS)
    gevent.sleep(1)  # ramp-up and connection set-up stay out of the figure
    env.stats.reset_all()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    gevent.sleep(SECONDS)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - t0
    total = env.stats.total
    n, failures = total.num_requests, total.num_failures
    runner.quit()
    return {"requests": n, "failures": failures, "wall_rps": n / wall, "cpu_share": cpu / wall,
            "per_cpu_second": n / cpu if cpu else 0.0}


def main() -> int:
    cores = sorted(os.sched_getaffinity(0))
    gen_core, worker_core = cores[0], cores[-1]
    port = procs.free_port()
    exe = Path(sys.executable).parent / "transcription-worker"
    with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
        env = {**os.environ, "WORKER_LOG_LEVEL": "warning"}
        pid = procs.spawn([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], Path(tmp) / "worker.log", env=env)
        try:
            os.sched_setaffinity(pid, {worker_core})
            os.sched_setaffinity(0, {gen_core})
            procs.wait_until(lambda: procs.port_open(port), 120, "transcription-worker", Path(tmp) / "worker.log", pid)
            host = f"http://127.0.0.1:{port}"
            rounds = {"HttpUser (baseline)": [], "FastHttpUser": []}
            for _ in range(ROUNDS):  # alternated: a load that comes and goes lands on both
                rounds["HttpUser (baseline)"].append(measure(RequestsHealthz, host))
                rounds["FastHttpUser"].append(measure(FastHealthz, host))
        finally:
            procs.stop(pid, 30, "transcription-worker")
    print(f"load generator on core {gen_core}, worker on core {worker_core}; {USERS} users, {SECONDS} s each, "
          f"{ROUNDS} alternated rounds, median (min-max); {os.cpu_count()} cores shared with other work")

    def spread(runs: list[dict], key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.median(values):7.0f} ({min(values):.0f}-{max(values):.0f})"

    for name, runs in rounds.items():
        print(f"  {name:20s} {sum(r['requests'] for r in runs):7d} requests, {sum(r['failures'] for r in runs)} failed, "
              f"req/s wall {spread(runs, 'wall_rps')}, generator CPU "
              f"{statistics.median(r['cpu_share'] for r in runs):.0%}, req per generator CPU-second "
              f"{spread(runs, 'per_cpu_second')}")
    baseline, fast = rounds["HttpUser (baseline)"], rounds["FastHttpUser"]
    ratios = sorted(f["per_cpu_second"] / b["per_cpu_second"] for f, b in zip(fast, baseline))
    fast_cpu = statistics.median(r["per_cpu_second"] for r in fast)
    base_cpu = statistics.median(r["per_cpu_second"] for r in baseline)
    fast_wall = statistics.median(r["wall_rps"] for r in fast)
    print(f"FastHttpUser / HttpUser (same run, per CPU-second): {statistics.median(ratios):.2f}x, per round "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f} (Locust's published ratio: "
          f"{PUBLISHED['FastHttpUser'] / PUBLISHED['HttpUser']:.1f}x)")
    print(f"FastHttpUser per core vs Locust's published 16000 req/s: {fast_cpu / PUBLISHED['FastHttpUser']:.2f}x "
          f"(wall rate: {fast_wall / PUBLISHED['FastHttpUser']:.2f}x)")
    print(f"HttpUser per core vs Locust's published 4000 req/s: {base_cpu / PUBLISHED['HttpUser']:.2f}x")
    return 0 if all(r["requests"] and not r["failures"] for r in fast) else 1


if __name__ == "__main__":
    raise SystemExit(main())
