"""The Typer layer stays thin (issue 21): each command parses, calls ONE core operation and
renders. Read with `ast` over opsctl/cli/: on any one path through a command (an `if`
choosing between two operations is two paths), at most one distinct call into a core
package. Helpers of cli/ modules are followed; rendering, parsing and progress views are
allowed (ALLOWED_*), since they hold no operation, and so are opsctl.approval's prompts
inside a callback (a nested function or lambda): that is the approval callable a core
operation takes. Called in the command's own body, approval is a step of a sequence."""

from __future__ import annotations

import ast
import re
from pathlib import Path

CLI = Path(__file__).resolve().parent.parent / "opsctl" / "cli"
# the front door's own plumbing: output, errors, signals, redaction, options, live tables,
# and the terminal half of approval (whether a person can be asked, the prompts)
ALLOWED_MODULES = ("opsctl.output", "opsctl.errors", "opsctl.signals", "opsctl.redact", "opsctl.cli.common",
                   "opsctl.cli.live", "opsctl.approval.is_interactive", "opsctl.approval.terminal")
# render/parse helpers, factories of the approval callable a core operation takes, and
# constructors of views or parsed values (CapWords)
ALLOWED_NAMES = re.compile(r"(^|_)(render|parse|view)|_approval$|^[A-Z]")


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


def _calls(mods, mod: str, node: ast.AST, local: dict, seen: frozenset, nested: bool = False) -> set[str]:
    """Core calls anywhere in `node`, following cli/ helpers; `nested`: `node` is a function
    defined inside the command (a callback)."""
    funcs = mods[mod][1]
    found = set()
    callbacks = {id(n) for fn in ast.walk(node) if isinstance(fn, (ast.FunctionDef, ast.Lambda))
                 and (nested or fn is not node) for n in ast.walk(fn)}
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        if isinstance(f, ast.Name) and f.id in funcs and f.id not in local:
            full = f"{mod}.{f.id}"
        elif isinstance(f, ast.Name) and f.id in local:
            full = local[f.id]
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in local:
            full = f"{local[f.value.id]}.{f.attr}"
        else:
            continue
        if full.startswith(ALLOWED_MODULES) or ALLOWED_NAMES.search(full.rsplit(".", 1)[-1]):
            continue
        if full.startswith("opsctl.approval.") and id(call) in callbacks:
            continue  # the approval callable a command hands to its core operation
        owner, _, name = full.rpartition(".")
        if full.startswith("opsctl.cli"):
            if owner in mods and name in mods[owner][1] and full not in seen:
                helper = mods[owner][1][name]
                found |= _calls(mods, owner, helper, {**mods[owner][2], **_imports(ast.walk(helper))}, seen | {full})
            continue
        found.add(full)
    return found


def _paths(mods, mod: str, stmts: list, local: dict, seen: frozenset) -> list[tuple[set, bool]]:
    """(core calls, ended by return/raise) for each path through `stmts`."""
    going, ended = [set()], []
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            test = _calls(mods, mod, stmt.test, local, seen)
            branches = _paths(mods, mod, stmt.body, local, seen) + _paths(mods, mod, stmt.orelse, local, seen)
        elif isinstance(stmt, ast.With):
            test = set().union(*(_calls(mods, mod, i.context_expr, local, seen) for i in stmt.items))
            branches = _paths(mods, mod, stmt.body, local, seen)
        else:
            here = _calls(mods, mod, stmt, local, seen, nested=isinstance(stmt, ast.FunctionDef))
            if isinstance(stmt, (ast.Return, ast.Raise)):
                ended += [p | here for p in going]
                going = []
                break
            going = [p | here for p in going]
            continue
        nxt = []
        for p in going:
            for q, end in branches:
                (ended if end else nxt).append(p | test | q)
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
            paths = _paths(mods, mod, fn.body, local, frozenset({f"{mod}.{fn.name}"}))
            out[f"{mod}.{fn.name}"] = sorted(max((p for p, _ in paths), key=len, default=set()))
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
