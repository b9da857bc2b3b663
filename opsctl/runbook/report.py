"""JUnit XML for CI: one test case per step, so a pipeline shows which step failed.

Written with junitparser. The steps come from a `RunResult` whose details and outputs the
engine has already masked (secret parameter values, credentials in URLs and conninfo);
`credentials` is applied once more here because this file is uploaded as a CI artifact.
Control characters in a step's output are written as escapes (health.junit.tostring).
"""

from __future__ import annotations

from pathlib import Path

from junitparser import Failure, Skipped, TestCase, TestSuite

from opsctl.files import write_text
from opsctl.health.junit import tostring
from opsctl.redact import credentials


def write_junit(result, path: str) -> Path:
    """Write `result` (engine.RunResult) to `path`: failed steps as <failure>, skipped,
    done-before and planned ones as <skipped>; times in seconds. Written whole (a temporary
    file, then renamed: files.write_text); a machine fault names the file. Returns the path."""
    from opsctl.runbook.engine import StepStatus

    suite = TestSuite(result.runbook)
    for step in result.steps:
        case = TestCase(step.id, result.runbook, float(step.seconds))
        if step.status == StepStatus.FAILED:
            detail = credentials(step.detail)
            failure = Failure(detail[:500])
            failure.text = detail
            case.result = [failure]
        elif step.status in (StepStatus.SKIPPED, StepStatus.DONE_BEFORE, StepStatus.PLANNED):
            case.result = [Skipped(step.status)]
        suite.add_testcase(case)
    suite.update_statistics()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_text(target, tostring(suite), private=True)  # whole and XML-safe, as health's and the load test's reports
