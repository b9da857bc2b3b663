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
    `toyaml` (flow style). Raises UsageError, naming the template, when it is missing, is not
    UTF-8 text (Jinja's loader reads UTF-8), has a Jinja syntax error, uses an undefined value
    or, where the ops root overrides templates, raises while rendering (a filter called
    wrongly); a template in the ops root is the user's to fix (reviewer 39 R5:
    a stray byte or a `{% if %}` in one ended every render and deploy on "unexpected ...")."""
    try:
        return _environment(root).get_template(name).render(**values)
    except jinja2.TemplateNotFound as exc:
        missing = "" if exc.name == name else f" (it includes {exc.name})"
        raise UsageError(f"template {name}{missing} not found in "
                         f"{root / 'templates' if root else ''} or {DEFAULTS}") from None
    except jinja2.TemplateSyntaxError as exc:
        where = exc.filename or name
        raise UsageError(f"template {where}, line {exc.lineno}: {exc.message}; fix its Jinja syntax") from None
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {name}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise UsageError(f"template {name}: {exc.message or type(exc).__name__}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"template {name} (or one it includes) is not UTF-8 text: byte {exc.start} "
                         f"(0x{exc.object[exc.start]:02x}); save it as UTF-8") from None
    except Exception as exc:
        # a filter called wrongly (`join(1, 2, 3)`: TypeError) and the like: the user's to fix
        # when the ops root overrides templates; in opsctl's own templates, a bug to report
        overrides = root / "templates" if root else None
        if overrides is None or not overrides.is_dir() or not any(overrides.rglob("*")):
            raise
        raise UsageError(f"template {name} failed while rendering ({type(exc).__name__}: {exc}); "
                         f"check the templates in {overrides}") from None


def parse_yaml(name: str, text: str, many: bool = False):
    """The YAML `text` that template `name` rendered, read as `yamltext.load` (or `load_all`
    when `many`) reads it, duplicate keys refused; UsageError naming the template when it
    rendered YAML that does not read, so a broken template fails here, not in CI or the
    cluster."""
    from opsctl import yamltext

    try:
        return yamltext.load_all(text) if many else yamltext.load(text)
    except yamltext.YamlFault as exc:
        raise UsageError(f"template {name} renders invalid YAML (line {exc.line} of its output: "
                         f"{exc.problem}); fix it") from None
