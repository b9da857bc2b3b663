"""Locust's distributed mode on this machine: the master runs in opsctl's process, N worker
processes (opsctl.loadtest.worker) connect to it over 127.0.0.1.

Python runs one core per process; workers are how one machine's cores all generate load.
The master never runs users: it dispatches them and aggregates the workers' reports. Each
worker adds its exact latencies since its previous report to Locust's stats report
(`report_to_master`); the master adds them up (`worker_report`), so a distributed run's
gates judge the same exact values as an in-process run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opsctl.errors import OperationFailed
from opsctl.loadtest.latencies import REPORT_KEY, Recorder
from opsctl.loadtest.summary import WorkerCount

HOST = "127.0.0.1"


class Workers:
    """The worker processes of one run, and what the master heard from each."""

    def __init__(self, environment: Any, count: int, locustfile: Path, logdir: Path, recorder: Recorder,
                 api_key: str | None = None):
        from opsctl.local.procs import free_port

        self.environment, self.count, self.logdir, self.recorder = environment, count, logdir, recorder
        self.port = free_port()
        self.runner = environment.create_master_runner(master_bind_host=HOST, master_bind_port=self.port)
        self.received: dict[str, int] = {}
        self.final: dict[str, dict] = {}
        environment.events.worker_report.add_listener(self._on_report)
        self.runner.register_message("opsctl_final", self._on_final)
        env = {k: v for k, v in os.environ.items() if k not in ("LOCUST_SKIP_MONKEY_PATCH", "LOADTEST_API_KEY")}
        if api_key:  # in the environment, never on a command line
            env["LOADTEST_API_KEY"] = api_key
        logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        for i in range(count):
            log = logdir / f"worker-{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "opsctl.loadtest.worker", "--master-host", HOST,
                     "--master-port", str(self.port), "--locustfile", str(locustfile)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            self.procs.append((proc, log))
        self.ids: list[str] = []

    def _on_report(self, client_id: str, data: dict, **_kw) -> None:
        self.received[client_id] = self.received.get(client_id, 0) + data["stats_total"]["num_requests"]
        self.recorder.absorb(data.get(REPORT_KEY, []))  # the exact latencies counted since its last report

    def _on_final(self, environment: Any, msg: Any, **_kw) -> None:
        self.final[msg.node_id] = msg.data

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every worker process has connected (gevent-friendly). Raises OperationFailed
        when one exits first or they are not all there within `timeout` seconds."""
        import gevent

        deadline = time.monotonic() + timeout
        while len(self.runner.clients.ready) < self.count:
            for proc, log in self.procs:
                if proc.poll() is not None:
                    raise OperationFailed(f"a Locust worker exited ({proc.returncode}) before the run: "
                                          f"{_tail(log)} (log: {log})")
            if time.monotonic() > deadline:
                raise OperationFailed(f"only {len(self.runner.clients.ready)} of {self.count} Locust workers "
                                      f"connected within {timeout:.0f} s (logs: {self.logdir})")
            gevent.sleep(0.2)
        self.ids = [c.id for c in self.runner.clients.ready]

    def flush(self, timeout: float = 30.0) -> None:
        """After stop: ask every worker for a last report and its own count; wait for all."""
        import gevent

        for wid in self.ids:
            self.runner.send_message("opsctl_flush", client_id=wid)
        deadline = time.monotonic() + timeout
        while set(self.ids) - set(self.final) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if missing := set(self.ids) - set(self.final):
            raise OperationFailed(f"{len(missing)} Locust worker(s) sent no final report within {timeout:.0f} s; "
                                  f"the totals would be incomplete (logs: {self.logdir})")

    def counts(self) -> list[WorkerCount]:
        """Per worker: requests it counted itself and requests the master received from it."""
        return [WorkerCount(id=wid, requests_sent=self.final.get(wid, {}).get("requests", 0),
                            requests_received=self.received.get(wid, 0)) for wid in self.ids]

    def close(self, timeout: float = 15.0) -> None:
        """Quit the master (which tells the workers to quit), close its socket, then make sure
        the workers are gone. Locust's quit leaves the master's ZeroMQ socket bound and its
        context (an I/O thread, an epoll, an eventfd) running, a context per run (locust 2.47
        rpc/zmqrpc.BaseSocket): opsctl closes both, or every distributed run in one process (a
        runbook, a deploy's gates, a test worker) kept the port and 7 descriptors."""
        self.runner.quit()
        server = self.runner.server
        server.close(linger=0)
        server.socket.context.term()
        deadline = time.monotonic() + timeout
        for proc, _log in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"
