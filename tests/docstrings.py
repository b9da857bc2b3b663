"""Docstring coverage of opsctl's public definitions (issue 21, the DOCSTRINGS contract).

Counted, per Python file, with `ast` (nothing is imported):

- module-level functions and classes whose name has no leading `_` (also those defined
  under a module-level `if`/`try`/`with`, such as `if TYPE_CHECKING:`);
- methods of those public classes whose name has no leading `_` (dunder methods such as
  `__init__` excluded); a Protocol's methods count; properties count as methods, and a
  property's getter/setter pair or `@overload` variants count once (documented when any
  of them has a docstring).

Not counted: nested classes, functions defined inside functions, private names.

Walking a folder skips `opsctl/cli/` (the Typer layer is documented by its `--help`);
a path given explicitly is always counted.

    .venv/bin/python tests/docstrings.py                 # opsctl/ outside cli/
    .venv/bin/python tests/docstrings.py opsctl/backup   # one area: figure + missing list
    .venv/bin/python tests/docstrings.py --summary opsctl/health opsctl/deploy
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folders left out when walking a folder (relative to the repository root).
SKIPPED_FOLDERS = ("opsctl/cli",)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _top_level(body: list[ast.stmt]):
    """Statements at module level, looking inside `if`/`try`/`with` blocks."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _top_level(block)
            for handler in node.handlers:
                yield from _top_level(handler.body)
        elif isinstance(node, ast.With):
            yield from _top_level(node.body)
        else:
            yield node


def definitions(source: str) -> list[tuple[str, int, bool]]:
    """Public definitions of one module's source: (qualified name, line, documented).

    A name defined several times (property setter, `@overload`, a conditional def) is
    one definition, documented when any of its definitions has a docstring.
    """
    tree = ast.parse(source)
    found: dict[str, tuple[int, bool]] = {}

    def add(name: str, node: ast.AST) -> None:
        documented = bool((ast.get_docstring(node) or "").strip())
        line, before = found.get(name, (node.lineno, False))
        found[name] = (line, before or documented)

    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in _top_level(tree.body):
        if isinstance(node, funcs) and _public(node.name):
            add(node.name, node)
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            add(node.name, node)
            for member in _top_level(node.body):
                if isinstance(member, funcs) and _public(member.name):
                    add(f"{node.name}.{member.name}", member)
    return [(name, line, documented) for name, (line, documented) in found.items()]


def _files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_absolute():
            path = (Path.cwd() / path) if (Path.cwd() / path).exists() else ROOT / path
        if path.is_file():
            out.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such file or folder: {raw}")
        skipped = [ROOT / s for s in SKIPPED_FOLDERS]
        for file in sorted(path.rglob("*.py")):
            if any(file.is_relative_to(s) and not path.is_relative_to(s) for s in skipped):
                continue
            out.append(file)
    return list(dict.fromkeys(out))


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def coverage(paths: list[str | Path] = ("opsctl",)) -> tuple[int, int, list[str]]:
    """(documented, total, missing) over the public definitions under `paths`.

    `paths` are files or folders (relative to the current folder or to the repository
    root); `missing` lists `path:line name` for each public definition without a
    docstring, in file order.  Raises FileNotFoundError for a path that does not exist.
    """
    documented = total = 0
    missing: list[str] = []
    for file in _files(list(paths)):
        for name, line, has_doc in definitions(file.read_text(encoding="utf-8")):
            total += 1
            if has_doc:
                documented += 1
            else:
                missing.append(f"{_shown(file)}:{line} {name}")
    return documented, total, missing


def _percent(documented: int, total: int) -> str:
    return f"{100 * documented / total:.1f} %" if total else "n/a"


def main(argv: list[str]) -> int:
    summary = "--summary" in argv
    paths = [a for a in argv if a != "--summary"] or ["opsctl"]
    for path in paths:
        try:
            documented, total, missing = coverage([path])
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: {documented}/{total} documented ({_percent(documented, total)})")
        if not summary:
            for row in missing:
                print(f"  missing: {row}")
    if len(paths) > 1:
        documented, total, _ = coverage(paths)
        print(f"overall: {documented}/{total} documented ({_percent(documented, total)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
