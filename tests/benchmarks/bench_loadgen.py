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
same loop with Locust's HttpUser (python-requests). Run: .venv/bin/python tests/benchmarks/bench_loadgen.py
"""

from __future__ import annotations

import locust  # noqa: F401,I001  (first: a dedicated process, Locust's usual gevent patching)

import os
import resource
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
            baseline = measure(RequestsHealthz, host)
            fast = measure(FastHealthz, host)
        finally:
            procs.stop(pid, 30, "transcription-worker")
    print(f"load generator on core {gen_core}, worker on core {worker_core}; {USERS} users, {SECONDS} s each, "
          f"{os.cpu_count()} cores shared with other work")
    for name, r in (("HttpUser (baseline)", baseline), ("FastHttpUser", fast)):
        print(f"  {name:20s} {r['requests']:7d} requests, {r['failures']} failed, {r['wall_rps']:7.0f} req/s wall, "
              f"generator CPU {r['cpu_share']:.0%}, {r['per_cpu_second']:7.0f} req per generator CPU-second")
    print(f"FastHttpUser / HttpUser (same run, per CPU-second): {fast['per_cpu_second'] / baseline['per_cpu_second']:.2f}x "
          f"(Locust's published ratio: {PUBLISHED['FastHttpUser'] / PUBLISHED['HttpUser']:.1f}x)")
    print(f"FastHttpUser per core vs Locust's published 16000 req/s: {fast['per_cpu_second'] / PUBLISHED['FastHttpUser']:.2f}x "
          f"(wall rate: {fast['wall_rps'] / PUBLISHED['FastHttpUser']:.2f}x)")
    print(f"HttpUser per core vs Locust's published 4000 req/s: {baseline['per_cpu_second'] / PUBLISHED['HttpUser']:.2f}x")
    return 0 if fast["requests"] and not fast["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
