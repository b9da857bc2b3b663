"""The run journal: one JSON line per event under `.opsctl/runs/<run id>.jsonl`.

Each line is flushed and fsynced before the next step starts, so after a crash the journal
says exactly which steps finished (and with what outputs): that is what `--resume` and
`history` read. Secrets are redacted before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsctl.errors import UsageError
from opsctl.output import to_jsonable

SECRET_KEY = re.compile(r"(password|secret|token|api_?key|credential)", re.I)
REDACTED = "***"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def redact(value: Any, secrets: set[str], key: str = "") -> Any:
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, REDACTED)
    return value


@dataclass
class Journal:
    path: Path
    secrets: set[str]

    @property
    def run_id(self) -> str:
        return self.path.stem

    def write(self, kind: str, **fields: Any) -> None:
        doc = redact(to_jsonable({"type": kind, "time": now(), **fields}), self.secrets)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(doc) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def runs_dir(root: Path) -> Path:
    return root / ".opsctl" / "runs"


def new(root: Path, secrets: set[str]) -> Journal:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Journal(runs_dir(root) / f"{stamp}-{uuid.uuid4().hex[:6]}.jsonl", secrets)


def read(root: Path, run_id: str) -> list[dict]:
    path = runs_dir(root) / f"{run_id}.jsonl"
    if not path.exists():
        raise UsageError(f"no run '{run_id}' in {runs_dir(root)}; 'opsctl runbook history' lists them")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line cut short by a crash ends the journal
    return records


def summaries(root: Path, name: str | None = None) -> list[dict]:
    """One summary per run, newest first."""
    out = []
    for path in sorted(runs_dir(root).glob("*.jsonl"), reverse=True) if runs_dir(root).is_dir() else []:
        records = read(root, path.stem)
        head = next((r for r in records if r["type"] == "run"), None)
        if head is None or (name and head["runbook"] != name):
            continue
        end = [r for r in records if r["type"] == "end"]
        steps = [r for r in records if r["type"] == "step"]
        out.append({"run_id": path.stem, "runbook": head["runbook"], "version": head["version"],
                    "env": head["env"], "started_at": head["time"],
                    "status": end[-1]["status"] if end else "interrupted",
                    "finished_at": end[-1]["time"] if end else None,
                    "steps": {s["id"]: s["status"] for s in steps}})
    return out
