"""YAML a person wrote (opsctl.yaml, runbooks), read into plain data with every fault one line.

`read` turns a file's bytes into text by the encoding rules of YAML 1.2 (section 5.2: UTF-8,
UTF-16 or UTF-32, told by a byte order mark or by where the first character's zero bytes are;
UTF-8 without either), never by the locale. Bytes that are not text in that encoding are a
YamlFault naming the line and the byte offset (breaker 37 G11: a stray 0xff ended `config show`
on "unexpected UnicodeDecodeError").

`load` reads text with PyYAML's safe loader, plus one rule PyYAML does not enforce: the keys of
a mapping are unique (YAML 1.2 section 3.2.1.1). PyYAML keeps the last of two equal keys, so a
second `production:` entry silently dropped the first one's `protected: true` (breaker 37 G13);
a duplicate is a YamlFault naming its key path and both lines. The keys a merge (`<<: *base`)
brings in may be overridden: that is what a merge is for.

Aliases are bounded as go-yaml bounds them ("excessive aliasing"): a document whose aliases
expand past MAX_VALUES values or MAX_CHARACTERS characters of scalars (breaker 44 T3: one
string of 200 kB aliased 20,000 times held few values and 4 GB), nests deeper than
MAX_DEPTH, or holds an alias of a node that
contains it is a YamlFault before anything walks it (breaker 43 S1: a runbook of 470 bytes
of nested aliases, a "billion laughs", took 23 GB to validate; S10: 10,000 nested brackets
ended on "unexpected RecursionError").

PyYAML raises YAMLError, with a position, for bad syntax, but a bare ValueError, without one,
for a scalar it parses and then cannot build: an integer of more than 4300 digits (past
Python's int-from-text limit, `sys.get_int_max_str_digits`), a date such as 2026-02-30
(breaker 30 F1: a runbook bound of 5000 digits ended `validate` on "unexpected ValueError"),
and a ReaderError, with a character offset only, for a character YAML does not allow (a
control character such as U+0007). All are the file's fault: `load` makes each one line
naming where it is.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

# YAML 1.2 section 5.2, "Character Encodings": the first bytes of a stream and the encoding
# they tell, in the spec's order (x: any byte that is not zero). A byte order mark is dropped.
_BOMS = ((codecs.BOM_UTF32_BE, "UTF-32-BE"), (codecs.BOM_UTF32_LE, "UTF-32-LE"),
         (codecs.BOM_UTF16_BE, "UTF-16-BE"), (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF8, "UTF-8"))


MAX_VALUES = 100_000  # values a document may expand to through its aliases (opsctl's files hold a few thousand)
MAX_CHARACTERS = 2_000_000  # characters its scalars may expand to (beyond twice the text's own length)
MAX_DEPTH = 64  # levels of nesting (opsctl's deepest schema needs about 8)


class YamlFault(ValueError):
    """Text that is not YAML opsctl can read: `line` (1-based), `problem` (one line) and, where
    there is a fix more precise than "fix the YAML", `remedy` (else "")."""

    def __init__(self, line: int, problem: str, remedy: str = ""):
        super().__init__(f"line {line}: {problem}" + (f"; {remedy}" if remedy else ""))
        self.line, self.problem, self.remedy = line, problem, remedy


def _encoding(data: bytes) -> tuple[str, int]:
    """(codec name, length of the byte order mark) of a YAML stream that begins with `data`."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name, len(bom)
    head = data[:4]
    if len(head) == 4 and head[:3] == b"\0\0\0" and head[3]:
        return "UTF-32-BE", 0
    if len(head) == 4 and head[0] and head[1:] == b"\0\0\0":
        return "UTF-32-LE", 0
    if len(head) >= 2 and not head[0] and head[1]:
        return "UTF-16-BE", 0
    if len(head) >= 2 and head[0] and not head[1]:
        return "UTF-16-LE", 0
    return "UTF-8", 0


def decode(data: bytes) -> str:
    """The text of the YAML stream `data` (bytes as read from a file), in the encoding YAML 1.2
    tells from its first bytes (UTF-8 unless they say UTF-16 or UTF-32), byte order mark dropped.
    YamlFault naming the line and byte offset of the first bytes that are not text in it."""
    name, start = _encoding(data)
    try:
        return data[start:].decode(name)
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data[start:offset].decode(name).count("\n") + 1  # the text before it is sound
        shown = " ".join(f"0x{b:02x}" for b in data[offset:min(offset + 4, start + exc.end)])
        raise YamlFault(line, f"byte {offset} ({shown}) is not {name} ({exc.reason})",
                        "save the file as UTF-8 (YAML files are UTF-8, or UTF-16/32 with a byte order mark)") from None


def read(path: Path) -> str:
    """The text of the YAML file `path`, decoded as `decode` says (never by the locale's
    encoding); YamlFault for bytes that are not text, OSError when it can't be read."""
    return decode(Path(path).read_bytes())


def load(text: str) -> Any:
    """`text` as plain data (PyYAML's safe loader); YamlFault for bad syntax, a character YAML
    does not allow, a key given twice in one mapping, or a value that can't be built."""
    return _load(text, many=False)


def load_all(text: str) -> list[Any]:
    """Every document of the stream `text` (`---` between them), each read as `load` reads
    one; YamlFault likewise, its line counted from the start of the stream."""
    return _load(text, many=True)


def _load(text: str, many: bool) -> Any:
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader checks every character here, before parsing
        if not many:
            node = loader.get_single_node()
            if node is None:
                return None
            _refuse_bombs(node, len(text))
            _refuse_duplicate_keys(loader, node)
            return loader.construct_document(node)
        documents = []
        while loader.check_node():
            node = loader.get_node()
            _refuse_bombs(node, len(text))
            _refuse_duplicate_keys(loader, node)
            documents.append(loader.construct_document(node))
        return documents
    except YamlFault:  # a ValueError too, but already one line with its place
        raise
    except RecursionError:  # PyYAML's composer recurses once per level: about 490 of them
        mark = loader.get_mark() if loader is not None else None
        raise YamlFault(mark.line + 1 if mark else 1, f"the YAML nests deeper than {MAX_DEPTH} levels",
                        "write it flatter") from None
    except yaml.reader.ReaderError as exc:  # a character offset into `text`, no mark
        line = text[:exc.position].count("\n") + 1
        raise YamlFault(line, f"the character U+{exc.character:04X} is not allowed in YAML ({exc.reason})",
                        "remove it, or write it as an escape in a double-quoted string") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = str(getattr(exc, "problem", None) or exc).splitlines() or ["not valid YAML"]
        raise YamlFault(mark.line + 1 if mark else 1, problem[0]) from None
    except (ValueError, OverflowError) as exc:
        raise _unbuildable(text, exc) from None
    finally:
        if loader is not None:
            loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _refuse_bombs(root: yaml.Node, text_length: int = 0) -> None:
    """YamlFault when `root` expands (aliases followed) to more than MAX_VALUES values or to
    scalars of more than MAX_CHARACTERS characters (or twice `text_length`, the text's own,
    when that is more), nests deeper than MAX_DEPTH, or holds an alias of a node containing it
    (it never ends). Each node is sized once (by identity), so the check costs the text's
    size, not the expansion's."""
    size: dict[int, int] = {}
    chars: dict[int, int] = {}
    most = max(MAX_CHARACTERS, 2 * text_length)
    depth: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being sized: met again, an alias of an ancestor
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            chars[key] = (len(node.value) if isinstance(node, yaml.ScalarNode) else 0) + sum(chars[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_.discard(key)
            line = node.start_mark.line + 1
            if size[key] > MAX_VALUES:
                raise YamlFault(line, f"its aliases expand to more than {MAX_VALUES:,} values (a \"billion laughs\")",
                                "write the values out, or alias fewer levels")
            if chars[key] > most:
                raise YamlFault(line, f"its aliases expand to more than {most:,} characters", "alias less")
            if depth[key] > MAX_DEPTH:
                raise YamlFault(line, f"the YAML nests deeper than {MAX_DEPTH} levels", "write it flatter")
            continue
        if key in size:
            continue
        if key in open_:
            raise YamlFault(node.start_mark.line + 1, "an alias refers to a node that contains it: the value never ends",
                            "alias a sibling, not a parent")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in reversed(_children(node)) if id(k) not in size)


def _refuse_duplicate_keys(loader: yaml.SafeLoader, root: yaml.Node) -> None:
    """YamlFault for the first mapping of `root` (document order) holding two equal keys, equal
    as Python dict keys are once built (so `1` and `1.0` are one key, `1` and `"1"` two): the
    key's path and both lines. A node reached again through an alias is checked once."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            children = []
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # the keys a merge brings may be overridden
                    children.append((value, path))
                    continue
                where = (f"{path}." if path else "") + (key.value if isinstance(key, yaml.ScalarNode)
                                                        else "(a complex key)")
                try:
                    earlier = first.setdefault(loader.construct_object(key, deep=True), key)
                except TypeError:  # an unhashable key: construct_document refuses it, with its line
                    earlier = key
                if earlier is not key:
                    raise YamlFault(key.start_mark.line + 1,
                                    f"duplicate key {where} (also on line {earlier.start_mark.line + 1}): a "
                                    "YAML mapping's keys are unique, and only the later one would count",
                                    "merge the two into one")
                children.append((value, where))
            stack.extend(reversed(children))


def _unbuildable(text: str, exc: Exception) -> YamlFault:
    """The scalar of `text` the safe constructor fails on (the first, in document order), as a YamlFault."""
    constructor = yaml.SafeLoader("")
    stack, seen = list(reversed(list(yaml.compose_all(text, Loader=yaml.SafeLoader)))), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:  # an alias of a node already walked (perhaps its own parent)
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node)
            except (ValueError, OverflowError) as why:
                shown = node.value if len(node.value) <= 24 else f"{node.value[:12]}... ({len(node.value)} characters)"
                reason = ("an integer of more than 4300 digits" if "integer string conversion" in str(why)
                          else str(why).splitlines()[0])
                return YamlFault(node.start_mark.line + 1, f"the value {shown} can't be read: {reason}")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return YamlFault(1, str(exc).splitlines()[0])
