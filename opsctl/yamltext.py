"""YAML a person wrote (opsctl.yaml, runbooks), read into plain data with every fault one line.

PyYAML's safe loader raises YAMLError, with a position, for bad syntax, but a bare ValueError,
without one, for a scalar it parses and then cannot build: an integer of more than 4300 digits
(past Python's int-from-text limit, `sys.get_int_max_str_digits`), a date such as 2026-02-30
(breaker 30 F1: a runbook bound of 5000 digits ended `validate` on "unexpected ValueError").
Both are the file's fault: `load` makes each one line naming where it is.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlFault(ValueError):
    """Text that is not YAML opsctl can read: `line` (1-based) and `problem` (one line)."""

    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


def load(text: str) -> Any:
    """`text` as plain data (yaml.safe_load); YamlFault for bad syntax or a value that can't be built."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise YamlFault(mark.line + 1 if mark else 1, str(getattr(exc, "problem", None) or exc)) from None
    except (ValueError, OverflowError) as exc:
        raise _unbuildable(text, exc) from None


def _unbuildable(text: str, exc: Exception) -> YamlFault:
    """The scalar of `text` the safe constructor fails on (the first, in document order), as a YamlFault."""
    constructor = yaml.SafeLoader("")
    stack = [yaml.compose(text)]
    while stack:
        node = stack.pop()
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
