"""A backup killed mid-upload: never listed as complete, and no upload left open.

The backup runs as a real `opsctl` process. To kill it at a known point (not a race), a
sitecustomize on its PYTHONPATH stops the process (SIGSTOP) right after the first
multipart part reached S3 (s3://) or the first 8 MB reached the partial file (file://);
the test then kills it for real: SIGKILL (cleanup by the next prune) or SIGTERM (the
process cleans up itself, as in a CI cancel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backup_support import KEY
from opsctl.cli import app

pytestmark = pytest.mark.slow

HOOK = '''
import os, signal
if os.environ.get("BK_STOP_AFTER") == "upload_part":
    import botocore.client
    _call = botocore.client.BaseClient._make_api_call
    def _make_api_call(self, name, params):
        out = _call(self, name, params)
        if name == "UploadPart" and not os.environ.get("BK_STOPPED"):
            os.environ["BK_STOPPED"] = "1"  # once: parts still in flight must not stop it again
            os.kill(os.getpid(), signal.SIGSTOP)
        return out
    botocore.client.BaseClient._make_api_call = _make_api_call
elif os.environ.get("BK_STOP_AFTER") == "bytes":
    import opsctl.backup.pipeline as p
    _pack = p.pack
    def pack(*args, **kwargs):
        sent = 0
        for block in _pack(*args, **kwargs):
            yield block
            sent += len(block)
            if sent > 8 << 20 and not os.environ.get("BK_STOPPED"):
                os.environ["BK_STOPPED"] = "1"
                os.kill(os.getpid(), signal.SIGSTOP)
    p.pack = pack
'''


@pytest.fixture
def big_redis(seeded):
    """12 MB of incompressible values, so the RDB stream needs several multipart parts."""
    import redis

    r = redis.Redis.from_url(seeded.redis_url)
    pipe = r.pipeline(transaction=False)
    for i in range(48):
        pipe.set(f"bkkill:{i}", os.urandom(256 * 1024))
    pipe.execute()
    yield
    r.delete(*[f"bkkill:{i}" for i in range(48)])


def _start(benv, tmp_path: Path) -> subprocess.Popen:
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OPSCTL_BACKUP_KEY=KEY, CI="true",
               OPSCTL_ROOT=str(benv.platform.root), BK_STOP_AFTER="upload_part" if benv.kind == "s3" else "bytes")
    opsctl = Path(sys.executable).parent / "opsctl"
    return subprocess.Popen([str(opsctl), "backup", "create", "--env", benv.name, "--type", "redis"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the backup never reached its first upload"
        time.sleep(0.05)


def _open_uploads(benv) -> list[str]:
    repo = benv.repo()
    if benv.kind == "s3":  # ask S3 itself, not only our repository class
        pages = repo.s3.list_multipart_uploads(Bucket=repo.bucket, Prefix=repo.prefix)
        return [u["Key"] for u in pages.get("Uploads", [])]
    return repo.open_uploads()


def _listed(runner, benv) -> dict[str, str]:
    result = runner.invoke(app, ["backup", "list", "--env", benv.name, "--json"])
    assert result.exit_code == 0, result.output
    return {b["id"]: b["status"] for b in json.loads(result.stdout)["backups"]}


def _killed_mid_upload(benv, runner, tmp_path) -> str:
    """The id of a backup SIGKILLed with an upload open: listed as incomplete."""
    known = _listed(runner, benv)
    proc = _start(benv, tmp_path)
    _wait_stopped(proc)
    assert _open_uploads(benv), "the process was stopped before an upload was open"
    proc.kill()
    proc.wait()
    new = {i: s for i, s in _listed(runner, benv).items() if i not in known}
    assert list(new.values()) == ["incomplete"]
    (killed,) = new
    return killed


def test_sigkill_mid_upload_then_prune_cleans_up(benv, big_redis, runner, tmp_path):
    killed = _killed_mid_upload(benv, runner, tmp_path)
    result = runner.invoke(app, ["restore", "--env", benv.name, "--id", killed, "--yes"])
    assert result.exit_code == 1 and "no manifest" in result.stderr
    result = runner.invoke(app, ["backup", "prune", "--env", benv.name, "--keep-last", "50", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["incomplete"] == [killed]
    assert _open_uploads(benv) == []
    assert killed not in _listed(runner, benv)


def test_sigkill_mid_upload_then_the_next_backup_cleans_up(benv, big_redis, runner, tmp_path):
    killed = _killed_mid_upload(benv, runner, tmp_path)
    result = runner.invoke(app, ["backup", "create", "--env", benv.name, "--type", "db", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["cleaned"] == [killed]
    assert _open_uploads(benv) == []
    assert _listed(runner, benv)[made["id"]] == "complete" and killed not in _listed(runner, benv)


def test_sigterm_mid_upload_cleans_up_itself(benv, big_redis, runner, tmp_path):
    known = _listed(runner, benv)
    proc = _start(benv, tmp_path)
    _wait_stopped(proc)
    assert _open_uploads(benv)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # breaker 37 G7: 1 said "failed" to CI for a cancel
    errors = [line for line in err.decode().splitlines() if line.startswith("opsctl: error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "uploads aborted" in errors[0]
    assert _open_uploads(benv) == []
    assert set(_listed(runner, benv)) == set(known)


@pytest.mark.integration
def test_an_interrupt_just_after_create_database_leaves_no_database(postgres, monkeypatch):
    """Breaker 66 G2: a restore interrupted (Ctrl-C, SIGTERM, a runbook step's timeout) after the
    server ran CREATE DATABASE and before the restore noted it (`created`, the run's mark) left
    an empty `<name>_restoring_...` database that nothing ever dropped. The interrupt now waits
    for those statements, then the restore's clean-up drops the database and the interrupt goes
    on. Here it is sent the moment CREATE DATABASE has returned."""
    import psycopg

    from opsctl.backup import postgres as pgb

    name = f"g2_restoring_{os.urandom(4).hex()}"
    real = pgb.create_database

    def created_then_interrupted(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pgb, "create_database", created_then_interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background suite ignores it
    try:
        with pytest.raises(KeyboardInterrupt):
            pgb.restore_into(postgres.url, "never-read.dump", name, 1, [], archive=pgb.Archive(),
                             major=pgb.server_major(postgres.url), run_mark="g2-run")
    finally:
        signal.signal(signal.SIGINT, previous)
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        left = conn.execute("select datname from pg_database where datname = %s", (name,)).fetchall()
    assert left == []
