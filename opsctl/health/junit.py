"""`--junit FILE`: a sweep as a JUnit XML report, the format every CI server displays.

One testcase per check: CRITICAL is a <failure>, UNKNOWN an <error>, WARNING passes with
its message in <system-out> (a CI step should not go red on a warning, but it shows).
Written to a temporary file and renamed, so CI never reads half a report.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from opsctl.errors import UsageError
from opsctl.health.model import Status, SweepResult


def check_writable(path: Path) -> None:
    """Fail before the sweep, not after it, when the report cannot be written."""
    if not path.parent.is_dir():
        raise UsageError(f"--junit {path}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise UsageError(f"--junit {path} is a folder; give a file name such as health.xml")


def render(result: SweepResult) -> bytes:
    counts = {s: sum(r.status == s for r in result.results) for s in Status}
    suite = ET.Element("testsuite", name=f"opsctl health {result.env}", tests=str(len(result.results)),
                       failures=str(counts[Status.CRITICAL]), errors=str(counts[Status.UNKNOWN]),
                       skipped="0", time=f"{result.duration_ms / 1000:.3f}",
                       timestamp=result.started_at.isoformat())
    for r in result.results:
        case = ET.SubElement(suite, "testcase", classname=f"health.{result.env}.{r.kind}", name=r.name,
                             time=f"{r.duration_ms / 1000:.3f}")
        text = f"{r.status.name}: {r.message}" + (f" (value {r.value:g} {r.unit})".rstrip() if r.value is not None else "")
        if r.status == Status.CRITICAL:
            ET.SubElement(case, "failure", message=r.message, type="CRITICAL").text = text
        elif r.status == Status.UNKNOWN:
            ET.SubElement(case, "error", message=r.message, type="UNKNOWN").text = text
        ET.SubElement(case, "system-out").text = text
    suites = ET.Element("testsuites", name="opsctl health", tests=suite.get("tests"),
                        failures=suite.get("failures"), errors=suite.get("errors"), time=suite.get("time"))
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write(path: Path, result: SweepResult) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(render(result))
    os.replace(tmp, path)
