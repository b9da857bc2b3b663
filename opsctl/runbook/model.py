"""A runbook file: parsed, checked against the shipped JSON Schema, then checked for meaning.

Every problem is reported as `file:line: reason`, because the author fixes it in an editor:
YAML is composed once to remember the line of every key, and both the schema errors and
the semantic ones (unknown action, unknown parameter, bad template, unknown or cyclic
`on_failure` target) are mapped back to those lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import jsonschema
import yaml
from jinja2.sandbox import SandboxedEnvironment

from opsctl.errors import UsageError

TEMPLATES = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
CONTEXT_NAMES = {"params", "env", "steps", "run"}


@dataclass
class Problem:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Runbook:
    path: Path
    doc: dict
    lines: dict[tuple, int] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def version(self) -> int:
        return self.doc["version"]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def steps(self) -> list[dict]:
        return self.doc["steps"]

    @property
    def parameters(self) -> dict[str, dict]:
        return self.doc.get("parameters") or {}

    def handlers(self) -> set[str]:
        """Steps named in some on_failure: they run only when a step fails."""
        return {t for s in self.steps if isinstance(s.get("on_failure"), list) for t in s["on_failure"]}

    def line(self, *path: Any) -> int:
        for cut in range(len(path), -1, -1):
            if tuple(path[:cut]) in self.lines:
                return self.lines[tuple(path[:cut])]
        return 1


def _lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    found = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found[path + (key.value,)] = key.start_mark.line + 1
            found.update(_lines(value, path + (key.value,)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.update(_lines(item, path + (i,)))
    return found


def schema() -> dict:
    return json.loads(resources.files("opsctl.runbook").joinpath("schema.json").read_text())


def parse(path: Path) -> Runbook:
    """Read and schema-check one file; raise UsageError with file:line on the first problem."""
    text = path.read_text()
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UsageError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: "
                         f"{getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict) or node is None:
        raise UsageError(f"{path}:1: a runbook is a mapping with name, version and steps")
    book = Runbook(path, doc, _lines(node))
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise UsageError(str(Problem(path, book.line(*err.absolute_path), f"{where}: {err.message}")))
    return book


def _template_refs(source: str) -> tuple[set[str], set[str], set[str]]:
    """(top-level names, params.X names, steps.X names) a template refers to."""
    tree = TEMPLATES.parse(source)
    params, steps = set(), set()
    for getattr_node in tree.find_all(jinja2.nodes.Getattr):
        if isinstance(getattr_node.node, jinja2.nodes.Name):
            if getattr_node.node.name == "params":
                params.add(getattr_node.attr)
            elif getattr_node.node.name == "steps":
                steps.add(getattr_node.attr)
    return jinja2.meta.find_undeclared_variables(tree), params, steps


def _strings(value: Any, path: tuple) -> list[tuple[tuple, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, path + (k,))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, path + (i,))]
    return []


def check(book: Runbook, actions: set[str]) -> list[Problem]:
    """The meaning the schema cannot express; every problem with its line."""
    problems: list[Problem] = []
    ids = [s["id"] for s in book.steps]
    seen: set[str] = set()
    for i, step in enumerate(book.steps):
        if step["id"] in seen:
            problems.append(Problem(book.path, book.line("steps", i, "id"), f"step id '{step['id']}' is used twice"))
        seen.add(step["id"])
        if step["action"] not in actions:
            problems.append(Problem(book.path, book.line("steps", i, "action"),
                                    f"unknown action '{step['action']}'; one of: {', '.join(sorted(actions))}"))
        for target in step.get("on_failure") if isinstance(step.get("on_failure"), list) else []:
            if target not in ids:
                problems.append(Problem(book.path, book.line("steps", i, "on_failure"),
                                        f"on_failure names unknown step '{target}'"))
        earlier = set(ids[:i])
        for path, source in _strings({k: step[k] for k in ("with", "when", "approval") if k in step}, ("steps", i)):
            try:
                names, params, steps = _template_refs(source)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(Problem(book.path, book.line(*path), f"bad template: {exc.message}"))
                continue
            for name in sorted(names - CONTEXT_NAMES):
                problems.append(Problem(book.path, book.line(*path), f"template uses unknown name '{name}'"))
            for name in sorted(params - set(book.parameters)):
                problems.append(Problem(book.path, book.line(*path), f"template uses undeclared parameter '{name}'"))
            for name in sorted(steps - earlier - book.handlers()):
                problems.append(Problem(book.path, book.line(*path),
                                        f"template reads outputs of step '{name}', which does not run before it"))
    problems += _cycles(book)
    return problems


def _cycles(book: Runbook) -> list[Problem]:
    graph = {s["id"]: [t for t in s.get("on_failure", []) if isinstance(s.get("on_failure"), list)]
             for s in book.steps}
    for start in graph:
        stack, visited = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, []):
                if nxt == start:
                    index = next(i for i, s in enumerate(book.steps) if s["id"] == start)
                    return [Problem(book.path, book.line("steps", index, "on_failure"),
                                    f"on_failure cycle: {' -> '.join(trail + [nxt])}")]
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    return []


def resolve_params(book: Runbook, given: dict[str, str]) -> dict[str, Any]:
    """Typed parameter values from -p key=value and the defaults; one UsageError if wrong."""
    declared = book.parameters
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"{book.ref}: unknown parameter '{unknown[0]}'; declared: {', '.join(declared) or 'none'}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            values[name] = _coerce(book, name, spec.get("type", "string"), given[name])
        elif "default" in spec:
            values[name] = spec["default"]
        elif spec.get("required", False):
            raise UsageError(f"{book.ref}: parameter '{name}' is required; pass -p {name}=VALUE")
        else:
            values[name] = None
    return values


def _coerce(book: Runbook, name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return raw
    except ValueError:
        raise UsageError(f"{book.ref}: parameter '{name}' must be {kind}, got '{raw}'") from None
