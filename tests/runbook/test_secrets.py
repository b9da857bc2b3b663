"""Secrets stay secret in every derived form (issue 19 §1c): a parameter computed from a
secret is secret; text is masked before it is cut and the piece of a secret left at a cut
is masked; base64 of a longer text holding the secret is masked at all three alignments;
the environment's secret variables are neither handed to shell steps nor shown."""

from __future__ import annotations

import base64
import http.server
import json
import threading

import pytest

from opsctl.cli import app
from opsctl.runbook.secrets import Masker
from tests.runbook.runbook_support import write_runbook
from tests.runbook.runbook_support import run_runbook

SECRET = "v4lue000S3cr3tQz9Lm"


def _pieces(secret: str, size: int = 5) -> list[str]:
    return [secret[i:i + size] for i in range(len(secret) - size + 1)]


def _assert_hidden(texts: dict[str, str], secret: str, size: int = 5) -> None:
    for where, text in texts.items():
        for piece in _pieces(secret, size):
            assert piece not in text, (where, piece)


def test_a_parameter_computed_from_a_secret_is_secret_on_every_path(runner, ops_root, tmp_path, monkeypatch):
    write_runbook(ops_root, "derived", 1, """\
        name: derived
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
          auth: {type: string, default: "Token {{ params.token | upper }}"}
          header: {type: string, default: "{{ params.auth | replace('Token', 'Bearer') }}"}
        steps:
          - id: say
            action: notify
            with: {message: "using {{ params.header }}"}
          - id: show
            action: shell
            with: {command: 'echo "$AUTH"; echo "$HEADER" >&2; exit 3', env: {AUTH: "{{ params.auth }}", HEADER: "{{ params.header }}"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)
    junit = tmp_path / "r.xml"
    dry = [runner.invoke(app, ["runbook", "run", "derived", "--dry-run"]),
           runner.invoke(app, ["runbook", "run", "derived", "--dry-run", "--json"])]
    run = runner.invoke(app, ["--log-format", "json", "runbook", "run", "derived", "--json", "--junit", str(junit)])
    assert run.exit_code == 1, run.output
    doc = json.loads(run.stdout)
    journal = (ops_root / ".opsctl" / "runs" / f"{doc['run_id']}.jsonl").read_text()
    head = json.loads(journal.splitlines()[0])
    assert head["params"]["auth"] == "***" and head["params"]["header"] == "***"
    shown = runner.invoke(app, ["runbook", "history", "--run", doc["run_id"], "--json"])
    assert shown.exit_code == 0, shown.output
    _assert_hidden({"dry table": dry[0].output, "dry json": dry[1].output, "run": run.output, "junit": junit.read_text(),
                    "journal": journal, "history": shown.output}, SECRET.upper())
    assert "***" in doc["steps"][1]["detail"]


def test_a_resumed_run_computes_the_derived_secret_again(runner, ops_root, monkeypatch):
    write_runbook(ops_root, "again", 1, """\
        name: again
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
          auth: {type: string, default: "Token {{ params.token }}"}
        steps:
          - id: once
            action: shell
            with: {command: 'test -e flag || { touch flag; exit 1; }; printf %s "$AUTH" | wc -c', env: {AUTH: "{{ params.auth }}"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)
    first = run_runbook(runner, "again", exit_code=1)
    again = runner.invoke(app, ["runbook", "run", "again", "--resume", first["run_id"], "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["steps"][0]["outputs"]["stdout"] == str(len("Token " + SECRET))


def test_a_failing_shell_step_is_masked_before_its_detail_is_cut(runner, ops_root, monkeypatch):
    # the last 500 characters start inside the secret: cut first, a piece of it survived
    write_runbook(ops_root, "cut", 1, """\
        name: cut
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
        steps:
          - id: fail
            action: shell
            with: {command: 'printf "%s" "$T" >&2; printf "%0490d" 0 >&2; exit 3', env: {T: "{{ params.token }}"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)
    run = runner.invoke(app, ["runbook", "run", "cut", "--json"])
    assert run.exit_code == 1
    detail = json.loads(run.stdout)["steps"][0]["detail"]
    assert detail.startswith("exit 3: ") and detail.endswith("0" * 400)
    _assert_hidden({"detail": detail, "output": run.output}, SECRET)


class _Body(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_an_http_body_is_masked_before_it_is_cut(runner, ops_root, monkeypatch):
    # the first 2000 characters end inside the secret
    handler = type("H", (_Body,), {"body": ("a" * 1992 + SECRET + " tail").encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    write_runbook(ops_root, "body", 1, f"""\
        name: body
        version: 1
        parameters:
          token: {{type: string, secret: true, required: true}}
        steps:
          - id: get
            action: http
            with: {{url: "http://127.0.0.1:{server.server_address[1]}/x"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)
    try:
        run = runner.invoke(app, ["runbook", "run", "body", "--json"])
    finally:
        server.shutdown()
    assert run.exit_code == 0, run.output
    body = json.loads(run.stdout)["steps"][0]["outputs"]["body"]
    assert body.startswith("a" * 1992) and len(body) <= 2000
    _assert_hidden({"body": body}, SECRET)


@pytest.mark.parametrize("prefix", ["", "o:", "op:", "ops:", "user:"])
def test_base64_of_a_longer_text_holding_the_secret_is_masked_at_every_alignment(prefix):
    masker = Masker([SECRET])
    for suffix in ("", "@", ":x", "!!!"):
        encoded = base64.b64encode((prefix + SECRET + suffix).encode()).decode()
        shown = masker.text(f"Authorization: Basic {encoded}")
        assert "***" in shown
        # what is left decodes to at most the two bytes on each side of the masked groups
        left = shown.split("Basic ", 1)[1].split("***")
        assert sum(len(p) for p in left) <= 8 + (len(encoded) - len(base64.b64encode(SECRET.encode())))


def test_basic_auth_built_in_a_shell_step_is_masked(runner, ops_root, monkeypatch):
    write_runbook(ops_root, "basic", 1, """\
        name: basic
        version: 1
        parameters:
          token: {type: string, secret: true, required: true}
        steps:
          - id: header
            action: shell
            with: {command: 'printf "ops:%s" "$T" | base64', env: {T: "{{ params.token }}"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOKEN", SECRET)
    run = runner.invoke(app, ["runbook", "run", "basic", "--json"])
    assert run.exit_code == 0, run.output
    encoded = base64.b64encode(f"ops:{SECRET}".encode()).decode()
    assert encoded not in run.output and encoded[8:20] not in run.output
    assert "***" in json.loads(run.stdout)["steps"][0]["outputs"]["stdout"]


BACKUP_KEY = "bk-7f3a9c1e55d24b0aa1"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
API_KEY = "wk-0d9e8f7a6b5c4d3e2f1a"
VAULT = "vault-material-0a1b2c3d4e"


def test_shell_steps_get_no_secret_environment_and_its_values_are_masked(runner, ops_root, monkeypatch):
    text = (ops_root / "opsctl.yaml").read_text()
    (ops_root / "opsctl.yaml").write_text(text.replace("retention: {keep_last: 7}",
                                                       "retention: {keep_last: 7}\n      key_env: VAULT_MATERIAL"))
    for name, value in (("OPSCTL_BACKUP_KEY", BACKUP_KEY), ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
                        ("OPSCTL_WORKER_API_KEY", API_KEY), ("VAULT_MATERIAL", VAULT)):
        monkeypatch.setenv(name, value)
    write_runbook(ops_root, "envdump", 1, """\
        name: envdump
        version: 1
        steps:
          - id: dump
            action: shell
            with: {command: "env"}
          - id: asked
            action: shell
            with: {command: 'echo "key=$VAULT_MATERIAL aws=$AWS_SECRET_ACCESS_KEY"', pass_env: [VAULT_MATERIAL]}
          - id: leak
            action: notify
            with: {message: "{{ steps.asked.outputs.stdout }}"}
        """)
    run = runner.invoke(app, ["--log-format", "json", "runbook", "run", "envdump", "--json"])
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    dump = doc["steps"][0]["outputs"]["stdout"]
    for name in ("OPSCTL_BACKUP_KEY", "AWS_SECRET_ACCESS_KEY", "OPSCTL_WORKER_API_KEY", "VAULT_MATERIAL"):
        assert f"{name}=" not in dump  # not handed to the shell at all
    assert "PATH=" in dump
    assert doc["steps"][1]["outputs"]["stdout"] == "key=*** aws="  # asked for: given, and masked
    journal = (ops_root / ".opsctl" / "runs" / f"{doc['run_id']}.jsonl").read_text()
    for value in (BACKUP_KEY, AWS_SECRET, API_KEY, VAULT):
        assert value not in run.output and value not in journal


def test_pieces_of_a_secret_at_a_word_edge_are_masked_but_plain_words_stay():
    masker = Masker([SECRET])
    masker.add("Token " + SECRET.upper())  # derived: masked whole, its plain words are not pieces
    cut_by_someone_else = f"error: {SECRET[-9:]}… and {SECRET[:7]}"
    shown = masker.text(cut_by_someone_else)
    _assert_hidden({"cut": shown}, SECRET)
    assert masker.text("Token expired at the edge") == "Token expired at the edge"
    assert masker.text("Token " + SECRET.upper()) == "***"


@pytest.mark.parametrize("value", ["x", "ab", "abc", "  a  ", "a\n\n"])
def test_a_secret_parameter_too_short_to_mask_is_refused(runner, ops_root, monkeypatch, value):
    """Breaker 43 S17: a one-character secret masked every such letter of every output
    (`echo $T; exit 3` showed as `e***it 3`), and hid nothing a guess would not find."""
    write_runbook(ops_root, "short", 1, """\
        name: short
        version: 1
        parameters:
          tok: {type: string, secret: true, required: true}
        steps:
          - id: a
            action: shell
            with: {command: 'echo "$T"; exit 3', env: {T: "{{ params.tok }}"}}
        """)
    monkeypatch.setenv("OPSCTL_PARAM_TOK", value)
    r = runner.invoke(app, ["runbook", "run", "short", "--dry-run"])
    assert r.exit_code == 2, r.output
    assert f"parameter 'tok' is secret and {len(value.strip())} character" in r.stderr and "at least 4" in r.stderr
    assert not (ops_root / ".opsctl" / "runs").exists()
    monkeypatch.setenv("OPSCTL_PARAM_TOK", "abcd")
    assert runner.invoke(app, ["runbook", "run", "short", "--dry-run"]).exit_code == 0
