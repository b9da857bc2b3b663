"""A blue-green deploy on the embedded platform under steady load.

Prints the time from the start of `deploy` to the switch, the switch itself, and the
failed requests among those sent through the router meanwhile. Baseline, measured in the
same run: the median latency of one transcription through the router under that load.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from opsctl.config import load_project
from opsctl.deploy import bluegreen
from opsctl.deploy.drivers import driver_for
from opsctl.deploy.model import Release
from opsctl.errors import OperationFailed
from opsctl.local import platform
from opsctl.starter import starter_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import router_client  # noqa: E402
from samples import variant  # noqa: E402


def load(url: str, stop: threading.Event, latencies: list[float], failures: list[str]) -> None:
    with httpx.Client(timeout=60) as client:
        deadline = time.monotonic() + 600
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            began = time.perf_counter()
            try:
                resp, resent = router_client.transcribe(client, url, variant("hello", n))
                if resent:
                    print("  a request met a connection Caddy closed at the switch and was sent again")
                if resp.status_code != 200:
                    failures.append(str(resp.status_code))
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            latencies.append(time.perf_counter() - began)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="opsctl-bench-") as tmp:
        root = Path(tmp)
        (root / "opsctl.yaml").write_text(starter_text().replace(
            "    platform: local\n", "    platform: local\n    deploy: {scale_down_delay: 3, analysis_window: 5}\n", 1))
        project = load_project(root)
        try:
            up = platform.up(project)
            env = project.env("local")
            stop, latencies, failures = threading.Event(), [], []
            thread = threading.Thread(target=load, args=(up.router_url, stop, latencies, failures))
            thread.start()
            time.sleep(3)
            driver = driver_for(project, env)
            began = time.perf_counter()
            try:
                record = bluegreen.deploy(driver, env, Release("worker:bench"), bluegreen.Options())
            except OperationFailed as exc:  # analysis judged this machine's latency: no figure this run
                stop.set()
                thread.join()
                print(f"bench_deploy: the deploy did not promote ({exc}); rerun on a quieter machine")
                return 1
            bluegreen.finish_scale_down(driver, record)
            time.sleep(2)
            stop.set()
            thread.join()
        finally:
            platform.down(project, purge=True)
    steps = {s.name: s.seconds for s in record.steps}
    print("  steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    to_switch = sum(v for k, v in steps.items() if k != "post-promotion analysis")
    baseline = statistics.median(latencies)
    print(f"bench_deploy: start of deploy to switch done {to_switch:.2f}s "
          f"({to_switch / baseline:.1f}x the median request {baseline * 1000:.0f} ms); "
          f"switch {steps['switch'] * 1000:.0f} ms ({steps['switch'] / baseline:.2f}x the median request); "
          f"failed requests {len(failures)} of {len(latencies)} under steady load; total deploy "
          f"{time.perf_counter() - began:.1f}s incl. analysis window and scale-down delay")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
