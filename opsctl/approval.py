"""Who may change what: `--yes` or a person at a terminal; for destructive changes to a
protected environment, its name typed (or `--confirm-env NAME` in CI), never `--yes` alone."""

from __future__ import annotations

from typing import Callable

from opsctl.config import Environment
from opsctl.errors import UsageError


def approve(question: str, env: Environment, *, yes: bool, confirm_env: str | None, destructive: bool,
            interactive: bool, ask_yes_no: Callable[[str], bool], ask_text: Callable[[str], str],
            verb: tuple[str, str, str] = ("change it", "changing it", "changed")) -> None:
    """`verb` names the destructive act in a protected environment's messages:
    ("destroy it", "destroying it", "destroyed")."""
    if destructive and env.protected:
        if confirm_env is None:
            if not interactive:
                raise UsageError(f"'{env.name}' is protected: {verb[1]} without a terminal needs "
                                 f"--yes --confirm-env {env.name}")
            typed = ask_text(f"'{env.name}' is protected. Type its name to {verb[0]}").strip()
            if typed != env.name:
                raise UsageError(f"typed '{typed}', not '{env.name}'; nothing was {verb[2]}")
            return
        if confirm_env != env.name:
            raise UsageError(f"--confirm-env '{confirm_env}' is not '{env.name}'; nothing was {verb[2]}")
    if yes:
        return
    if not interactive:
        raise UsageError(f"{question} needs approval: no terminal to ask on, pass --yes")
    if not ask_yes_no(question):
        raise UsageError(f"{question} not approved; nothing was changed")


def at_terminal(question: str, env: Environment, yes: bool, confirm_env: str | None = None,
                destructive: bool = True, verb: tuple[str, str, str] = ("change it", "changing it", "changed")) -> None:
    """`approve` with the real terminal prompts."""
    import typer

    from opsctl.output import is_interactive

    approve(question, env, yes=yes, confirm_env=confirm_env, destructive=destructive, verb=verb,
            interactive=is_interactive(),
            ask_yes_no=lambda q: typer.confirm(q, default=False, err=True),
            ask_text=lambda q: typer.prompt(q, err=True, default="", show_default=False))
