"""The run journal: one JSON line per event under `.opsctl/runs/<run id>.jsonl`.

Each line is flushed and fsynced before the next step starts, so after a crash the journal
says exactly which steps finished (and with what outputs): that is what `--resume` and
`history` read. Secrets are masked before anything is written (values of keys that name a
secret, and the run's secret parameter values in any form: `opsctl.runbook.secrets`), and
journals are private: files 0600 in a 0700 folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opsctl.errors import UsageError
from opsctl.output import to_jsonable

SECRET_KEY = re.compile(r"(password|secret|token|api_?key|credential)", re.I)
REDACTED = "***"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def redact(value: Any, mask: Callable[[Any], Any], key: str = "") -> Any:
    """`value` with the values of secret-named keys replaced and `mask` applied to strings."""
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, mask, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, mask) for v in value]
    if isinstance(value, str):
        return mask(value)
    return value


@dataclass
class Journal:
    path: Path
    mask: Callable[[Any], Any]

    @property
    def run_id(self) -> str:
        return self.path.stem

    def write(self, kind: str, **fields: Any) -> None:
        doc = redact(to_jsonable({"type": kind, "time": now(), **fields}), self.mask)
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(doc) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def private_dir(path: Path) -> Path:
    """`path` created (with its missing parents) and made 0700: journals are not for others."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def runs_dir(root: Path) -> Path:
    return root / ".opsctl" / "runs"


def new(root: Path, mask: Callable[[Any], Any]) -> Journal:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Journal(runs_dir(root) / f"{stamp}-{uuid.uuid4().hex[:6]}.jsonl", mask)


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
