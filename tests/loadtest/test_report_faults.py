"""A load test whose report files can't be written (a full disk): one line naming them, no
traceback, no half-written file left. Locust's CSV writer runs in a greenlet: on ENOSPC it
printed its traceback on stderr mid-run, and the run then ended on "a file operation: No
space left on device", which names no file, with the CSV files left truncated."""

from __future__ import annotations

import pytest

from loadtest_support import opsctl
from tests.volumes import fill

pytestmark = pytest.mark.slow


def test_csv_files_on_a_full_disk_are_one_line_and_removed(small_volume, http_server):
    from opsctl.starter import starter_text

    root = small_volume
    (root / "opsctl.yaml").write_text(starter_text())
    fill(root)
    out = opsctl(root, "loadtest", "run", "--host", f"http://{http_server}", "--duration", "3s", "--users", "1",
                 "--spawn-rate", "1", "--csv", str(root / "reports-run"))
    assert out.code == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "Greenlet" not in out.stderr, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("opsctl: error: ")]
    assert f"writing the CSV files {root / 'reports-run'}_*.csv (removed again): No space left on device" in line, line
    assert not list(root.glob("reports-run*")), list(root.iterdir())
