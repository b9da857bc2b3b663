"""JSON state files written whole: to a temporary name beside the file, then renamed over it,
so a process killed mid-write leaves the previous version, never half a document."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: Any, indent: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
