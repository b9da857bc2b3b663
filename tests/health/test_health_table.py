"""The sweep table at 80 columns without a TTY (CI logs): check names, statuses, values and
durations whole, on one line each; only the message wraps (issue 21)."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from opsctl.cli import app
from tests.health.servers import ScriptedServer


def _sweep(tmp_path, names: list[str]):
    target = ScriptedServer([503] * 4)
    try:
        long_conditions = ["[STATUS] == 200", "[BODY].status == ready", "[BODY].components.database == ok"]
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
            "platform": "kubernetes", "health": {"http": [
                {"name": n, "url": f"{target.url}/readyz", "conditions": long_conditions} for n in names]}}}}))
        out = CliRunner().invoke(app, ["--root", str(tmp_path), "health", "--env", "ci", "--check", "*-*",
                                       "--check", "billing-api"], env={"COLUMNS": "80"})
    finally:
        target.close()
    assert out.exit_code == 2, out.output
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, out.stdout
    assert "…" not in out.stdout
    assert out.stdout.count("(None).components.database") == len(names), out.stdout  # no word of a message split
    return lines


def test_sweep_table_keeps_names_statuses_and_figures_whole_at_80_columns(tmp_path):
    names = ["storage-gateway-eu-readiness", "billing-api"]
    lines = _sweep(tmp_path, names)
    for name in names:
        (row,) = [line for line in lines if name in line]
        assert re.search(rf"{re.escape(name)}\s+CRITICAL\s+\d+(\.\d+)? ms\s", row), row
        assert re.search(r"\s\d+$", row.rstrip()), row   # the duration, whole, at the end of its line


def test_a_sweep_too_wide_for_a_table_is_one_block_per_check(tmp_path):
    """With this long a name the message column could hold no more than 25 cells: less than the
    message's longest word, which a table would split; each check is then a block of lines."""
    names = ["storage-gateway-eu-west-1-readiness", "billing-api"]
    lines = _sweep(tmp_path, names)
    for name in names:
        at = next(i for i, line in enumerate(lines) if line.split() == ["check:", name])
        assert lines[at + 1].split() == ["status:", "CRITICAL"]
        assert re.fullmatch(r"value:\s+\d+(\.\d+)? ms", lines[at + 2].strip()), lines[at + 2]
        assert lines[at + 3].strip().startswith("message: failed: [STATUS] (503) == 200;")
        end = next(i for i in range(at, len(lines)) if not lines[i].strip())  # a blank line ends the block
        assert re.fullmatch(r"ms:\s+\d+", lines[end - 1].strip()), lines


def _render(results, width: int = 80) -> str:
    import datetime as dt
    import io

    from rich.console import Console

    from opsctl.cli.health import _print
    from opsctl.health.model import SweepResult

    console = Console(width=width, file=io.StringIO(), color_system=None)
    _print(console, SweepResult(env="local", started_at=dt.datetime(2026, 12, 2, 3, 0, tzinfo=dt.timezone.utc),
                                duration_ms=12, results=results))
    return console.file.getvalue()


def test_a_path_in_a_message_is_never_split_across_lines():
    """A log path or an object name in a message is what an operator copies (breaker 36 F9:
    the standby's log path was cut mid-word at 80 columns)."""
    from opsctl.health.model import CheckResult, Status

    log = "/srv/transcribe/.opsctl/local/logs/postgres-standby.log"
    results = [CheckResult("standby [local]", "postgres", Status.CRITICAL,
                           f"the standby does not replay: read {log} (replay lag unknown)", 12.5, "s", 3),
               CheckResult("redis", "redis", Status.OK, "PONG", 0.4, "ms", 1)]
    text = _render(results)
    assert log in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "CRITICAL" in text and "12.5 s" in text and "PONG" in text


def test_short_messages_keep_the_table():
    from opsctl.health.model import CheckResult, Status

    text = _render([CheckResult("redis", "redis", Status.OK, "PONG in 0.4 ms, 12 keys", 0.4, "ms", 1)])
    (row,) = [line.rstrip() for line in text.splitlines() if line.startswith("redis")]
    assert re.search(r"redis\s+OK\s+0.4 ms\s+PONG in 0.4 ms, 12 keys\s+1$", row), text


def test_a_message_holding_rich_markup_is_printed_as_it_is(tmp_path):
    """A message repeats what a server answered and what opsctl.yaml says; a '[/]' in either
    was taken for Rich markup and the sweep ended in a MarkupError traceback."""
    target = ScriptedServer([503])
    try:
        (tmp_path / "opsctl.yaml").write_text(yaml.safe_dump({"version": 1, "environments": {"ci": {
            "platform": "kubernetes", "health": {"http": [
                {"name": "api", "url": f"{target.url}/readyz", "conditions": ["[BODY].status == [/]"]}]}}}}))
        out = CliRunner().invoke(app, ["--root", str(tmp_path), "health", "--env", "ci", "--check", "api"],
                                 env={"COLUMNS": "80"})
    finally:
        target.close()
    assert out.exit_code == 2, out.output
    assert "[BODY] (broken).status == [/]" in " ".join(out.stdout.split()), out.stdout
