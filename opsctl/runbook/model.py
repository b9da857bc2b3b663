"""A runbook file: parsed, checked against the shipped JSON Schema, then checked for meaning.

Every problem is reported as `file:line: reason`, because the author fixes it in an editor:
YAML is composed once to remember the line of every key, and both the schema errors and
the semantic ones (unknown action, unknown parameter, bad template, unknown or cyclic
`on_failure` target, an argument the action does not take, a value that cannot fit,
a parameter put raw into shell text, a bad `schedule`) are mapped back to those lines.

Parameters are data, never code or another type: a value keeps the type its declaration
gives it (`-p x=null` is the string "null" for a string parameter and refused for an
integer one), and the text of a `shell` step holds no template at all: values reach it
only as environment variables (`env:`), the practice GitHub documents for `run:` steps
(https://docs.github.com/en/actions/security-for-github-actions/security-guides/security-hardening-for-github-actions#understanding-the-risk-of-script-injections).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import shlex
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
import jinja2.meta
import jinja2.nodes
import jsonschema
import yaml
from jinja2.sandbox import SandboxedEnvironment

from opsctl.errors import UsageError
from opsctl.redact import MIN_SECRET  # a secret parameter's least length: shorter ones mask ordinary letters


def _quote(value: Any) -> str:
    """The `quote` filter: shlex.quote of the value. Not a way into shell text (validate
    refuses every template there: a quoted word is code again inside quotes or after eval)."""
    return shlex.quote("" if value is None else str(value))


CONTINUE = "continue"  # on_failure: continue, or [handler..., continue]: the run goes on after the failure
TEMPLATES = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
TEMPLATES.filters["quote"] = _quote


def _length(value: Any) -> Any:
    """jinja's `length`/`count` (len), except for a value only a real run knows (a dry run's
    placeholder: its `planned_length`), which len() can't stand for."""
    planned = getattr(type(value), "planned_length", None)
    return planned(value) if planned is not None else len(value)


TEMPLATES.filters["length"] = TEMPLATES.filters["count"] = _length
CONTEXT_NAMES = {"params", "env", "steps", "run"}
# the declared types: the Python types a value of each may have
TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float),
                                      "boolean": (bool,)}
# ASCII digits only: `\d` (and int()) also take "٣" or "３"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT_DIGITS = 4000  # characters of an integer -p value: under Python's int-from-text limit (4300)
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass
class Problem:
    """One thing wrong with a runbook file, at a line. `retired`: a published version that
    a rule added after its publication refuses; it is kept (immutable) but cannot run."""

    path: Path
    line: int
    reason: str
    retired: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Runbook:
    """A parsed runbook file: its document and the line of every key (for file:line problems)."""
    path: Path
    doc: dict
    lines: dict[tuple, int] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        """The runbook's name (its folder under runbooks/)."""
        return self.doc["name"]

    @property
    def version(self) -> int:
        """The version number (the N of vN.yaml)."""
        return self.doc["version"]

    @property
    def ref(self) -> str:
        """NAME@VERSION."""
        return f"{self.name}@{self.version}"

    @property
    def steps(self) -> list[dict]:
        """The steps as written, in order."""
        return self.doc["steps"]

    @property
    def parameters(self) -> dict[str, dict]:
        """Declared parameters: name -> {type, default, required, secret, description}."""
        return self.doc.get("parameters") or {}

    @property
    def schedule(self) -> str | None:
        """A cron expression (5 fields, UTC) saying when the runbook runs by itself, or None."""
        return self.doc.get("schedule")

    def secrets(self) -> set[str]:
        """Names of the secret parameters: those declared `secret: true`, and those whose
        default is computed from a secret one (any filter, in declaration order): a value
        derived from a secret is a secret (GitHub's add-mask)."""
        found = {n for n, s in self.parameters.items() if s.get("secret")}
        for name, spec in self.parameters.items():
            default = spec.get("default")
            if name in found or not isinstance(default, str) or not ("{{" in default or "{%" in default):
                continue
            try:
                refs = template_refs(default)[1]
            except jinja2.TemplateSyntaxError:
                continue
            if refs & found:
                found.add(name)
        return found

    def handlers(self) -> set[str]:
        """Steps named in some on_failure: they run only when a step fails (a list's last word
        `continue` is not a step: the run goes on after the handlers)."""
        return {t for s in self.steps if isinstance(s.get("on_failure"), list) for t in s["on_failure"]
                if t != CONTINUE}

    def line(self, *path: Any) -> int:
        """The line of the key at `path` (or of its nearest parent that has one)."""
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
    """The runbook JSON Schema shipped in opsctl/runbook/schema.json."""
    return json.loads(resources.files("opsctl.runbook").joinpath("schema.json").read_text())


def parse(path: Path) -> Runbook:
    """Read and schema-check one file; raise UsageError with file:line on the first problem
    (bytes that are not UTF-8 and keys given twice included: opsctl.yamltext)."""
    from opsctl import yamltext

    try:
        text = yamltext.read(path)
        doc = yamltext.load(text)
    except yamltext.YamlFault as exc:
        remedy = f"; {exc.remedy}" if exc.remedy else ""
        raise UsageError(f"{path}:{exc.line}: not valid YAML: {exc.problem}{remedy}") from None
    node = yaml.compose(text)  # the same text, read: only the lines of its keys are wanted
    if not isinstance(doc, dict) or node is None:
        raise UsageError(f"{path}:1: a runbook is a mapping with name, version and steps")
    book = Runbook(path, doc, _lines(node))
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise UsageError(str(Problem(path, book.line(*err.absolute_path), f"{where}: {err.message}")))
    return book


def template_refs(source: str) -> tuple[set[str], set[str], set[str]]:
    """(top-level names, params.X names, steps.X names) the Jinja2 template `source` refers
    to, read from its parse tree (never by matching text)."""
    tree = TEMPLATES.parse(source)
    params, steps = set(), set()
    for getattr_node in tree.find_all(jinja2.nodes.Getattr):
        if isinstance(getattr_node.node, jinja2.nodes.Name):
            if getattr_node.node.name == "params":
                params.add(getattr_node.attr)
            elif getattr_node.node.name == "steps":
                steps.add(getattr_node.attr)
    return jinja2.meta.find_undeclared_variables(tree), params, steps


def _lone_expression(source: str) -> str | None:
    """The expression of a value that is exactly one `{{ expression }}`, else None.

    Such a value is evaluated, not rendered to text, so it keeps its type: `{{ params.jobs }}`
    is the integer the parameter holds. Nothing is ever re-read from rendered text.
    """
    text = source.strip()
    if not (text.startswith("{{") and text.endswith("}}")):
        return None
    try:
        body = TEMPLATES.parse(text).body
    except jinja2.TemplateSyntaxError:
        return None
    if len(body) != 1 or not isinstance(body[0], jinja2.nodes.Output) or len(body[0].nodes) != 1 \
            or isinstance(body[0].nodes[0], jinja2.nodes.TemplateData):
        return None
    inner = text[2:-2]
    inner = inner[1:] if inner[:1] in "-+" and inner[1:2].isspace() else inner  # {{- … -}}: whitespace control
    inner = inner[:-1] if inner[-1:] in "-+" and inner[-2:-1].isspace() else inner
    return inner.strip()


def evaluate(source: str, ctx: Mapping[str, Any]) -> Any:
    """A template value: a lone expression keeps its type, anything else is rendered text.
    Raises jinja2.TemplateError (undefined names included) when it cannot be evaluated."""
    expr = _lone_expression(source)
    if expr is None:
        return TEMPLATES.from_string(source).render(**ctx)
    value = TEMPLATES.compile_expression(expr, undefined_to_none=False)(**ctx)
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises with the name that is missing
    return value


def condition(source: Any, ctx: Mapping[str, Any]) -> bool:
    """A `when:` as a Jinja expression over typed values: `"{{ params.flag }}"`, or the bare
    expression `"params.count > 2"`; its value's truth (a non-empty string is true, whatever
    it says: "false", "null" and "off" are text, never re-read as booleans). Raises
    jinja2.TemplateError when it is not one expression or cannot be evaluated."""
    if isinstance(source, bool):
        return source
    text = str(source)
    expr = _lone_expression(text)
    if expr is None:
        if "{{" in text or "{%" in text:
            raise jinja2.TemplateSyntaxError(f"when: {text!r} is text around templates; write one expression, "
                                             "e.g. \"{{ params.a and not params.b }}\"", 1)
        expr = text
    value = TEMPLATES.compile_expression(expr, undefined_to_none=False)(**ctx)
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises with the name that is missing
    return bool(value)


def _condition_problem(source: Any) -> str | None:
    if isinstance(source, bool):
        return None
    text = str(source)
    expr = _lone_expression(text)
    if expr is None and ("{{" in text or "{%" in text):
        return (f"when: {text!r} is text around templates, read as a string; write one expression, "
                "e.g. \"{{ params.a and not params.b }}\"")
    try:
        TEMPLATES.compile_expression(expr if expr is not None else text)
    except jinja2.TemplateSyntaxError as exc:
        return f"when: not an expression: {exc.message}"
    return None


def _strings(value: Any, path: tuple) -> list[tuple[tuple, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, path + (k,))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, path + (i,))]
    return []


def _templated_in_shell(source: str) -> list[str]:
    """The template constructs of `source` (shell text): every `{{ … }}` and `{% … %}`,
    whatever its filters. Only literal text (and `{% raw %}` blocks) may be shell text.

    No filter makes a value safe everywhere in shell text: `| quote` gives one word that
    is data only as a bare word; inside double quotes its single quotes are literal
    (`"hello {{ x | quote }}"` runs `$(…)` in x), and after `eval`, `sh -c` or `bash -c`
    the word is parsed again as code. So the rule is the one GitHub documents for `run:`
    steps: shell text takes values only through environment variables (`env:`).
    """
    try:
        body = TEMPLATES.parse(source).body
    except jinja2.TemplateSyntaxError:
        return [source]
    found = []
    for node in body:
        if isinstance(node, jinja2.nodes.Output) and all(isinstance(n, jinja2.nodes.TemplateData) for n in node.nodes):
            continue
        found.append(node)
    if not found:
        return []
    snippets = re.findall(r"\{\{.*?\}\}|\{%.*?%\}", source, flags=re.S)
    return snippets or [source]


# environment variables whose value is code to the shell, the dynamic loader or an
# interpreter: a parameter may not reach them through `env:`
CODE_ENV = re.compile(r"^(PATH|IFS|ENV|BASH_ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|CDPATH|LD_\w+|"
                      r"PYTHON(PATH|STARTUP|HOME|INSPECT)|PERL5(LIB|OPT)|PERLLIB|RUBYOPT|RUBYLIB|NODE_OPTIONS|"
                      r"NODE_PATH|GIT_\w+|BASH_FUNC_\w+.*|DYLD_\w+)$")


def _env_name(expr: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", expr.replace("params.", "").replace("steps.", "").replace("outputs.", ""))
    return "_".join(w.upper() for w in words[:2]) or "VALUE"


def arguments(fn: Callable) -> dict[str, inspect.Parameter]:
    """The `with:` arguments an action takes (its parameters after the context)."""
    return dict(list(inspect.signature(fn).parameters.items())[1:])


@lru_cache(maxsize=None)
def _hints(fn: Callable) -> dict[str, Any]:
    return typing.get_type_hints(fn)


@lru_cache(maxsize=None)
def _adapter(annotation: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(annotation)


def misfit(fn: Callable, name: str, value: Any) -> str | None:
    """Why `value` cannot be the action's argument `name` (its annotation, strictly: no
    string becomes a number), or None when it fits."""
    if _non_finite(value):
        return "takes finite numbers, not inf or nan"
    annotation = _hints(fn).get(name, Any)
    if annotation is Any:
        return None
    try:
        _adapter(annotation).validate_python(value, strict=True)
    except Exception:  # pydantic's ValidationError: the annotation says what fits
        shown = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        return f"takes {shown}, not {type(value).__name__}"
    return None


_SAMPLES = {"string": "text", "integer": 1, "number": 1.5, "boolean": True}


def _check_with(book: Runbook, i: int, step: dict, fn: Callable) -> list[Problem]:
    """Each `with:` argument against the action's signature: known names, required ones
    present, constants and lone parameter references of a type that fits."""
    problems = []
    takes = arguments(fn)
    given = step.get("with") or {}
    name = step["action"]
    for key in given:
        if key not in takes:
            problems.append(Problem(book.path, book.line("steps", i, "with", key),
                                    f"action '{name}' takes no argument '{key}'; it takes: {', '.join(takes)}"))
    for key, param in takes.items():
        if param.default is inspect.Parameter.empty and key not in given:
            problems.append(Problem(book.path, book.line("steps", i, "action"),
                                    f"action '{name}' needs argument '{key}' in with:"))
    for key, value in given.items():
        if key not in takes:
            continue
        sample, what = value, "the value"
        if isinstance(value, str) and "{" in value:
            expr = _lone_expression(value)
            match = re.fullmatch(r"params\.([a-z_][a-z0-9_]*)", expr or "")
            if expr is None:
                sample, what = "text", "rendered text"
            elif match and match.group(1) in book.parameters:
                kind = book.parameters[match.group(1)].get("type", "string")
                sample, what = _SAMPLES[kind], f"parameter '{match.group(1)}' ({kind})"
            else:
                continue  # known only at run time: checked then
        why = misfit(fn, key, sample)
        if why:
            problems.append(Problem(book.path, book.line("steps", i, "with", key),
                                    f"{key}: action '{name}' {why} ({what})"))
    return problems


def _check_parameters(book: Runbook) -> list[Problem]:
    """Defaults: present (or required), of the declared type; a template default may use
    only parameters declared before it, and when those all have defaults it is rendered
    from them now and type-checked (a run renders it from the values given, and checks it
    again before any step)."""
    problems = []
    declared = list(book.parameters)
    known: dict[str, Any] = {}  # defaults known at validate, rendered
    for index, (name, spec) in enumerate(book.parameters.items()):
        kind = spec.get("type", "string")
        if fault := _bounds_fault(kind, spec.get("minimum"), spec.get("maximum")):
            problems.append(Problem(book.path, book.line("parameters", name, "minimum" if "minimum" in spec else "maximum"),
                                    f"parameter '{name}': {fault}"))
        where = book.line("parameters", name, "default") if "default" in spec else book.line("parameters", name)
        if "default" not in spec:
            if not spec.get("required", False):
                problems.append(Problem(book.path, where, f"parameter '{name}' needs a default or required: true "
                                                          f"(a value always has its declared type, {kind})"))
            continue
        default = spec["default"]
        if isinstance(default, str) and ("{{" in default or "{%" in default):
            try:
                names, params, _ = template_refs(default)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(Problem(book.path, where, f"default of '{name}': bad template: {exc.message}"))
                continue
            for other in sorted(names - {"params"}):
                problems.append(Problem(book.path, where, f"default of '{name}' may refer only to params, not '{other}'"))
            for other in sorted(params):
                if other not in declared[:index]:
                    problems.append(Problem(book.path, where,
                                            f"default of '{name}' refers to '{other}', which is not declared before it; "
                                            "defaults are rendered in declaration order"))
            if names <= {"params"} and params <= set(known):
                try:
                    known[name] = default_value(book, name, known)
                except UsageError as exc:
                    problems.append(Problem(book.path, where, str(exc).split(": ", 1)[1] + " (rendered from the defaults)"))
                else:
                    if fault := _value_fault(spec, known[name], _number):
                        problems.append(Problem(book.path, where, f"default of '{name}' {fault} (rendered from the "
                                                                  "defaults): every run that keeps it is refused"))
            continue
        if not _fits(kind, default):
            problems.append(Problem(book.path, where, f"default of '{name}' is {_kind_of(default)}, "
                                                      f"not its declared type {kind}"))
        else:
            known[name] = default
            if fault := _value_fault(spec, default, _number):  # breaker 30 F2: validated, published, never ran
                problems.append(Problem(book.path, where, f"default of '{name}' {fault}: every run that keeps it "
                                                          "is refused"))
    return problems


def _number(value: int | float) -> str:
    """A number as a message shows it: whole (`:g` rounded 1000001 to 1e+06, and overflowed on an
    integer of 400 digits: breaker 30 F1, F4); an integer too long for a line by its magnitude."""
    if isinstance(value, int) and abs(value) >= 10**24:  # str() of one past 4300 digits raises
        return f"{'-' if value < 0 else ''}~10^{math.floor(math.log10(abs(value)))}"
    return repr(value)


def _bounds_fault(kind: str, low: Any, high: Any) -> str | None:
    """Why a parameter's declared `minimum`/`maximum` admit no value of type `kind`, else None:
    a bound that is not a finite number (inf admits nothing, nan switches the check off), a
    minimum above the maximum, or (integer) no whole number between them. The schema has
    already required a number type and number bounds."""
    for word, bound in (("minimum", low), ("maximum", high)):
        if isinstance(bound, float) and not math.isfinite(bound):
            return f"{word} must be a finite number, not {bound}"
    if low is None or high is None:
        return None
    if low > high:
        return f"minimum {_number(low)} is above maximum {_number(high)}; no value fits"
    if kind == "integer" and math.ceil(low) > math.floor(high):
        return f"no integer lies between minimum {_number(low)} and maximum {_number(high)}"
    return None


def _value_fault(spec: Mapping[str, Any], value: Any, shown: Callable[[Any], str]) -> str | None:
    """Why a number `value` lies outside `spec`'s minimum/maximum ("must be at least 1, got
    0", the value as `shown` gives it), else None; a value that is no number has no bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high = spec.get("minimum"), spec.get("maximum")
    if low is not None and value < low:
        return f"must be at least {_number(low)}, got {shown(value)}"
    if high is not None and value > high:
        return f"must be at most {_number(high)}, got {shown(value)}"
    return None


def _fits(kind: str, value: Any) -> bool:
    if kind != "boolean" and isinstance(value, bool):
        return False
    if isinstance(value, float) and not math.isfinite(value):  # inf and nan are no numbers a step can use
        return False
    return isinstance(value, TYPES[kind])


def _non_finite(value: Any) -> bool:
    """True when `value` (or anything inside it) is a float that is inf or nan."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def _check_schedule(book: Runbook) -> list[Problem]:
    if book.schedule is None:
        return []
    from opsctl.runbook.schedules import cron_problem

    # the grammar GitHub and Kubernetes share, not croniter's (which accepts L, W, #, R)
    if problem := cron_problem(book.schedule):
        return [Problem(book.path, book.line("schedule"), problem)]
    required = [n for n, s in book.parameters.items() if s.get("required") and "default" not in s]
    if required:
        return [Problem(book.path, book.line("schedule"),
                        f"a scheduled runbook runs without -p: parameter '{required[0]}' needs a default")]
    return []


STEP_TIMEOUT_MAX = 7 * 86400.0  # a step's `timeout`: a week (threading's own bound is ~292 years, not a timeout)
BACKOFF_MAX = 3600.0  # `retries.backoff`: an hour between attempts


def check(book: Runbook, actions: Mapping[str, Callable]) -> list[Problem]:
    """The meaning the schema cannot express; every problem with its line.

    `actions` maps action names to their functions: a step's `with:` is checked against
    the function's signature; the arguments an action lists in its `code_args` attribute
    (shell text) may hold no template at all (values go through `env:`), and in the
    mappings it lists in `code_env` a template may not set a variable that is code
    (PATH, LD_PRELOAD, BASH_ENV…).
    """
    problems: list[Problem] = _check_parameters(book) + _check_schedule(book)
    ids = [s["id"] for s in book.steps]
    seen: set[str] = set()
    for i, step in enumerate(book.steps):
        if step["id"] in seen:
            problems.append(Problem(book.path, book.line("steps", i, "id"), f"step id '{step['id']}' is used twice"))
        seen.add(step["id"])
        fn = actions.get(step["action"])
        if fn is None:
            problems.append(Problem(book.path, book.line("steps", i, "action"),
                                    f"unknown action '{step['action']}'; one of: {', '.join(sorted(actions))}"))
        if step["id"] == CONTINUE:
            problems.append(Problem(book.path, book.line("steps", i, "id"),
                                    f"a step can't be named '{CONTINUE}' (on_failure: [handler, {CONTINUE}] means go on)"))
        targets = step.get("on_failure") if isinstance(step.get("on_failure"), list) else []
        for n, target in enumerate(targets):
            if target == CONTINUE and n == len(targets) - 1:
                continue
            if target == CONTINUE:
                problems.append(Problem(book.path, book.line("steps", i, "on_failure"),
                                        f"'{CONTINUE}' ends an on_failure list: its handlers run first"))
            elif target not in ids:
                problems.append(Problem(book.path, book.line("steps", i, "on_failure"),
                                        f"on_failure names unknown step '{target}'"))
        # the schema's minimum passes .nan (a comparison with NaN is false) and .inf: a step timed
        # out at once, or failed on 'timestamp out of range' (reviewer 39 R3)
        for path, top in ((("timeout",), STEP_TIMEOUT_MAX), (("retries", "backoff"), BACKOFF_MAX)):
            value = step.get(path[0]) if len(path) == 1 else (step.get(path[0]) or {}).get(path[1]) \
                if isinstance(step.get(path[0]), dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= top:
                problems.append(Problem(book.path, book.line("steps", i, *path),
                                        f"{'.'.join(path)} must be a number of seconds up to {top:g}, not {value}"))
        earlier = set(ids[:i])
        for path in (("when",), ("approval", "when")):
            holder = step.get(path[0]) if len(path) == 2 else step
            if isinstance(holder, dict) and path[-1] in holder:
                why = _condition_problem(holder[path[-1]])
                if why:
                    problems.append(Problem(book.path, book.line("steps", i, *path), why))
        code_args = set(getattr(fn, "code_args", ()))
        code_env = set(getattr(fn, "code_env", ()))
        problems += _check_paths(book, i, step, fn)
        bad_template = False
        for path, source in _strings({k: step[k] for k in ("with", "when", "approval") if k in step}, ("steps", i)):
            if path[-1] == "when" and "{{" not in source and "{%" not in source:
                source = "{{ " + source + " }}"  # a bare expression: its names are checked the same way
            try:
                names, params, steps = template_refs(source)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(Problem(book.path, book.line(*path), f"bad template: {exc.message}"))
                bad_template = True
                continue
            for name in sorted(names - CONTEXT_NAMES):
                problems.append(Problem(book.path, book.line(*path), f"template uses unknown name '{name}'"))
            for name in sorted(params - set(book.parameters)):
                problems.append(Problem(book.path, book.line(*path), f"template uses undeclared parameter '{name}'"))
            for name in sorted(steps - earlier - book.handlers()):
                problems.append(Problem(book.path, book.line(*path),
                                        f"template reads outputs of step '{name}', which does not run before it"))
            if len(path) == 4 and path[2] == "with" and path[3] in code_args:
                for expr in _templated_in_shell(source):
                    inner = expr.strip("{}%- ").split("|")[0].strip() if expr.startswith("{{") else "VALUE"
                    var = _env_name(inner)
                    problems.append(Problem(book.path, book.line(*path), (
                        f"{path[3]}: {expr} puts a value into shell text (shell injection: no filter, "
                        f"| quote included, is safe inside quotes or after eval/sh -c); pass it as an "
                        f"environment variable: env: {{{var}: \"{{{{ {inner} }}}}\"}} and write \"${var}\" "
                        "in the command")))
            if len(path) == 5 and path[2] == "with" and path[3] in code_env and CODE_ENV.match(str(path[4])) \
                    and _templated_in_shell(source):
                problems.append(Problem(book.path, book.line(*path), (
                    f"{path[3]}.{path[4]}: the shell, loader or interpreter reads {path[4]} as code; a template "
                    "may not set it (pass the value under another name)")))
        if fn is not None and not bad_template:
            problems += _check_with(book, i, step, fn)
    problems += _cycles(book)
    return problems


def _check_paths(book: Runbook, i: int, step: dict, fn: Callable | None) -> list[Problem]:
    """Arguments naming code (`code_paths`) take no template and a file in the ops root;
    those naming a file written (`out_paths`) stay in the ops root (opsctl.runbook.paths).
    Templated outputs are checked when they are rendered (before any step when they use
    parameters only)."""
    from opsctl.runbook.paths import lexical_problem

    problems = []
    given = step.get("with") or {}
    for kind, args in (("code", getattr(fn, "code_paths", ())), ("output", getattr(fn, "out_paths", ()))):
        for arg in args:
            value = given.get(arg)
            if not isinstance(value, str):
                continue
            where = book.line("steps", i, "with", arg)
            if "{{" in value or "{%" in value:
                if kind == "code":
                    problems.append(Problem(book.path, where, (
                        f"{arg}: names code that the step runs; a template may not choose it (a parameter would "
                        "run any file): write a constant path inside the ops root")))
                continue
            why = lexical_problem(value, arg, kind)
            if why:
                problems.append(Problem(book.path, where, why))
    return problems


def _cycles(book: Runbook) -> list[Problem]:
    graph = {s["id"]: [t for t in s.get("on_failure", []) if isinstance(s.get("on_failure"), list) and t != CONTINUE]
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


def env_var(name: str) -> str:
    """The environment variable that may carry parameter `name`: OPSCTL_PARAM_<NAME>."""
    return f"OPSCTL_PARAM_{name.upper()}"


def given_from_environment(book: Runbook, given: dict[str, str], env_vars: Mapping[str, str]) -> dict[str, str]:
    """`given` (from -p) completed with OPSCTL_PARAM_<NAME> variables; -p wins. Secrets
    belong there: a command line is readable by every local user (`ps`)."""
    found = {n: env_vars[env_var(n)] for n in book.parameters if n not in given and env_var(n) in env_vars}
    return {**given, **found}


def resolve_params(book: Runbook, given: dict[str, str], env_vars: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Typed parameter values from -p key=value, OPSCTL_PARAM_<NAME> variables (`env_vars`)
    and the defaults; one UsageError if wrong.

    A given value is read as its declared type and nothing else (no YAML: `null`, `[a, b]`
    and `{x: 1}` are strings for a string parameter and refused for the others). Defaults
    are rendered in declaration order, so a default may use the parameters declared before
    it (`"{{ params.service }}-nightly"`); the result must fit the declared type too.
    """
    declared = book.parameters
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"{book.ref}: unknown parameter '{unknown[0]}'; declared: {', '.join(declared) or 'none'}")
    if env_vars is not None:
        given = given_from_environment(book, given, env_vars)
    values: dict[str, Any] = {}
    secrets = book.secrets()
    for name, spec in declared.items():
        if name in given:
            values[name] = given_value(book.ref, name, spec, given[name], name in secrets)
        elif "default" in spec:
            values[name] = within(book.ref, name, spec, default_value(book, name, values), name in secrets)
        else:
            how = f"set {env_var(name)}" if name in secrets else f"pass -p {name}=VALUE"
            raise UsageError(f"{book.ref}: parameter '{name}' is required; {how}")
        value = values[name]
        if name in secrets and isinstance(value, str) and value and len(value.strip()) < MIN_SECRET:
            # blanks around it count for nothing (breaker 44 T7: '  a  ' masked every 'a' again)
            # masked wherever it shows, a value of 1-3 characters turns every such letter of
            # every output into *** ("e***it 3"), and hides nothing a guess would not find
            # (breaker 43 S17)
            n = len(value.strip())
            raise UsageError(f"{book.ref}: parameter '{name}' is secret and {n} character{'s' if n != 1 else ''} "
                             f"long (blanks around it left out); a secret has at least {MIN_SECRET}")
    return values


def parse_given(texts: Sequence[str]) -> dict[str, str]:
    """The `-p KEY=VALUE` texts as {KEY: VALUE}; UsageError (one line, no value shown: it may
    be a secret) for a text without '=' and for a parameter given twice, which would
    otherwise keep one of the two silently."""
    given: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep:
            raise UsageError(f"-p {name}: use KEY=VALUE")
        if name in given:
            raise UsageError(f"parameter '{name}' is given twice (-p {name}=...); give each parameter once")
        given[name] = value
    return given


def given_value(ref: str, name: str, spec: Mapping[str, Any], raw: str, secret: bool = False) -> Any:
    """A given value (`-p NAME=raw` or OPSCTL_PARAM_<NAME>) as the parameter's declared type,
    within its bounds; UsageError (one line) otherwise, and for an empty (or blank) value of a
    parameter declared `required: true`: it would be taken for a value and fail a step later,
    after the steps before it ran (breaker 37 G6: `-p image=` ran a health check and a backup,
    then failed at the rollout)."""
    if spec.get("required") and not raw.strip():
        how = f"set {env_var(name)} to a value" if secret else f"pass -p {name}=VALUE with a value"
        raise UsageError(f"{ref}: parameter '{name}' is required and was given empty; {how}")
    return within(ref, name, spec, coerce(ref, name, spec.get("type", "string"), raw, secret), secret)


def within(ref: str, name: str, spec: Mapping[str, Any], value: Any, secret: bool = False) -> Any:
    """`value` when it lies within the parameter's declared `minimum` and `maximum` (numbers;
    JSON Schema's keywords), else UsageError (one line; a `secret` value is not shown), so a
    run is refused before any step rather than stopped half-way by the step that can't take it
    (breaker 27 F11: `-p keep_full=0` ran four steps of nightly-backup, then ended it with no alert)."""
    fault = _value_fault(spec, value, lambda v: "(secret)" if secret else _number(v))
    if fault:
        how = f"set {env_var(name)}" if secret else f"pass -p {name}=N"  # a command line is readable by all
        raise UsageError(f"{ref}: parameter '{name}' {fault}; {how}")
    return value


def default_value(book: Runbook, name: str, values: Mapping[str, Any]) -> Any:
    """The default of parameter `name`, rendered over the `values` of the parameters before
    it when it is a template, checked against the declared type (a number must be finite);
    UsageError (one line) when it cannot be rendered or does not fit."""
    spec = book.parameters[name]
    kind = spec.get("type", "string")
    default = spec["default"]
    if isinstance(default, str) and ("{{" in default or "{%" in default):
        try:
            default = evaluate(default, {"params": dict(values)})
        except jinja2.TemplateError as exc:
            raise UsageError(f"{book.ref}: default of '{name}' cannot be rendered: {exc}") from None
        if kind == "string" and not isinstance(default, str):
            default = str(default)
    if not _fits(kind, default):
        raise UsageError(f"{book.ref}: default of '{name}' is {_kind_of(default)}, not {kind}; "
                         "fix the runbook's parameters")
    return default


def _kind_of(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"the non-finite number {value}"
    return type(value).__name__


def coerce(ref: str, name: str, kind: str, raw: str, secret: bool = False) -> Any:
    """`raw` (the text after `-p NAME=`) as the declared type; UsageError when it is not one."""
    text = raw.strip()
    if kind == "string":
        return raw
    # past sys.get_int_max_str_digits() (4300) int() itself raises: no parameter means that
    if kind == "integer" and _INTEGER.fullmatch(text) and len(text) <= _INT_DIGITS:
        return int(text)
    if kind == "number" and _NUMBER.fullmatch(text) and math.isfinite(float(text)):  # 1e999 is inf: refused
        return float(text)
    if kind == "boolean" and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    shown = "(secret)" if secret else f"'{raw}'" if len(raw) <= 40 else f"'{raw[:24]}...' ({len(raw)} characters)"
    example = {"integer": "an integer such as 2 (ASCII digits)", "number": "a finite number such as 2.5",
               "boolean": "true or false"}[kind]
    raise UsageError(f"{ref}: parameter '{name}' is {kind}, got {shown}; pass {example}")
