"""The load-test users send the configured API key and `Cache-Control: no-cache` (issue 19
§3, RULES contract): a load gate works with keys on and measures the model, not the store."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadtest_support import opsctl
from opsctl import httpclient
from opsctl.local import procs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))
from worker_helpers import AWS_ENV  # noqa: E402
from worker_support import start_worker, stop_worker, wait_until, worker_env  # noqa: E402

pytestmark = pytest.mark.slow
KEY = f"sk-load-{secrets.token_hex(12)}"

RECORDER = textwrap.dedent('''
    import http.server, json, sys
    out = open(sys.argv[2], "a")
    class H(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            out.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                                  "cache": self.headers.get("Cache-Control")}) + "\\n")
            out.flush()
            body = b'{"status": "ready", "version": "1", "text": "hello"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_POST = _answer
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
''')


@pytest.fixture(scope="module")
def keyed_worker(postgres, redis_server, s3, tmp_path_factory):
    """A real worker (Whisper base) that accepts only KEY."""
    folder = tmp_path_factory.mktemp("keyed-worker")
    model = folder / "whisper-base"
    subprocess.run([str(Path(sys.executable).parent / "transcription-worker"), "assemble-model", "--dest",
                    str(model)], check=True, capture_output=True)
    suffix = secrets.token_hex(4)
    bucket = f"load-audio-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    env = worker_env(model, WORKER_DATABASE_URL=postgres.make_database(f"load_{suffix}"),
                     WORKER_REDIS_URL=redis_server.url, WORKER_S3_ENDPOINT_URL=s3.endpoint_url,
                     WORKER_S3_BUCKET=bucket, WORKER_API_KEY_HASHES=hashlib.sha256(KEY.encode()).hexdigest(),
                     WORKER_REQUIRE_API_KEYS="true", **AWS_ENV)
    subprocess.run([str(Path(sys.executable).parent / "transcription-worker"), "migrate"], env=env, check=True,
                   capture_output=True)
    proc, url = start_worker(env, folder / "worker.log")
    try:
        wait_until(url, proc, folder / "worker.log", ready=True)
        sample = Path(__file__).resolve().parents[1] / "worker" / "data" / "hello.wav"
        warm = httpclient.post(f"{url}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                          files={"file": ("hello.wav", sample.read_bytes(), "audio/wav")},
                          data={"model": "whisper-1"}, timeout=180)  # the first transcription warms the model
        assert warm.status_code == 200, warm.text
        yield url
    finally:
        stop_worker(proc)


@pytest.fixture
def header_recorder(tmp_path):
    script, seen = tmp_path / "recorder.py", tmp_path / "seen.jsonl"
    script.write_text(RECORDER)
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), str(seen)])
    procs.wait_until(lambda: procs.port_open(port), 20, "the header recorder")
    yield f"http://127.0.0.1:{port}", seen
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_every_user_request_carries_the_key_and_no_cache(ops_root, header_recorder, monkeypatch, workers):
    url, seen = header_recorder
    monkeypatch.setenv("OPSCTL_WORKER_API_KEY", KEY)  # deploy.api_key_env's default
    out = opsctl(ops_root, "loadtest", "run", "--host", url, "--classes", "AdminUser=1,TranscriptionUser=1",
                 "--users", "2", "--spawn-rate", "2", "--duration", "3s", "--workers", workers,
                 "--slo", "requests>=1", "--json")
    assert out.code == 0, out.stderr
    requests = [json.loads(line) for line in seen.read_text().splitlines()]
    sent = [r for r in requests if r["path"] != "/healthz" or r["auth"]]  # opsctl's own reachability probe
    # JOB entries time a whole job (submit to done); they are not HTTP requests of their own
    http_requests = sum(e["requests"] for e in out.doc["endpoints"] if e["method"] != "JOB")
    assert len(sent) >= http_requests > 0
    assert all(r["auth"] == f"Bearer {KEY}" and r["cache"] == "no-cache" for r in sent), sent[:5]
    assert KEY not in out.stdout + out.stderr


def test_a_load_gate_passes_against_a_worker_with_keys(ops_root, keyed_worker, monkeypatch, tmp_path):
    # every size class uploads the 4 s sample, so a shared 2-core machine finishes some in the run;
    # one Locust worker process, so the locustfile reads LOADTEST_AUDIO_DIR afresh
    data = Path(__file__).resolve().parents[1] / "worker" / "data"
    for name in ("hello.wav", "weather.wav", "passage.wav"):
        (tmp_path / name).symlink_to(data / "hello.wav")
    monkeypatch.setenv("LOADTEST_AUDIO_DIR", str(tmp_path))
    monkeypatch.setenv("OPSCTL_WORKER_API_KEY", KEY)
    out = opsctl(ops_root, "loadtest", "run", "--host", keyed_worker, "--classes", "TranscriptionUser",
                 "--users", "1", "--spawn-rate", "1", "--duration", "20s", "--workers", "1",
                 "--slo", "error_rate<1%,requests>=1", "--json")
    assert out.code == 0, out.stderr
    assert out.doc["total"]["failures"] == 0 and out.doc["total"]["ok"] > 0
    metrics = httpclient.get(f"{keyed_worker}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    runs = [ln for ln in metrics.splitlines() if ln.startswith("worker_transcription_duration_seconds_count")]
    assert runs and sum(float(ln.split()[-1]) for ln in runs) > 0        # the model ran

    monkeypatch.delenv("OPSCTL_WORKER_API_KEY")
    refused = opsctl(ops_root, "loadtest", "run", "--host", keyed_worker, "--classes", "TranscriptionUser",
                     "--users", "1", "--spawn-rate", "1", "--duration", "3s", "--workers", "1", "--slo", "error_rate<1%",
                     "--json")
    assert refused.code == 1 and refused.doc["total"]["failures"] == refused.doc["total"]["requests"] > 0
