"""No module of opsctl uses another module's private names (issue 21): a name with a leading
`_` is its module's own, free to change; what another module needs is public and documented.
Read with `ast`: `from opsctl.x import _name` and `x._name` where `x` is an imported opsctl
module (dunders aside)."""

from __future__ import annotations

import ast
from pathlib import Path

OPSCTL = Path(__file__).resolve().parent.parent / "opsctl"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


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
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in modules):
                found.append(f"{rel}:{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    assert cross_module_private_uses() == []


def test_the_check_sees_both_forms(tmp_path):
    (tmp_path / "a.py").write_text("from opsctl.pitr.restore import _fatal\nfrom opsctl.pitr import rds as r\n"
                                   "r._client(None)\nr.client(None)\nfrom opsctl.cli import __getattr__\n")
    assert cross_module_private_uses(tmp_path) == [f"{tmp_path.name}/a.py:1: opsctl.pitr.restore._fatal",
                                                   f"{tmp_path.name}/a.py:3: opsctl.pitr.rds._client"]
