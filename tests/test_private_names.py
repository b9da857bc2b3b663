"""No module of opsctl uses another module's private names (issue 21): a name with a leading
`_` is its module's own, free to change; what another module needs is public and documented.
Read with `ast`: `from opsctl.x import _name`; `x._name` where `x` is an imported opsctl
module, or `opsctl.x._name` through a dotted path; and `obj._name` on any object but
self/cls when the module itself defines or assigns no `_name` (an object of another module's
class). Dunders and namedtuple's `_replace`-style API aside."""

from __future__ import annotations

import ast
from pathlib import Path

OPSCTL = Path(__file__).resolve().parent.parent / "opsctl"


# public API spelt with a leading underscore (collections.namedtuple's, so fields cannot clash)
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
# the standard library's, documented as public: os._exit (exit without cleanup, "os" docs)
STDLIB_API = {"_exit"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API | STDLIB_API


def cross_module_private_uses(root: Path = OPSCTL) -> list[str]:
    """"path:line: opsctl.x._name" for each use of another opsctl module's private name."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(root.parent)
        modules: dict[str, str] = {}  # local name -> opsctl module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("opsctl"):
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{rel}:{node.lineno}: {node.module}.{alias.name}")
                    else:  # may be a module (from opsctl.pitr import rds)
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("opsctl") and alias.asname:
                        modules[alias.asname] = alias.name
        own = _own_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            chain = _dotted(node.value)
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                found.append(f"{rel}:{node.lineno}: {modules[node.value.id]}.{node.attr}")
            elif chain and chain.startswith("opsctl."):  # import opsctl.x.y; opsctl.x.y._name
                found.append(f"{rel}:{node.lineno}: {chain}.{node.attr}")
            elif (isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls")
                  and node.attr not in own):  # obj._name of an object of another module's class
                found.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _own_names(tree: ast.Module) -> set[str]:
    """The private names a module defines itself: functions, classes, class-body fields and
    every attribute it assigns (`self._x = ...`, `obj._x = ...`); reading those on its own
    objects is its own business."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                own.add(stmt.target.id)
            elif isinstance(stmt, ast.Assign):
                own |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return own


def test_no_module_uses_another_modules_private_names():
    assert cross_module_private_uses() == []


def test_the_check_sees_both_forms(tmp_path):
    (tmp_path / "a.py").write_text("from opsctl.pitr.restore import _fatal\nfrom opsctl.pitr import rds as r\n"
                                   "r._client(None)\nr.client(None)\nfrom opsctl.cli import __getattr__\n")
    assert cross_module_private_uses(tmp_path) == [f"{tmp_path.name}/a.py:1: opsctl.pitr.restore._fatal",
                                                   f"{tmp_path.name}/a.py:3: opsctl.pitr.rds._client"]


def test_the_check_sees_dotted_paths_and_private_fields_of_other_modules_objects(tmp_path):
    """#21 D5: opsctl/pitr/standby.py read `p._ctx`, a private field of restore.PitrPlan."""
    (tmp_path / "b.py").write_text(
        "import opsctl.pitr.rds\nopsctl.pitr.rds._client(None)\n"
        "def f(p):\n    return p._ctx, p._own, p._replace(a=1)\n"
        "class C:\n    _own: int = 0\n    def g(self):\n        return self._hidden\n")
    assert cross_module_private_uses(tmp_path) == [f"{tmp_path.name}/b.py:2: opsctl.pitr.rds._client",
                                                   f"{tmp_path.name}/b.py:4: p._ctx"]
