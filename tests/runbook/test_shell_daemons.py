"""Nothing a shell step starts outlives its attempt: not a daemon that left the process
group (`setsid`), not a double-forked orphan that also cleared its environment; so a retry
never overlaps the attempt before it and the run leaves nothing behind (issue 25 §5.2).

No timing assertions: the daemons record their pids and would write marker files after
their sleep; the tests assert that no earlier daemon was alive when an attempt began, that
no process carrying the test's unique token remains when the run returns (so no marker can
ever appear), and that no marker exists."""

from __future__ import annotations

import uuid

import psutil
import pytest

from tests.runbook.runbook_support import write_runbook as _write
from tests.runbook.runbook_support import run_runbook


def _survivors(token: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if token in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# each daemon records its pid in daemons.txt, sleeps, then writes a marker named after the token
DAEMONS = {
    # new session, so out of the step's process group (the case of the issue)
    "setsid": 'setsid sh -c "echo \\$\\$ >> daemons.txt; sleep 4; touch {token}-\\$\\$" </dev/null >/dev/null 2>&1 &',
    # double fork: its parent exits at once, it is re-parented; new session and empty environment
    "orphan-env-cleared": '( setsid env -i /bin/sh -c "echo \\$\\$ >> daemons.txt; sleep 4; touch {token}-\\$\\$" '
                          '</dev/null >/dev/null 2>&1 & ) ;',
}


@pytest.mark.parametrize("kind", sorted(DAEMONS))
def test_a_retry_never_overlaps_a_daemon_of_the_attempt_before_and_none_outlives_the_run(runner, ops_root, kind):
    token = f"daemon-{uuid.uuid4().hex[:10]}"
    daemon = DAEMONS[kind].format(token=token)
    check = 'for p in $(cat daemons.txt 2>/dev/null); do kill -0 $p 2>/dev/null && echo $p >> overlap.txt; done;'
    _write(ops_root, "daemons", 1, f"""\
        name: daemons
        version: 1
        steps:
          - id: spawn
            action: shell
            with:
              command: '{check} {daemon} sleep 6'
            timeout: 1
            retries: {{count: 2, backoff: 0}}
        """)
    result = run_runbook(runner, "daemons", exit_code=1)
    step = result["steps"][0]
    assert step["status"] == "failed" and step["attempts"] == 3, step
    pids = [int(p) for p in (ops_root / "daemons.txt").read_text().split()]
    assert len(pids) == 3, pids                          # every attempt started its daemon
    assert not (ops_root / "overlap.txt").exists(), (ops_root / "overlap.txt").read_text()
    assert _survivors(token) == [] and not any(_alive(p) for p in pids)
    assert not list(ops_root.glob(f"{token}-*"))         # and so no marker can appear later


def test_a_step_that_succeeds_leaves_nothing_running_in_the_background(runner, ops_root):
    token = f"bg-{uuid.uuid4().hex[:10]}"
    _write(ops_root, "bg", 1, f"""\
        name: bg
        version: 1
        steps:
          - id: spawn
            action: shell
            with:
              command: 'setsid sh -c "echo \\$\\$ >> daemons.txt; sleep 4; touch {token}" </dev/null >/dev/null 2>&1 &
                        nohup sh -c "sleep 4; touch {token}-nohup" >/dev/null 2>&1 &
                        while [ ! -s daemons.txt ]; do sleep 0.05; done; echo started'
        """)
    result = run_runbook(runner, "bg")
    pid = int((ops_root / "daemons.txt").read_text())
    assert _survivors(token) == [] and not _alive(pid)
    assert not list(ops_root.glob(f"{token}*"))
    step = result["steps"][0]
    assert step["outputs"]["stdout"] == "started" and step["outputs"]["stopped_background_processes"] >= 2, step
