"""The chunked-upload load-test user (issue 26) run through Locust against the session's
real worker: create an upload, send it in two parts (5 MiB and the rest), complete it,
transcribe the file by `file_id`; each step its own entry, the whole flow one judged JOB."""

from __future__ import annotations

import pytest

from loadtest_support import opsctl
from opsctl.config import load_project
from opsctl.loadtest import profiles

FLOW = "chunked upload create→done"


def test_the_uploads_profile_runs_the_chunked_upload_user():
    project = load_project(profiles.SHIPPED.parent)
    profile = profiles.get(project, "uploads")
    assert profile.classes["ChunkedUploadUser"] >= max(w for n, w in profile.classes.items() if n != "ChunkedUploadUser")
    assert "TranscriptionUser" in profile.classes and profile.slo


@pytest.mark.slow
def test_chunked_uploads_through_locust_against_the_real_worker(local_platform, reports):
    out = opsctl(local_platform.root, "loadtest", "run", "--env", "local", "--profile", "uploads",
                 "--classes", "ChunkedUploadUser=1", "--users", "1", "--spawn-rate", "1", "--duration", "5s",
                 "--slo", "error_rate<1%", "--stop-timeout", "180s", "--json")
    assert out.code == 0, out.stderr
    doc = out.doc
    by_name = {(e["method"], e["name"]): e for e in doc["endpoints"]}
    created = by_name[("POST", "/v1/uploads")]
    parts = by_name[("POST", "/v1/uploads/{id}/parts")]
    completed = by_name[("POST", "/v1/uploads/{id}/complete")]
    jobs = by_name[("POST", "/v1/jobs [file_id]")]
    flow = by_name[("JOB", FLOW)]
    assert created["requests"] >= 1 and parts["requests"] == 2 * created["requests"]
    assert completed["requests"] == jobs["requests"] == flow["requests"] == created["requests"]
    assert all(e["failures"] == 0 for e in (created, parts, completed, jobs, flow)), doc["endpoints"]
    assert ("POST", "/v1/uploads/{id}/cancel") not in by_name
    assert doc["judged"]["ok"] == flow["ok"] >= 1 and doc["in_flight"] == 0
    assert doc["passed"] is True
