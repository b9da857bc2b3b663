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
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from opsctl import files
from opsctl.errors import MachineFaults, UsageError
from opsctl.output import to_jsonable

SECRET_KEY = re.compile(r"(password|secret|token|api_?key|credential)", re.I)
REDACTED = "***"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
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


def _finite(value: Any) -> Any:
    """`value` with inf and nan written as the strings "inf", "-inf", "nan": JSON has no such
    numbers (json.dumps would write `Infinity`, which JSON readers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass
class Journal:
    """`mirror`, when set, is called with the file after every write (the run history of a
    kubernetes environment goes to its backup bucket); a failing mirror is logged once,
    never stops the run, and is tried again only with the run's end record."""

    path: Path
    mask: Callable[[Any], Any]
    mirror: Callable[[Path], None] | None = None
    _mirror_failed: bool = False

    @property
    def run_id(self) -> str:
        """The run id: the journal file's name without .jsonl."""
        return self.path.stem

    def write(self, kind: str, **fields: Any) -> None:
        """Append one record (`kind` and fields, masked), fsynced, to the 0600 journal; then
        mirror it when a mirror is set. OperationFailed naming the journal for a machine fault
        (a full disk): nothing of the record is left, and the run stops there."""
        doc = _finite(redact(to_jsonable({"type": kind, "time": now(), **fields}), self.mask))
        with MachineFaults(f"writing {self.path}"):
            private_dir(self.path.parent)
        # whole or not at all, fsynced: a full disk never leaves half a record (breaker 33 B9)
        files.append_line(self.path, json.dumps(doc, allow_nan=False), durable=True)
        # after a failure the mirror is tried again only with the run's end record (the whole
        # journal then): an unreachable bucket cost every record botocore's retries, ~5 s each
        if self.mirror is not None and (not self._mirror_failed or kind == "end"):
            try:
                self.mirror(self.path)
            except Exception as exc:  # history must not fail the operation it records
                if not self._mirror_failed:
                    import logging

                    from opsctl.redact import credentials

                    logging.getLogger("opsctl.runbook").warning(
                        "run %s: journal not stored where the platform is: %s", self.run_id, credentials(str(exc)))
                self._mirror_failed = True


def private_dir(path: Path) -> Path:
    """`path` created (with its missing parents) and made 0700: journals are not for others."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """`data` written to `path` whole, 0600 in a 0700 folder."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def runs_dir(root: Path) -> Path:
    """Where this machine keeps its journals: <root>/.opsctl/runs."""
    return root / ".opsctl" / "runs"


def new(root: Path, mask: Callable[[Any], Any]) -> Journal:
    """A journal for a new run, named <UTC time>-<6 hex digits>; nothing is written yet."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return Journal(runs_dir(root) / f"{stamp}-{uuid.uuid4().hex[:6]}.jsonl", mask)


RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$")


def check_run_id(run_id: str) -> str:
    """`run_id` if it has the form opsctl gives run ids (20261130T014500-a1b2c3), else
    UsageError: an id from the command line is never used as a path as it is."""
    if not RUN_ID.match(run_id):
        raise UsageError(f"'{run_id}' is not a run id (like 20261130T014500-a1b2c3); 'opsctl runbook history' lists them")
    return run_id


# what each kind of record a reader uses must hold, and of what type (opsctl writes them so)
_SHAPES: dict[str, dict[str, type]] = {
    "run": {"runbook": str, "version": int, "env": str, "time": str, "hash": str, "params": dict},
    "step": {"id": str, "status": str},
    "end": {"status": str, "time": str},
    "resume": {},
}


def _well_formed(record: object) -> bool:
    """A record of a kind opsctl writes, with the fields its readers use, of their types;
    `outputs`, when a step has it, an object."""
    if not isinstance(record, dict) or record.get("type") not in _SHAPES:
        return False
    if record["type"] == "step" and not isinstance(record.get("outputs", {}), dict):
        return False
    # bool is an int to isinstance: a version of true is not a version
    return all(isinstance(record.get(k), t) and not isinstance(record.get(k), bool)
               for k, t in _SHAPES[record["type"]].items())


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")  # opsctl writes inf and nan as strings (_finite)


def parse(text: str | bytes) -> list[dict]:
    """The records of a journal's text. A line that is not a well-formed record is passed
    over: one cut short by a crash (power lost mid-write), after which a resumed run's records
    follow on lines of their own (files.append_line), and stopping at it would hide them, so
    a second --resume repeated steps that had run; or one that was edited or damaged (bytes
    that are not UTF-8, NaN, a record without the fields its readers use), which made
    `runbook history` fail for every run (breaker 34 F8)."""
    records = []
    lines = text.split(b"\n") if isinstance(text, bytes) else text.split("\n")
    for line in lines:
        try:
            record = json.loads(line, parse_constant=_no_constant)
        except ValueError:  # UnicodeDecodeError too
            continue
        if _well_formed(record):
            records.append(record)
    return records


def read(root: Path, run_id: str) -> list[dict]:
    """The records of run `run_id` on this machine; UsageError for a malformed id or an unknown
    run."""
    path = runs_dir(root) / f"{check_run_id(run_id)}.jsonl"
    if not path.exists():
        raise UsageError(f"no run '{run_id}' in {runs_dir(root)}; 'opsctl runbook history' lists them")
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{path} is not a readable journal ({exc.strerror or type(exc).__name__}); move it "
                         "aside") from None


def summary(run_id: str, records: list[dict]) -> dict | None:
    """One run's summary (run_id, runbook, version, env, started_at, status, finished_at,
    steps: {id: status}); None for a journal without its `run` record."""
    head = next((r for r in records if r["type"] == "run"), None)
    if head is None:
        return None
    end = [r for r in records if r["type"] == "end"]
    steps = [r for r in records if r["type"] == "step"]
    return {"run_id": run_id, "runbook": head["runbook"], "version": head["version"],
            "env": head["env"], "started_at": head["time"],
            "status": end[-1]["status"] if end else "interrupted",
            "finished_at": end[-1]["time"] if end else None,
            "steps": {s["id"]: s["status"] for s in steps}}


def summaries(root: Path, name: str | None = None, env_name: str | None = None) -> list[dict]:
    """One summary per run journaled on this machine, newest first (of runbook `name` and
    environment `env_name` when given): {run_id, runbook, version, env, started_at, status}."""
    import logging

    out = []
    for path in sorted(runs_dir(root).glob("*.jsonl"), reverse=True) if runs_dir(root).is_dir() else []:
        if not RUN_ID.match(path.stem):
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:  # a folder where a journal belongs, an unreadable file: the others still list
            logging.getLogger("opsctl.runbook").warning("%s is not a readable journal (%s): left out", path,
                                                        exc.strerror or type(exc).__name__)
            continue
        found = summary(path.stem, parse(data))
        if found and (not name or found["runbook"] == name) and (not env_name or found["env"] == env_name):
            out.append(found)
    return out
