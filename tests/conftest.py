"""Session-scoped real components: each is started once per test run and stopped at the end.

They are the same starters `opsctl local up` uses (opsctl.local.*), so the tests exercise
the code that runs the embedded platform.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opsctl.local import postgres as pg
from opsctl.local import procs
from opsctl.local import redis as rd
from opsctl.local import s3 as s3mod

REPO = Path(__file__).resolve().parent.parent

# the suite is hermetic: an opsctl setting exported in the shell that runs it (OPSCTL_ROOT
# pointing at a real project, a backup key, a database URL) would reach every command the
# tests run, in this process and the processes they start; tests set what they need
for _name in [n for n in os.environ if n.startswith("OPSCTL_")]:
    del os.environ[_name]
os.environ.update(s3mod.CREDENTIALS)
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")

# each xdist worker gets a temporary folder of its own: a restore keeps its run record there and
# the next restore on the machine removes what dead ones left (and says so), so one worker's
# killed restore was cleaned by the other worker's restore, whose one-line error then had two
# lines (session 29). Pytest's own tmp_path folders come from --basetemp, not from this.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile

    os.environ["TMPDIR"] = tempfile.mkdtemp(prefix=f"opsctl-{os.environ['PYTEST_XDIST_WORKER']}-")
    tempfile.tempdir = None


@dataclass
class Postgres:
    port: int
    pid: int
    data: Path

    @property
    def url(self) -> str:
        return pg.url(self.port)

    def make_database(self, name: str | None = None, owner: str = "postgres") -> str:
        """A fresh database for one test module; returns its URL."""
        return pg.ensure_database(self.port, name or f"t_{uuid.uuid4().hex[:10]}", owner)


@dataclass
class Redis:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return rd.url(self.port)


@dataclass
class S3:
    port: int
    pid: int
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint_url(self) -> str:
        return s3mod.endpoint(self.port)

    def client(self):
        return s3mod.client(self.endpoint_url)

    def make_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Postgres:
    base = tmp_path_factory.mktemp("postgres")
    port = procs.free_port()
    pid = pg.start(base / "data", port, base / "log" / "postgres.log")
    yield Postgres(port, pid, base / "data")
    pg.stop(pid)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Redis:
    base = tmp_path_factory.mktemp("redis")
    port = procs.free_port()
    pid = rd.start(base / "data", port, base / "redis.log")
    yield Redis(port, pid)
    rd.stop(pid, port)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3:
    base = tmp_path_factory.mktemp("moto")
    port = procs.free_port()
    pid = s3mod.start(port, base / "moto.log")
    yield S3(port, pid)
    procs.stop(pid)


@pytest.fixture(autouse=True)
def _secrets_remembered_by_the_test_only(monkeypatch):
    """What a test's commands remember (opsctl.redact.remember) is forgotten after it: opsctl
    runs one command per process, the suite runs many in one, and a key one test remembered
    (LOADTEST_API_KEY=rate) masked another test's words ("spawn_***"). What fixtures of wider
    scope remembered before the test stays."""
    from opsctl import redact

    monkeypatch.setattr(redact, "_known", set(redact._known))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def small_volume(tmp_path) -> Path:
    """A tmpfs of 8 MiB of its own at tmp_path/vol, unmounted after the test: a real file
    system that fills up (ENOSPC). Mounting needs root (CI runs as root); elsewhere the test
    is skipped with why."""
    import subprocess

    path = tmp_path / "vol"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a full-disk test needs root")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def ops_root(tmp_path, monkeypatch) -> Path:
    """An empty ops root with the starter opsctl.yaml, as the current directory."""
    from opsctl.starter import starter_text

    (tmp_path / "opsctl.yaml").write_text(starter_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPSCTL_ROOT", raising=False)
    return tmp_path


@dataclass
class LocalPlatform:
    root: Path

    def project(self):
        from opsctl.config import load_project

        return load_project(self.root)

    def endpoints(self):
        from opsctl.endpoints import resolve

        proj = self.project()
        return resolve(proj, proj.env("local"))

    @property
    def backup_key(self) -> str:
        """The one backup key of this platform's repository: it is fixed when the repository
        is initialised, so every test backing up into it must use the same key."""
        from opsctl.backup.keys import generate

        path = self.root / ".opsctl" / "test-backup-key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(generate())
        return path.read_text()

    def up(self):
        """Repair whatever a test stopped; a no-op when all is healthy."""
        from opsctl.local import platform

        return platform.up(self.project())


@pytest.fixture(scope="session")
def local_platform(tmp_path_factory) -> LocalPlatform:
    """One embedded platform (`opsctl local up`) shared by the whole session.

    Its ops root is a temporary folder with the starter opsctl.yaml; tests that break a
    component call `.up()` afterwards so the next test finds it healthy.
    """
    from opsctl.local import platform
    from opsctl.starter import starter_text

    root = tmp_path_factory.mktemp("platform")
    # short deploy windows so blue-green tests take seconds, not minutes; a p95 limit and a
    # response time that judge the release and the platform, not the machine: analysis runs
    # real transcriptions (never the transcript store), and the suite shares two cores with
    # the load it generates (a healthy sweep answered in over 2 s in CI, session 28). Tests of
    # the response threshold set their own (test_one_threshold_drives_both_...).
    (root / "opsctl.yaml").write_text(starter_text().replace(
        "    platform: local\n",
        "    platform: local\n    deploy: {scale_down_delay: 2, analysis_window: 3, drain_timeout: 10, max_p95_ms: 300000}\n"
        "    thresholds: {response_time_ms: 60000}\n", 1))
    lp = LocalPlatform(root)
    platform.up(lp.project())
    yield lp
    platform.down(lp.project(), purge=True)
