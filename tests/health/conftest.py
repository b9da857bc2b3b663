"""Fixtures shared by the health tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from opsctl.local import procs

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture(autouse=True)
def fast_sweeps(monkeypatch):
    """The monitor's --interval floor (settings.MIN_INTERVAL_S, 1 s) lowered to 10 ms: these tests
    run many sweeps, each checking a server of their own that answers at once."""
    from opsctl.health import settings

    monkeypatch.setattr(settings, "MIN_INTERVAL_S", 0.01)


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    """A real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1, no cluster."""
    if ALERTMANAGER is None:
        pytest.skip("alertmanager not installed: apt-get install prometheus-alertmanager "
                    "(make test installs it where apt-get works)")
    folder = tmp_path_factory.mktemp("alertmanager")
    (folder / "alertmanager.yml").write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    port = procs.free_port()
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={folder / 'alertmanager.yml'}",
                             f"--storage.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: procs.port_open(port), 30, "alertmanager")
    yield url
    proc.terminate()
    proc.wait(10)
