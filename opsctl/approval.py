"""Who may change what: the one place opsctl asks for approval.

`--yes` or a person at a terminal approves a change; for a destructive change to a
protected environment, its name typed (or `--confirm-env NAME` in CI), never `--yes`
alone. Every command and runbook step asks through this module, so the same refusal has
the same words everywhere:

- `approve`: the decision, with the prompts passed in (tests and other front doors);
- `at_terminal`: `approve` with the real terminal prompts (`terminal()`);
- `confirm`: a plain yes/no for a change that needs no environment check;
- `at_terminal_all`: one change touching several environments at once (the embedded platform
  serves every `platform: local` one): each protected one's name is needed;
- `is_interactive`: whether a person can be asked at all.

Refusals raise `UsageError` (exit 2) and change nothing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from opsctl.errors import UsageError

if TYPE_CHECKING:
    from opsctl.config import Environment

Verb = tuple[str, str, str]
CHANGE: Verb = ("change it", "changing it", "changed")


def is_interactive() -> bool:
    """True when a person can answer a prompt: a TTY on stdin and not in CI (`CI` set to
    1, true or yes, as GitHub Actions, GitLab and most runners do)."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        return False
    return sys.stdin.isatty()


def _no_terminal(question: str) -> UsageError:
    """The refusal when approval is needed and nobody can be asked (CI, no TTY)."""
    return UsageError(f"{question} needs approval: no terminal to ask on, pass --yes")


def _not_approved(question: str) -> UsageError:
    """The refusal when the person answered no."""
    return UsageError(f"{question} not approved; nothing was changed")


def _yes_or_asked(question: str, yes: bool, interactive: bool, ask_yes_no: Callable[[str], bool]) -> None:
    """The last gate of every approval: --yes, or a person's yes at a terminal."""
    if yes:
        return
    if not interactive:
        raise _no_terminal(question)
    if not ask_yes_no(question):
        raise _not_approved(question)


def approve(question: str, env: "Environment | None", *, yes: bool, confirm_env: str | None = None,
            destructive: bool = False, interactive: bool, ask_yes_no: Callable[[str], bool],
            ask_text: Callable[[str], str], verb: Verb = CHANGE) -> None:
    """Return when the change is approved, else raise UsageError.

    `question` names the change ("delete 3 backup(s) from s3://…"); `env` is the
    environment it touches (None: no protection applies); `verb` names the destructive act
    in a protected environment's messages, e.g. ("destroy it", "destroying it", "destroyed").
    In a protected environment a person types its name under `question` (the name alone
    approved changes they were never shown: breaker 55's note on `backup delete`).
    A `confirm_env` given is the environment's name in any environment, protected or not:
    an empty one (an unset CI variable) or another name is refused (breaker 40 P2: both
    were ignored where no protection applied, so the check a pipeline meant was never made).
    """
    from opsctl.errors import not_empty

    not_empty(confirm_env, "--confirm-env", f"give the environment's name ({env.name if env else 'its name'}), "
                                            "or leave it out")
    if confirm_env is not None and env is not None and confirm_env != env.name:
        raise UsageError(f"--confirm-env '{confirm_env}' is not '{env.name}'; nothing was {verb[2]}")
    if destructive and env is not None and env.protected:
        if confirm_env is None:
            if not interactive:
                raise UsageError(f"'{env.name}' is protected: {verb[1]} without a terminal needs "
                                 f"--yes --confirm-env {env.name}")
            typed = ask_text(f"{question}\n'{env.name}' is protected. Type its name to {verb[0]}").strip()
            if typed != env.name:
                raise UsageError(f"typed '{typed}', not '{env.name}'; nothing was {verb[2]}")
            return
        if confirm_env != env.name:
            raise UsageError(f"--confirm-env '{confirm_env}' is not '{env.name}'; nothing was {verb[2]}")
    _yes_or_asked(question, yes, interactive, ask_yes_no)


def terminal() -> dict[str, Any]:
    """The real prompts, as keyword arguments of `approve`: on stderr, default no. The
    question is shown as every printed line is (`output.visible`): text from a runbook, a
    `-p` value or a backup label reaches the terminal as escapes, never as the ESC sequence
    or bidirectional override it holds, so the person approving reads what is asked."""
    import typer

    from opsctl.output import visible

    return {"interactive": is_interactive(),
            "ask_yes_no": lambda q: typer.confirm(visible(q), default=False, err=True),
            "ask_text": lambda q: typer.prompt(visible(q), err=True, default="", show_default=False)}


def at_terminal(question: str, env: "Environment | None", yes: bool, confirm_env: str | None = None,
                destructive: bool = True, verb: Verb = CHANGE) -> None:
    """`approve` with the real terminal prompts."""
    approve(question, env, yes=yes, confirm_env=confirm_env, destructive=destructive, verb=verb, **terminal())


def prune_approval(env: "Environment", yes: bool, confirm_env: str | None,
                   rules_given: bool, doing: str = "pruned") -> Callable[[str], None]:
    """How deleting backups is approved, for `backup prune` and the runbook's prune step alike.
    Rules given for the run (--keep-*) on a protected environment need its name too
    (--confirm-env, or typed at a terminal), as a restore over it does: they may delete what the
    committed retention keeps (breaker 42 R11). The environment's own `backup.retention`
    (reviewed in opsctl.yaml) needs --yes or a person's yes, so the scheduled nightly prunes by
    it. A `confirm_env` given must name the environment either way (a pipeline's check is made,
    never ignored)."""
    from opsctl.errors import not_empty

    if confirm_env is not None:
        not_empty(confirm_env, "--confirm-env", "give the environment's name, or leave it out")
        if confirm_env != env.name:
            raise UsageError(f"--confirm-env '{confirm_env}' is not '{env.name}', the environment {doing}; nothing "
                             "was deleted")
    verb = ("delete its backups", "deleting its backups", "deleted")
    if rules_given:
        return lambda question: at_terminal(question, env, yes, confirm_env, verb=verb)
    return lambda question: confirm(question, yes)


def purge_approval(project: Any, yes: bool, confirm_envs: list[str] | None,
                   purge: bool) -> Callable[[str], None]:
    """How deleting the embedded platform's data is approved (`local down --purge`,
    opsctl.local.platform.down): the environments it serves, every `platform: local` one of
    `project` (one database, Redis and S3 hold them all: platform.served), each protected one
    needing its name (`confirm_envs`, or typed at a terminal), never --yes alone. UsageError at
    once for `confirm_envs` without `purge`: a plain stop deletes nothing, and a pipeline's
    check that would be ignored is refused instead."""
    from opsctl.local.platform import served

    if confirm_envs and not purge:
        raise UsageError("--confirm-env is for --purge (deleting the data); a plain 'local down' keeps it")
    envs = served(project)
    verb = ("delete its data", "deleting its data", "deleted")
    return lambda question: at_terminal_all(question, envs, yes, confirm_envs, verb=verb)


def confirm(question: str, yes: bool) -> None:
    """A yes/no approval: `--yes`, or a person's answer at a terminal; never a CI prompt."""
    at_terminal(question, None, yes, destructive=False)


def approve_all(question: str, envs: "list[Environment]", *, yes: bool, confirm_envs: list[str] | None = None,
                interactive: bool, ask_yes_no: Callable[[str], bool], ask_text: Callable[[str], str],
                verb: Verb = CHANGE) -> None:
    """`approve` for one change that touches every environment in `envs` (`local down --purge`:
    the embedded platform's data is that of every `platform: local` environment): each
    protected one needs its name, from `confirm_envs` (`--confirm-env`, repeated) or typed at a
    terminal, never `--yes` alone; a name given that is none of `envs` is refused (a pipeline's
    check is made, not ignored); then `--yes` or a yes at the terminal. With no protected
    environment this is `confirm`'s yes/no."""
    from opsctl.errors import not_empty

    given = list(confirm_envs or [])
    names = {e.name for e in envs}
    for name in given:
        not_empty(name, "--confirm-env", "give an environment's name, or leave it out")
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise UsageError(f"--confirm-env '{name}' is not one of the environments this touches ({known}); "
                             f"nothing was {verb[2]}")
    protected = [e for e in envs if e.protected]
    missing = [e.name for e in protected if e.name not in given]
    if missing:
        if not interactive:
            needed = " ".join(f"--confirm-env {e.name}" for e in protected)
            raise UsageError(f"{question}: protected environment(s) {', '.join(missing)}; {verb[1]} without a "
                             f"terminal needs --yes {needed}")
        for name in missing:  # each typed at the terminal: as `approve`, the typed names approve it
            typed = ask_text(f"{question}\n'{name}' is protected. Type its name to {verb[0]}").strip()
            if typed != name:
                raise UsageError(f"typed '{typed}', not '{name}'; nothing was {verb[2]}")
        return
    _yes_or_asked(question, yes, interactive, ask_yes_no)


def at_terminal_all(question: str, envs: "list[Environment]", yes: bool, confirm_envs: list[str] | None = None,
                    verb: Verb = CHANGE) -> None:
    """`approve_all` with the real terminal prompts."""
    approve_all(question, envs, yes=yes, confirm_envs=confirm_envs, verb=verb, **terminal())
