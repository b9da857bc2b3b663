"""The core called as a library, the way a runbook step calls it: from a worker thread,
in a process that Locust must not monkey-patch."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import pytest

from opsctl.config import load_project
from opsctl.loadtest import plan, runner
from opsctl.local import procs


@pytest.fixture
def http_server(tmp_path):
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.wait_until(lambda: procs.port_open(port), 20, "http.server")
    (tmp_path / "healthz").write_text('{"status": "ok"}')  # /healthz answers as the worker; /readyz, /version, /metrics 404
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_run_from_a_thread_without_patching(ops_root, http_server):
    project = load_project(ops_root)
    the_plan = plan.make(project, project.env("local"), "light", users=2, spawn_rate=2, duration="3s",
                         slo_text="error_rate<5%", host=http_server, classes="AdminUser")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        summary = pool.submit(runner.run, the_plan).result(timeout=120)
    import gevent.monkey

    assert not gevent.monkey.is_module_patched("socket") and not gevent.monkey.is_module_patched("threading")
    by_name = {e.name: e for e in summary.endpoints}
    assert summary.total.requests > 0
    if "/healthz" in by_name:
        assert by_name["/healthz"].failures == 0
    assert all(e.failures == e.requests for n, e in by_name.items() if n != "/healthz")
    assert summary.passed == (summary.total.error_rate < 5)
    assert [g.gate for g in summary.gates] == ["error_rate<5%"]
