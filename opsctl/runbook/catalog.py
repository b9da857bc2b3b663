"""The runbooks of an ops root: their versions, and the lock that makes published ones immutable.

`runbooks/lock.json` pins the SHA-256 of every published version. Editing a published
file changes its hash and fails validation: the fix is a new version, never a silent edit
of a procedure someone already ran.

A rule added after a version was published (e.g. no raw parameters in shell text) can
refuse that version. It stays as it is, for the record and for `show --diff`, but is
*retired*: `validate` reports it as retired (not an error) as long as a later version
exists, and `run` refuses it, naming the version to run instead. When the refused version
is the latest, `validate` fails: publish a fixed version.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Mapping

from opsctl.errors import UsageError
from opsctl.files import write_json
from opsctl.runbook.model import Problem, Runbook, check, parse

FILE = re.compile(r"^v(\d+)\.ya?ml$")


def folder(root: Path) -> Path:
    """The runbooks folder of the ops root `root`."""
    return root / "runbooks"


def versions(root: Path, name: str) -> dict[int, Path]:
    """Version number -> file of runbook `name`, oldest first (empty when there is none)."""
    base = folder(root) / name
    found = {}
    for path in base.glob("v*.y*ml") if base.is_dir() else []:
        match = FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def names(root: Path) -> list[str]:
    """The names of the runbooks that have at least one version file, sorted."""
    base = folder(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir() and versions(root, p.name)) if base.is_dir() else []


def digest(path: Path) -> str:
    """The lock's pin of a file: "sha256:" and the hex SHA-256 of its bytes."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
REF = re.compile(r"^[^@\s]+@[1-9][0-9]*$")


def lock(root: Path) -> dict[str, str]:
    """runbooks/lock.json as {NAME@N: digest}; empty when nothing is published.

    A damaged lock (not JSON, not an object of NAME@N to "sha256:…", a merge conflict left
    in it, a folder, unreadable) is a UsageError naming the file and the fix, never a
    Python exception: every runbook command and `render ci` read it."""
    path = folder(root) / "lock.json"
    if not path.exists() and not path.is_symlink():
        return {}

    def damaged(why: str) -> UsageError:
        return UsageError(f"{path} {why}; restore it from git (git checkout -- runbooks/lock.json)")

    if path.is_dir():
        raise damaged("is a folder, not a JSON file of NAME@N: sha256:… pins")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise damaged(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged("is not UTF-8 text") from None
    conflict = next((n for n, line in enumerate(text.splitlines(), 1)
                     if line.startswith(("<<<<<<<", "=======", ">>>>>>>"))), None)
    if conflict:
        raise damaged(f"holds an unresolved merge conflict (line {conflict})")

    def pairs(items):
        seen: dict = {}
        for key, value in items:
            if key in seen:
                raise ValueError(f"{key!r} is pinned twice")
            seen[key] = value
        return seen

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise damaged(f"is not a JSON object of NAME@N: sha256:… pins (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise damaged(f"is not a JSON object of NAME@N: sha256:… pins ({str(exc)[:80] or type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise damaged(f"is not a JSON object of NAME@N: sha256:… pins (it holds a JSON {type(doc).__name__})")
    for key, value in doc.items():
        if not REF.match(key) or not isinstance(value, str) or not PIN.match(value):
            shown = ascii(key)[1:-1][:60]
            raise damaged(f"is not a JSON object of NAME@N: sha256:… pins ('{shown}' is not NAME@N pinned to sha256:<64 hex>)")
    return doc


def _write_lock(root: Path, pins: dict[str, str]) -> None:
    write_json(folder(root) / "lock.json", dict(sorted(pins.items())))


def locate(root: Path, ref: str) -> Path:
    """NAME (latest version) or NAME@N to a file."""
    name, _, ver = ref.partition("@")
    found = versions(root, name)
    if not found:
        known = ", ".join(names(root)) or "none"
        raise UsageError(f"no runbook '{name}' in {folder(root)}; known: {known}")
    if not ver:
        return found[max(found)]
    if not ver.isdigit() or int(ver) not in found:
        raise UsageError(f"runbook {name} has no version {ver}; versions: {', '.join(map(str, found))}")
    return found[int(ver)]


def load(root: Path, ref: str, actions: Mapping[str, Callable]) -> Runbook:
    """A runbook that is valid in every way, or one UsageError with file:line (a retired
    version is refused with the version to run instead)."""
    problems = validate(locate(root, ref), root, actions)
    retired = [p for p in problems if p.retired]
    if retired:
        raise UsageError(f"{retired[0].reason}; first problem: {retired[0].path}:{retired[0].line}")
    if problems:
        more = f" (and {len(problems) - 1} more: run 'opsctl runbook validate')" if len(problems) > 1 else ""
        raise UsageError(f"{problems[0]}{more}")
    return parse(locate(root, ref))


def validate(path: Path, root: Path, actions: Mapping[str, Callable]) -> list[Problem]:
    """Every problem of one file. A published, unchanged version that today's rules refuse
    yields one `retired` problem when a later version exists (see the module docstring)."""
    try:
        book = parse(path)
    except UsageError as exc:
        where, _, reason = str(exc).partition(": ")
        file, _, line = where.rpartition(":")
        return [Problem(Path(file), int(line) if line.isdigit() else 1, reason)]
    problems = check(book, actions)
    match = FILE.match(path.name)
    if path.parent.name != book.name or not match or int(match.group(1)) != book.version:
        problems.append(Problem(path, book.line("name"),
                                f"file must be runbooks/{book.name}/v{book.version}.yaml to match its name and version"))
    pinned = lock(root).get(book.ref)
    if pinned and pinned != digest(path):
        problems.append(Problem(path, 1, f"{book.ref} is published and was changed (lock pins {pinned[:19]}…); "
                                         f"revert it and publish the change as v{_next(root, book.name)}"))
    elif pinned and problems:
        later = [v for v in versions(root, book.name) if v > book.version]
        if later:
            first = problems[0]
            return [Problem(first.path, first.line,
                            f"{book.ref} is retired: a rule added after it was published refuses it ({first.reason}); "
                            f"it is kept unchanged but cannot run: run {book.name}@{max(later)}", retired=True)]
        problems = [Problem(p.path, p.line, f"{p.reason} ({book.ref} is published: fix it as "
                                             f"v{_next(root, book.name)} and publish that)") for p in problems]
    return problems


def listing(root: Path) -> list[dict]:
    """Every runbook: {name, versions: [N…], published: [N…]}, by name."""
    pins = lock(root)
    return [{"name": n, "versions": list(versions(root, n)),
             "published": sorted(int(k.split("@")[1]) for k in pins if k.split("@")[0] == n)}
            for n in names(root)]


def validate_all(root: Path, refs: list[str] | None, actions: Mapping[str, Callable]) -> dict:
    """`opsctl runbook validate`: the files checked (relative to `root`; all versions of all
    runbooks when `refs` is empty), their problems and the retired versions, as text lines."""
    paths = ([locate(root, r) for r in refs] if refs else
             [p for n in names(root) for p in versions(root, n).values()])
    found = [p for path in paths for p in validate(path, root, actions)]
    return {"checked": [str(p.relative_to(root)) for p in paths],
            "problems": [str(p) for p in found if not p.retired],
            "retired": [str(p) for p in found if p.retired]}


def _next(root: Path, name: str) -> int:
    return max(versions(root, name), default=0) + 1


def publish(root: Path, ref: str, actions: Mapping[str, Callable]) -> tuple[str, str]:
    """Pin `ref` (NAME@N, valid in every way) in the lock; UsageError when already published.
    Returns (NAME@N, digest)."""
    path = locate(root, ref)
    book = load(root, ref, actions)
    pins = lock(root)
    if book.ref in pins:
        raise UsageError(f"{book.ref} is already published; publish changes as v{_next(root, book.name)}")
    pins[book.ref] = digest(path)
    _write_lock(root, pins)
    return book.ref, pins[book.ref]


def show(root: Path, ref: str, diff_spec: str | None = None) -> str:
    """What `opsctl runbook show` prints: the file of `ref` (NAME or NAME@N) headed by its
    path in the ops root, or with `diff_spec` ("1..2") the diff between two versions of
    NAME ("(no change)" when equal). UsageError for an unknown runbook or version."""
    if diff_spec:
        return diff(root, ref.split("@")[0], diff_spec) or "(no change)"
    path = locate(root, ref)
    return f"# {path.relative_to(root)}\n{_text(path)}"


def diff(root: Path, name: str, spec: str) -> str:
    """`--diff 1..2`: the unified diff between two versions."""
    first, sep, second = spec.partition("..")
    if not sep or not first.isdigit() or not second.isdigit():
        raise UsageError(f"--diff {spec}: use A..B with version numbers, e.g. 1..2")
    a, b = locate(root, f"{name}@{first}"), locate(root, f"{name}@{second}")
    return "".join(difflib.unified_diff(_text(a).splitlines(True), _text(b).splitlines(True),
                                        f"{name}@{first}", f"{name}@{second}"))


def _text(path: Path) -> str:
    """The text of runbook file `path` as YAML decodes it (yamltext.read: UTF-8, never the
    locale's encoding); UsageError with file:line for bytes that are not text."""
    from opsctl import yamltext

    try:
        return yamltext.read(path)
    except yamltext.YamlFault as exc:
        raise UsageError(f"{path}:{exc.line}: not valid YAML: {exc.problem}; {exc.remedy}") from None
