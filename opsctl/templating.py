"""Jinja2 templates: the ops root's `templates/` first, then the ones opsctl ships.

An ops root overrides any template by putting a file of the same name in its own
`templates/`; everything else falls back to the defaults beside the opsctl package
(this repository's `templates/`). Undefined variables are errors, never empty strings:
a manifest with a silently missing value is worse than no manifest.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2
import yaml

from opsctl.errors import UsageError

DEFAULTS = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=8)
def _environment(root: Path | None = None) -> jinja2.Environment:
    folders = [str(p) for p in (root / "templates" if root else None, DEFAULTS) if p and p.is_dir()]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folders), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v: json.dumps(v)
    env.filters["toyaml"] = lambda v: yaml.safe_dump(v, sort_keys=False, default_flow_style=True).strip()
    return env


def render(name: str, root: Path | None = None, **values) -> str:
    """Template `name` (a path under templates/, e.g. "ci/github-actions.yml.j2") rendered with
    `values`: the ops root's `templates/` first, then opsctl's. Filters `tojson` and
    `toyaml` (flow style). Raises UsageError when the template is missing or uses an
    undefined value."""
    try:
        return _environment(root).get_template(name).render(**values)
    except jinja2.TemplateNotFound:
        raise UsageError(f"template {name} not found in {root / 'templates' if root else ''} or {DEFAULTS}") from None
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {name}: {exc.message}") from None
