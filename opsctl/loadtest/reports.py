"""The report files of a run: Locust's own HTML report and CSV files, and a JUnit file.

HTML and CSV are written by Locust's code (get_html_report, StatsCSVFileWriter), so they
look exactly like `locust --html/--csv` output people already know (Locust's tables count
all requests and round response times; opsctl's gates do neither, see latencies.py). JUnit
has one test case per SLO gate, so a CI system shows a breached gate as a failed test by its name.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from opsctl.files import write_text
from opsctl.loadtest.summary import RunSummary


def write_html(environment: Any, path: Path) -> Path:
    """Locust's own HTML report of `environment`'s stats, written to `path`; returns it."""
    from locust.html import get_html_report

    return write_text(path, get_html_report(environment, show_download_link=False), private=True)  # whole, or named


class CsvFiles:
    """Locust's CSV writer for the run: its history file fills while the run goes; at the end
    the stats, failures and exceptions files are rewritten once from the final numbers
    (Locust's own writer refreshes them only once a second, so they could lag the end).

    A machine fault while writing them (a full disk, a folder made read-only) is one
    OperationFailed naming the files, raised by `finish`, the files written so far removed:
    Locust's writer, a greenlet, printed its traceback on stderr and the run ended on "a
    file operation: No space left on device"."""

    def __init__(self, environment: Any, prefix: str):
        import gevent
        from locust.stats import PERCENTILES_TO_REPORT, StatsCSVFileWriter

        self.environment, self.prefix = environment, prefix
        self.fault: OSError | None = None  # what stopped the history writer during the run
        with self._faults():
            for path in self.paths():  # Locust opens them as the umask makes them: a report is 0600
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self.writer = StatsCSVFileWriter(environment, PERCENTILES_TO_REPORT, prefix, full_history=True)
        self.greenlet = gevent.spawn(self._history)

    def _history(self) -> None:
        try:
            self.writer.stats_writer()
        except OSError as exc:  # said by finish, once: the load goes on meanwhile
            self.fault = exc

    def _faults(self):
        from opsctl.errors import MachineFaults

        return MachineFaults(f"writing the CSV files {self.prefix}_*.csv (removed again)")

    def paths(self) -> list[Path]:
        """Every CSV file this run writes (Locust's names: PREFIX_stats.csv and so on)."""
        from opsctl.loadtest.plan import CSV_KINDS

        return [Path(f"{self.prefix}_{kind}.csv") for kind in CSV_KINDS]

    def close(self, failed: bool = False) -> None:
        """Stop the history writer and close its files; `failed`: remove every CSV file too,
        so no half-written one is left behind."""
        self.greenlet.kill(block=True)
        try:
            self.writer.close_files()
        except OSError:
            failed = True  # the last flush of a full disk
        if failed:
            for path in self.paths():
                path.unlink(missing_ok=True)

    def finish(self) -> dict[str, str]:
        """Stop the history writer and rewrite the stats, failures and exceptions files from the
        final numbers; returns {kind: path} of every CSV file written. OperationFailed (the
        files removed) when the machine failed a write (`_faults`)."""
        from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

        try:
            with self._faults():
                self.greenlet.kill(block=True)
                if self.fault is not None:
                    raise self.fault
                self.writer.close_files()
                final = StatsCSV(self.environment, PERCENTILES_TO_REPORT)
                files = {}
                for kind, write in (("stats", final.requests_csv), ("failures", final.failures_csv),
                                    ("exceptions", final.exceptions_csv)):
                    path = f"{self.prefix}_{kind}.csv"
                    with open(path, "w", newline="") as fh:
                        write(csv.writer(fh))
                    files[f"csv_{kind}"] = path
        except BaseException:
            self.close(failed=True)
            raise
        files["csv_stats_history"] = self.writer.stats_history_file_name()
        return files


def write_junit(summary: RunSummary, path: Path) -> Path:
    """One <testcase> per SLO gate, written with junitparser; a breached gate is a <failure>
    whose message holds the judged figure exactly as the table and --json show it. Written
    whole by files.write_text, so CI never reads half a report."""
    from junitparser import Failure, TestCase, TestSuite

    suite = TestSuite(f"loadtest {summary.profile} ({summary.env})")
    suite.timestamp = summary.started_at
    for name, value in (("run_id", summary.id), ("host", summary.host), ("users", summary.users),
                        ("requests", summary.total.requests), ("failures", summary.total.failures),
                        ("in_flight", summary.in_flight),
                        ("rps", summary.gated.rps), ("p95_ms", summary.gated.p95_ms),
                        ("aborted_by", summary.aborted_by or "")):
        suite.add_property(name, "" if value is None else str(value))
    for gate in summary.gates:
        case = TestCase(gate.gate, classname=f"slo.{summary.profile}", time=summary.run_seconds)
        if not gate.passed:
            failure = Failure(f"SLO breached: {gate.describe()}", "SLOBreach")
            failure.text = "\n".join([f"{gate.gate} does not hold: {gate.describe()}",
                                       *(f"{f.occurrences} x {f'{f.method} {f.name}'.strip()}: {f.error}"
                                         for f in summary.failures)])
            case.result = [failure]
        case.system_out = gate.describe()
        suite.add_testcase(case)
    suite.update_statistics()
    suite.time = summary.run_seconds
    from opsctl.health.junit import tostring

    return write_text(path, tostring(suite), private=True)  # whole and XML-safe, as health's report (health/junit.py)
