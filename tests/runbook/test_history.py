"""Run history where the platform is (issue 23): a kubernetes environment's journals go to
its backup bucket (S3 over HTTP, moto server), so another machine lists and resumes them."""

from __future__ import annotations

import json
import shutil
import stat
from textwrap import dedent

import pytest
import yaml

from opsctl.cli import app
from tests.runbook.runbook_support import run_runbook

pytestmark = pytest.mark.integration

RUNBOOK = """\
    name: two
    version: 1
    steps:
      - id: one
        action: shell
        with: {command: "echo x >> one.txt"}
      - id: two
        action: shell
        with: {command: "test -f go.txt"}
    """


@pytest.fixture
def staging(ops_root, s3) -> str:
    """A kubernetes environment whose backup bucket is a fresh bucket of the moto server."""
    bucket = s3.make_bucket("runs")
    cfg = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    cfg["environments"]["staging"] = {"platform": "kubernetes",
                                      "aws": {"region": "us-east-1", "endpoint_url": s3.endpoint_url},
                                      "buckets": {"backups": bucket, "audio": bucket}}
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    path = ops_root / "runbooks" / "two" / "v1.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(dedent(RUNBOOK))
    return bucket


def test_a_run_on_a_kubernetes_environment_is_listed_and_resumed_from_its_bucket(runner, ops_root, staging, s3):
    first = run_runbook(runner, "two", "--env", "staging", exit_code=1)
    run_id = first["run_id"]
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=staging).get("Contents", [])]
    assert keys == [f"runbook-runs/{run_id}.jsonl"]

    shutil.rmtree(ops_root / ".opsctl" / "runs")  # another machine: no local journal
    listed = runner.invoke(app, ["runbook", "history", "--env", "staging", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["run_id"] == run_id and row["status"] == "failed" and row["steps"] == {"one": "ok", "two": "failed"}
    records = json.loads(runner.invoke(app, ["runbook", "history", "--env", "staging", "--run", run_id,
                                             "--json"]).stdout)
    assert [r["type"] for r in records] == ["run", "step", "step", "end"]

    (ops_root / "go.txt").write_text("")
    resumed = run_runbook(runner, "two", "--env", "staging", "--resume", run_id)
    assert [(s["id"], s["status"]) for s in resumed["steps"]] == [("one", "done-before"),
                                                                                     ("two", "ok")]
    assert (ops_root / "one.txt").read_text() == "x\n"  # not repeated
    local = ops_root / ".opsctl" / "runs" / f"{run_id}.jsonl"
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    after = json.loads(runner.invoke(app, ["runbook", "history", "--env", "staging", "--json"]).stdout)
    assert after[0]["status"] == "succeeded"


def test_local_runs_stay_on_this_machine(runner, ops_root, staging, s3):
    result = run_runbook(runner, "two", exit_code=1)
    assert s3.client().list_objects_v2(Bucket=staging).get("KeyCount", 0) == 0
    listed = json.loads(runner.invoke(app, ["runbook", "history", "--env", "local", "--json"]).stdout)
    assert listed[0]["env"] == "local" and listed[0]["run_id"] == result["run_id"], listed


@pytest.mark.parametrize("run_id", ["../../etc/passwd", "20261130T014500-zzzzzz", "x"])
def test_a_run_id_that_is_not_one_is_refused(runner, ops_root, run_id):
    result = runner.invoke(app, ["runbook", "history", "--run", run_id])
    assert result.exit_code == 2 and "is not a run id" in result.output and result.output.count("\n") == 1


def _run_against(runner, ops_root, port: int):
    """Run `two` (to success) on `staging` with its S3 endpoint moved to 127.0.0.1:`port`."""
    cfg = yaml.safe_load((ops_root / "opsctl.yaml").read_text())
    cfg["environments"]["staging"]["aws"]["endpoint_url"] = f"http://127.0.0.1:{port}"
    (ops_root / "opsctl.yaml").write_text(yaml.safe_dump(cfg))
    (ops_root / "go.txt").touch()
    return runner.invoke(app, ["runbook", "run", "two", "--env", "staging", "--json"])


def test_a_bucket_that_refuses_the_journal_is_tried_once_and_again_at_the_end(runner, ops_root, staging):
    """An unreachable or refusing bucket was tried after every record (behind botocore's
    retries: seconds each on a dead endpoint), slowing every step of the run. After the first
    failure the mirror waits for the run's end record, which stores the whole journal."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    puts: list[str] = []

    class Refusing(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            puts.append(self.path)
            body = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = _run_against(runner, ops_root, server.server_port)
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert "journal not stored where the platform is" in result.stderr, result.stderr  # said, once
    assert result.stderr.count("journal not stored") == 1, result.stderr
    # the run record (refused), then nothing until the end record: 2 attempts, not one per record (4)
    assert len(puts) == 2 and all(p.endswith(".jsonl") for p in puts), puts


def test_a_bucket_that_never_answers_holds_the_run_for_two_short_tries(runner, ops_root, staging, monkeypatch):
    """Breaker 35: an endpoint that accepts the connection and never answers held a run five
    minutes before its first step (botocore's 60 s reads, retried). The journal's client
    tries twice with a short timeout (history.TIMEOUT, shortened here), then the run goes on."""
    from opsctl.runbook import history
    from tests.health.servers import HungServer

    monkeypatch.setattr(history, "TIMEOUT", 0.5)
    hung = HungServer()
    try:
        result = _run_against(runner, ops_root, hung.port)
        requests = [conn.recv(300).split(b"\r\n")[0] for conn in hung.accepted]
    finally:
        hung.close()
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "succeeded", result.output
    assert result.stderr.count("journal not stored where the platform is") == 1, result.stderr
    # two tries of the run record, two of the end record: nothing between, nothing more
    assert len(requests) == 4, requests


def test_a_folder_where_a_journal_belongs_is_left_out_with_a_warning(runner, ops_root):
    """Breaker 43 S14: `runbook history` ended on 'unexpected IsADirectoryError' for a folder named
    like a journal; `--run` of it likewise. S16: with no run, an empty table said nothing."""
    empty = runner.invoke(app, ["runbook", "history"])
    assert empty.exit_code == 0 and "no runbook runs journaled yet" in empty.stdout, empty.output
    odd = ops_root / ".opsctl" / "runs" / "20261203T000001-abcdef.jsonl"
    odd.mkdir(parents=True)
    listed = runner.invoke(app, ["runbook", "history"])
    assert listed.exit_code == 0, listed.output
    assert "is not a readable journal (Is a directory): left out" in " ".join(listed.stderr.split()), listed.stderr
    one = runner.invoke(app, ["runbook", "history", "--run", odd.stem])
    assert one.exit_code == 2 and f"{odd} is not a readable journal (Is a directory); move it aside" in one.stderr


def test_runbook_list_is_a_plain_table_whole_at_80_columns(runner, ops_root):
    import shutil as sh
    from pathlib import Path

    sh.copytree(Path(__file__).resolve().parents[2] / "runbooks", ops_root / "runbooks")
    r = runner.invoke(app, ["runbook", "list"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "┏" not in r.stdout and "│" not in r.stdout, r.stdout  # no box table in a CI log
    assert any(line.split() == ["nightly-backup", "1,", "2,", "3", "1,", "2,", "3"] for line in r.stdout.splitlines())
