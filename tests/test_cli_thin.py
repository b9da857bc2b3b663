"""The Typer layer stays thin (issue 21): each command parses, calls ONE core operation and
renders. Read with `ast` over opsctl/cli/: on any one path through a command (an `if`
choosing between two operations is two paths), at most one call into opsctl outside cli/
(calls are counted, so one function called twice is two). Helpers of cli/ modules are
followed, and a name a cli/ module re-exports (opsctl.cli.common.confirm) is resolved to
where it lives. `opsctl.x.y.f()` through a dotted module path counts, and so does a method
called on an object a core call returned (`plan = core.plan(...); plan.run()`). Allowed,
by module only (ALLOWED_MODULES): the front door's plumbing and rendering; besides, class
constructors (CapWords: values and views, no operation) and the approval callable a core
operation takes: an opsctl.approval prompt inside a callback (a nested function or
lambda), or a factory's result passed straight as the `approve=` argument. Called in the
command's own body, approval is a step of a sequence."""

from __future__ import annotations

import ast
import re
from pathlib import Path

CLI = Path(__file__).resolve().parent.parent / "opsctl" / "cli"
# the front door's own plumbing: output, errors, signals, redaction, options, live tables,
# and the terminal half of approval (whether a person can be asked, the prompts)
ALLOWED_MODULES = ("opsctl.output", "opsctl.errors", "opsctl.signals", "opsctl.redact", "opsctl.cli.common",
                   "opsctl.cli.live", "opsctl.cli.tables", "opsctl.approval.is_interactive",
                   "opsctl.approval.terminal")
# render and parse helpers living beside their core, by full path: they read or show a
# value and change nothing (a live view module counts whole)
ALLOWED_MODULES += ("opsctl.loadtest.live", "opsctl.deploy.plan.render", "opsctl.deploy.manifests.parse",
                    "opsctl.loadtest.profiles.parse_duration")
# constructors of values or views (CapWords): they hold no operation
CONSTRUCTOR = re.compile(r"^[A-Z]")


def _imports(nodes) -> dict[str, str]:
    names = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opsctl"):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("opsctl"):
                    names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "opsctl"
    return names


def _modules(folder: Path) -> dict[str, tuple[ast.Module, dict, dict]]:
    mods = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        name = "opsctl.cli" if path.stem == "__init__" else f"opsctl.cli.{path.stem}"
        mods[name] = (tree, {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}, _imports(tree.body))
    return mods


OBJECTS = "\0objects"  # key in `local`: the command's names holding what a core call returned


def _dotted(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None when its root is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _resolve(mods, full: str) -> str:
    """A name a cli/ module re-exports (imported there, or handed out by its module
    __getattr__ from an import inside it) resolved to where it lives."""
    owner, _, name = full.rpartition(".")
    while owner in mods and name not in mods[owner][1]:
        tree, _, top = mods[owner]
        inner = {**top, **_imports(ast.walk(tree))}
        if name not in inner or inner[name] == full:
            break
        full = inner[name]
        owner, _, name = full.rpartition(".")
    return full


def _core_objects(mods, node: ast.AST, local: dict) -> dict[str, str]:
    """Names assigned the result of a call into opsctl outside cli/ (`r = core.plan(...)`)."""
    objects = {}
    for stmt in ast.walk(node):
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
            parts = _dotted(stmt.value.func)
            if parts and parts[0] in local:
                full = _resolve(mods, ".".join([local[parts[0]], *parts[1:]]))
                if not full.startswith(("opsctl.cli", *ALLOWED_MODULES)):
                    for target in stmt.targets:
                        for name in ast.walk(target):
                            if isinstance(name, ast.Name):
                                objects[name.id] = f"{full}()"
    return objects


def _calls(mods, mod: str, node: ast.AST, local: dict, seen: frozenset, nested: bool = False) -> list[str]:
    """Core calls anywhere in `node` (each call once, so repeats count), following cli/
    helpers; `nested`: `node` is a function defined inside the command (a callback)."""
    funcs = mods[mod][1]
    found = []
    callbacks = {id(n) for fn in ast.walk(node) if isinstance(fn, (ast.FunctionDef, ast.Lambda))
                 and (nested or fn is not node) for n in ast.walk(fn)}
    approvers = {id(k.value) for c in ast.walk(node) if isinstance(c, ast.Call) for k in c.keywords
                 if k.arg == "approve" and isinstance(k.value, ast.Call)}
    objects = {**local.get(OBJECTS, {}), **_core_objects(mods, node, local)}
    # a method of a returned object counts when called as a step (a statement of its own, or
    # assigned); one read inside an expression (a message, a loop over items) shows the result
    steps = {id(st.value) for st in ast.walk(node) if isinstance(st, (ast.Expr, ast.Assign))
             and isinstance(st.value, ast.Call)}
    shown = set()  # calls inside the arguments of an output call (emit(...)): they render a result
    for c in ast.walk(node):
        parts = _dotted(c.func) if isinstance(c, ast.Call) else None
        if parts and parts[0] in local and _resolve(mods, ".".join([local[parts[0]], *parts[1:]])).startswith(
                "opsctl.output"):
            shown |= {id(n) for arg in [*c.args, *(k.value for k in c.keywords)] for n in ast.walk(arg)}
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        parts = _dotted(call.func)
        if not parts:
            continue
        if len(parts) == 1 and parts[0] in funcs and parts[0] not in local:
            full = f"{mod}.{parts[0]}"
        elif parts[0] in local:
            full = _resolve(mods, ".".join([local[parts[0]], *parts[1:]]))
        elif parts[0] in objects and len(parts) > 1 and id(call) in steps and id(call) not in callbacks \
                and id(call) not in shown:
            full = ".".join([objects[parts[0]], *parts[1:]])  # a method of what a core call returned
            # (inside a render callback or emit's arguments it shows the result: allowed)
        else:
            continue
        if not full.startswith("opsctl") or full.startswith(ALLOWED_MODULES) \
                or CONSTRUCTOR.search(full.rsplit(".", 1)[-1]):
            continue
        if full.startswith("opsctl.approval.") and id(call) in callbacks:
            continue  # the approval callable a command hands to its core operation
        if id(call) in approvers:
            continue  # a factory of that callable, its result passed as `approve=`
        owner, _, name = full.rpartition(".")
        if full.startswith("opsctl.cli"):
            if owner in mods and name in mods[owner][1] and full not in seen:
                helper = mods[owner][1][name]
                found += _calls(mods, owner, helper, {**mods[owner][2], **_imports(ast.walk(helper))}, seen | {full})
            continue
        found.append(full)
    return found


def _paths(mods, mod: str, stmts: list, local: dict, seen: frozenset) -> list[tuple[list, bool]]:
    """(core calls, ended by return/raise) for each path through `stmts`."""
    going, ended = [[]], []
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            test = _calls(mods, mod, stmt.test, local, seen)
            branches = _paths(mods, mod, stmt.body, local, seen) + _paths(mods, mod, stmt.orelse, local, seen)
        elif isinstance(stmt, ast.With):
            test = [c for i in stmt.items for c in _calls(mods, mod, i.context_expr, local, seen)]
            branches = _paths(mods, mod, stmt.body, local, seen)
        else:
            here = _calls(mods, mod, stmt, local, seen, nested=isinstance(stmt, ast.FunctionDef))
            if isinstance(stmt, (ast.Return, ast.Raise)):
                ended += [p + here for p in going]
                going = []
                break
            going = [p + here for p in going]
            continue
        nxt = []
        for p in going:
            for q, end in branches:
                (ended if end else nxt).append(p + test + q)
        going = nxt
        if not going:
            break
    return [(p, False) for p in going] + [(p, True) for p in ended]


def _commands(tree: ast.Module):
    registered = {n.args[0].id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Call)
                  and isinstance(n.func.func, ast.Attribute) and n.func.func.attr in ("command", "callback")
                  and n.args and isinstance(n.args[0], ast.Name)}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (node.name in registered or any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "callback")
                for d in node.decorator_list)):
            yield node


def core_calls_per_command(folder: Path = CLI) -> dict[str, list[str]]:
    """{"opsctl.cli.X.command": the core calls of its busiest path}."""
    mods = _modules(folder)
    out = {}
    for mod, (tree, _, top) in mods.items():
        for fn in _commands(tree):
            local = {**top, **_imports(ast.walk(fn))}
            local[OBJECTS] = _core_objects(mods, fn, local)  # seen from every statement of the command
            paths = _paths(mods, mod, fn.body, local, frozenset({f"{mod}.{fn.name}"}))
            out[f"{mod}.{fn.name}"] = sorted(max((p for p, _ in paths), key=len, default=[]))
    return out


def test_every_command_calls_one_core_operation():
    found = core_calls_per_command()
    assert len(found) >= 40, sorted(found)  # every command module was read
    several = {name: calls for name, calls in found.items() if len(calls) > 1}  # no exceptions (issue 21)
    assert several == {}, "commands calling several core operations:\n" + "\n".join(
        f"{name}: {', '.join(calls)}" for name, calls in sorted(several.items()))


def test_the_check_sees_a_sequence_in_a_command(tmp_path):
    (tmp_path / "fat.py").write_text('''
import typer
app = typer.Typer()

def _helper(project, env):
    from opsctl.backup import retention
    return retention.prune(project, env)

@app.command()
def prune(dry_run: bool = False, env_name: str = "local") -> None:
    from opsctl.backup import retention
    from opsctl.output import emit, render_table
    if dry_run:
        emit(retention.plan(env_name), False)
        return
    plan = retention.plan(env_name)
    emit(_helper(plan, env_name), False, render_table)

@app.command()
def thin(env_name: str = "local") -> None:
    from opsctl.approval import at_terminal
    from opsctl.backup.create import create
    def approve(text):
        at_terminal(text, None, False)
    if env_name:
        create(env_name, approve)
    else:
        create(None, lambda q: at_terminal(q, None, True))

@app.command()
def asks_first(yes: bool = False) -> None:
    from opsctl.approval import at_terminal
    from opsctl.backup.create import create
    at_terminal("create?", None, yes)
    create(None)
''')
    found = core_calls_per_command(tmp_path)
    assert found == {"opsctl.cli.fat.prune": ["opsctl.backup.retention.plan", "opsctl.backup.retention.prune"],
                     "opsctl.cli.fat.thin": ["opsctl.backup.create.create"],
                     "opsctl.cli.fat.asks_first": ["opsctl.approval.at_terminal", "opsctl.backup.create.create"]}


def test_the_check_counts_calls_and_sees_through_reexports_dotted_paths_and_returned_objects(tmp_path):
    """#21 D1: the check counted distinct functions, let a re-exported confirm through, missed
    `opsctl.x.f()` and `plan.run()`, and exempted any name holding render/parse/view."""
    (tmp_path / "common.py").write_text('''
def __getattr__(name):
    if name == "confirm":
        from opsctl.approval import confirm
        return confirm
''')
    (tmp_path / "fat2.py").write_text('''
import typer
import opsctl.pitr.ops
app = typer.Typer()

@app.command()
def twice(yes: bool = False) -> None:
    from opsctl.pitr.ops import prune_chain
    prune_chain(None, None, 2, dry_run=True)
    prune_chain(None, None, 2)

@app.command()
def reexported(yes: bool = False) -> None:
    from opsctl.cli.common import confirm
    from opsctl.local import platform
    confirm("delete all local platform data", yes)
    platform.down(None, purge=True)

@app.command()
def dotted() -> None:
    from opsctl.backup import restore
    opsctl.pitr.ops.prune_chain(None, None, 2)
    restore.restore_any(None, None)

@app.command()
def returned() -> None:
    from opsctl.backup import restore
    plan = restore.plan(None, None)
    plan.run()

@app.command()
def named_render() -> None:
    from opsctl.backup import restore
    from opsctl.output import emit
    restore.render_and_run(None)
    r = restore.restore_any(None, None, approve=restore.terminal_approval(None, True))
    emit(r, False, lambda c: c.print(r.summary()))
''')
    found = core_calls_per_command(tmp_path)
    assert found == {
        "opsctl.cli.fat2.twice": ["opsctl.pitr.ops.prune_chain", "opsctl.pitr.ops.prune_chain"],
        "opsctl.cli.fat2.reexported": ["opsctl.approval.confirm", "opsctl.local.platform.down"],
        "opsctl.cli.fat2.dotted": ["opsctl.backup.restore.restore_any", "opsctl.pitr.ops.prune_chain"],
        "opsctl.cli.fat2.returned": ["opsctl.backup.restore.plan", "opsctl.backup.restore.plan().run"],
        "opsctl.cli.fat2.named_render": ["opsctl.backup.restore.render_and_run", "opsctl.backup.restore.restore_any"],
    }
