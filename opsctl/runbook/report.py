"""JUnit XML for CI: one test case per step, so a pipeline shows which step failed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def write_junit(result, path: str) -> Path:
    failures = [s for s in result.steps if s.status == "failed"]
    suite = ET.Element("testsuite", name=result.runbook, tests=str(len(result.steps)),
                       failures=str(len(failures)), skipped=str(sum(s.status == "skipped" for s in result.steps)),
                       time=f"{sum(s.seconds for s in result.steps):.2f}")
    for step in result.steps:
        case = ET.SubElement(suite, "testcase", classname=result.runbook, name=step.id, time=f"{step.seconds:.2f}")
        if step.status == "failed":
            ET.SubElement(case, "failure", message=step.detail[:500]).text = step.detail
        elif step.status in ("skipped", "done-before", "planned"):
            ET.SubElement(case, "skipped", message=step.status)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(target, encoding="utf-8", xml_declaration=True)
    return target
