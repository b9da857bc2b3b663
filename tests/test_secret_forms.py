"""The forms a secret takes in a URL, and report paths that are URLs (tester's P7, P8).

DESIGN.md, Conventions: a secret never reaches a command line, a log, an output or a file
others can read. Found by trying the forms a user pastes: an Azure Function's health URL
(`?code=`), `?access_key=`, `?jwt=`, a Slack webhook written with its FQDN's trailing dot,
Discord's versioned `/api/v10/webhooks/` path and a Telegram bot URL all loaded from
opsctl.yaml and `config show` printed them in clear; `opsctl health --history
'http://u:pw@host/'` wrote a file whose name held the password. Driven through the CLI, as a
user meets them: one line, exit 2, the secret never repeated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opsctl.cli import app

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("OPSCTL_ROOT", "OPSCTL_ENV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _write(root: Path, body: str) -> None:
    (root / "opsctl.yaml").write_text(
        "version: 1\nenvironments:\n  staging:\n    platform: kubernetes\n    " + body + "\n")


def _one_error_line(result) -> str:
    """The only line of stderr: `opsctl: error: ...`, exit 2, nothing on stdout."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("opsctl: error: "), result.stderr
    assert not result.stdout.strip(), result.stdout
    return lines[0]


def _refused_at_load(runner, root, body: str, key: str, secret: str) -> str:
    _write(root, body)
    for args in (["config", "show", "--env", "staging"], ["config", "show", "--env", "staging", "--json"]):
        line = _one_error_line(runner.invoke(app, args))
        assert f"environments.staging.{key}" in line and "opsctl.yaml is committed" in line, line
        assert secret not in line, line
    return line


# --- P7: query parameters named like a secret -----------------------------------------------------

# (parameter as written, the source of the name) - each loaded before, printed by `config show`
NEW_PARAMS = [
    ("code", "Azure Functions function key"),
    ("access_key", "an access key"),
    ("jwt", "a JSON Web Token"),
    ("api-key", "API keys, '-' spelling"),
    ("X-API-Key", "API keys as the header's name"),
    ("pwd", "ODBC PWD"),
    ("PWD", "ODBC PWD, upper case"),
    ("Ocp-Apim-Subscription-Key", "Azure API Management"),
    ("subscription-key", "Azure API Management"),
    ("x-functions-key", "Azure Functions"),
]
# refused before too: guards that the list, rewritten as one with sources, still holds them
OLD_PARAMS = ["key", "api_key", "apikey", "API_KEY", "access_token", "auth", "password", "passwd", "secret",
              "client_secret", "signature", "sig", "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token",
              "X-Goog-Signature", "X-Goog-Credential", "session", "private_token", "token"]


@pytest.mark.parametrize("name", [n for n, _ in NEW_PARAMS], ids=[n for n, _ in NEW_PARAMS])
def test_a_check_url_with_a_secret_parameter_is_refused_at_load(runner, root, name):
    line = _refused_at_load(runner, root, f'health: {{http: [{{name: api, url: "http://127.0.0.1:9/health?'
                                          f'full=1&{name}=CHECKSECRET1"}}]}}', "health.http.0.url", "CHECKSECRET1")
    assert f"parameter '{name}'" in line and "needs no secret" in line, line


def test_the_testers_check_url_is_refused_naming_neither_value(runner, root):
    _refused_at_load(runner, root, 'health: {http: [{name: api, url: "http://127.0.0.1:9/health?code=CHECKSECRET1'
                                   '&access_key=CHECKSECRET2"}]}', "health.http.0.url", "CHECKSECRET")


@pytest.mark.parametrize("name", OLD_PARAMS)
def test_the_parameters_refused_before_still_are(runner, root, name):
    _refused_at_load(runner, root, f'health: {{http: [{{name: api, url: "https://x.example.com/h?{name}=OLDSECRET1"}}]}}',
                     "health.http.0.url", "OLDSECRET1")


def test_a_session_in_the_path_is_refused(runner, root):
    """Java servlets put the session in the path (`;jsessionid=`), not the query."""
    line = _refused_at_load(runner, root, 'health: {http: [{name: api, url: "https://x.example.com/app;'
                                          'jsessionid=SESSSECRET1/health"}]}', "health.http.0.url", "SESSSECRET1")
    assert "in its path" in line, line


@pytest.mark.parametrize("url", [
    "https://x.example.com/health?sv=2022-11-02",  # an Azure SAS's signed version: a date, no secret
    "https://x.example.com/health?sort_key=name&zipcode=12345&status_code=200&monkey=1",
    "https://x.example.com/health?query=up&full=1",
])
def test_parameters_that_hold_no_secret_still_load(runner, root, url):
    _write(root, f'health: {{http: [{{name: api, url: "{url}"}}]}}')
    result = runner.invoke(app, ["config", "show", "--env", "staging", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["health"]["http"][0]["url"] == url


# --- P7: webhooks whose path is the secret --------------------------------------------------------

WEBHOOKS = [
    "https://hooks.slack.com./services/T0/B0/HOOKSECRET1",  # the FQDN's trailing dot
    "https://HOOKS.Slack.COM./services/T0/B0/HOOKSECRET1",
    "https://\uff48\uff4f\uff4f\uff4b\uff53.slack.com/services/T0/B0/HOOKSECRET1",  # fullwidth: IDNA folds it
    "https://hooks\u3002slack\u3002com/services/T0/B0/HOOKSECRET1",  # '。' dots, as httpx reads them
    "https://discord.com/api/v10/webhooks/123/HOOKSECRET1",  # Discord's versioned path
    "https://ptb.discord.com/api/v9/webhooks/123/HOOKSECRET1",
    "https://discord.com//api/./webhooks/123/HOOKSECRET1",  # routed as /api/webhooks/
    "https://api.telegram.org/botHOOKSECRET1/sendMessage",
    "https://api.telegram.org./bot123:HOOKSECRET1/sendMessage",
    "https://outlook.office.com/webhook/HOOKSECRET1/IncomingWebhook/x/y",  # Office 365 connector
    "https://maker.ifttt.com/trigger/backup_failed/with/key/HOOKSECRET1",
    "https://open.feishu.cn/open-apis/bot/v2/hook/HOOKSECRET1",
    "https://events.pagerduty.com/integration/HOOKSECRET1/enqueue",
]


@pytest.mark.parametrize("url", WEBHOOKS)
def test_a_webhook_url_whose_path_is_its_secret_is_refused(runner, root, url):
    line = _refused_at_load(runner, root, f'health: {{sinks: [{{type: webhook, url: "{url}"}}]}}',
                            "health.sinks.0.url", "HOOKSECRET1")
    assert "in its path" in line and "url_env" in line, line


@pytest.mark.parametrize("url", [
    "https://contoso.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/OLDHOOK1",  # Teams
    "https://chat.googleapis.com/v1/spaces/AAA/messages?key=OLDHOOK1&token=OLDHOOK1",  # Google Chat
    "https://discord.com/api/webhooks/123/OLDHOOK1",
    "https://hooks.zapier.com/hooks/catch/1/OLDHOOK1",
    "https://canary.discordapp.com/api/webhooks/123/OLDHOOK1",
])
def test_the_webhooks_refused_before_still_are(runner, root, url):
    _refused_at_load(runner, root, f'health: {{sinks: [{{type: webhook, url: "{url}"}}]}}',
                     "health.sinks.0.url", "OLDHOOK1")


def test_a_generic_hooks_path_loads_and_config_show_masks_it(runner, root):
    """Mattermost's and Rocket.Chat's `/hooks/<id>` is on any host, where `/hooks/` also names
    receivers with no secret: loaded (no rule tells them apart), its path masked when shown."""
    _write(root, 'health: {sinks: [{type: webhook, url: "https://chat.example.com/hooks/MMSECRET1"},\n'
                 '                       {type: webhook, url: "https://discord.com/"}]}')
    result = runner.invoke(app, ["config", "show", "--env", "staging", "--json"])
    assert result.exit_code == 0, result.output
    assert "MMSECRET1" not in result.output
    sinks = json.loads(result.stdout)["health"]["sinks"]
    assert [s["url"] for s in sinks] == ["https://chat.example.com/***", "https://discord.com"]


# --- P7: what `config show` prints goes through the same rule -----------------------------------

SHOWN = ("probe http://127.0.0.1:9/health?code=SHOWSECRET1&access_key=SHOWSECRET2&full=1 "
         "and http://h/x?jwt=SHOWSECRET3&api-key=SHOWSECRET4&X-Goog-Signature=SHOWSECRET5&session=SHOWSECRET6 "
         "and https://discord.com/api/v10/webhooks/1/SHOWSECRET7 https://api.telegram.org/botSHOWSECRET8/getMe "
         "https://hooks.slack.com./services/T0/B0/SHOWSECRET9 http://h/x#pwd=SHOWSECRET10 "
         "env aws_secret_access_key=SHOWSECRET11 PGPASSWORD=SHOWSECRET12 db_password=SHOWSECRET13")


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_config_show_masks_every_secret_form_a_url_setting_refuses(runner, root, flags):
    """A free-text setting may quote such a URL (a description, a PromQL query): `config show`
    passes every string through redact.masked, whose URL rule is url_secret's own."""
    _write(root, f'description: "{SHOWN}"')
    result = runner.invoke(app, ["config", "show", "--env", "staging", *flags])
    assert result.exit_code == 0, result.output
    assert "SHOWSECRET" not in result.output, result.output
    if flags:
        shown = json.loads(result.stdout)["description"]
        assert "health?code=***&access_key=***&full=1" in shown, shown  # what is no secret stays
        assert "https://discord.com/***" in shown and "https://api.telegram.org/***" in shown, shown


def test_error_words_that_are_no_secret_stay_readable(runner, root):
    """Outside a URL `key=` is an S3 object key, `code=` an exit code and `PWD=` a shell's
    folder: left as written (a guard: these were left before too)."""
    text = "exit code=3 key=backups/2024/x.tar AWS_ACCESS_KEY_ID=AKIAEXAMPLE PWD=/home/ci bypass=1"
    _write(root, f'description: "{text}"')
    result = runner.invoke(app, ["config", "show", "--env", "staging", "--json"])
    assert json.loads(result.stdout)["description"] == text


# --- P8: a report path that is a URL ---------------------------------------------------------------

URL_PATHS = ["http://u:s3cr3tpw@x/", "http://u:s3cr3tpw@x/r.xml", "https://x/r.xml?token=s3cr3tpw",
             "s3://bucket/s3cr3tpw/r.xml"]


@pytest.mark.parametrize("option", ["--history", "--junit"])
@pytest.mark.parametrize("value", URL_PATHS)
def test_a_health_report_path_that_is_a_url_is_refused(runner, root, option, value):
    (root / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"e": {"platform": "kubernetes"}}}))
    line = _one_error_line(runner.invoke(app, ["health", "--env", "e", "--check", "backup age", option, value]))
    assert f"opsctl: error: {option} " in line and "is a URL; reports are local files" in line, line
    assert "s3cr3tpw" not in line, line
    assert sorted(p.name for p in root.iterdir()) == ["opsctl.yaml"]  # no 'http:' folder, no file


@pytest.mark.parametrize("option", ["--junit", "--html", "--csv"])
def test_a_loadtest_report_path_that_is_a_url_is_refused(runner, root, option):
    import shutil

    shutil.copy(REPO / "opsctl.yaml", root / "opsctl.yaml")
    line = _one_error_line(runner.invoke(app, ["loadtest", "run", "--env", "local", option,
                                               "https://u:s3cr3tpw@reports.example.com/r"]))
    assert "https://reports.example.com/*** is a URL; reports are local files" in line, line
    assert sorted(p.name for p in root.iterdir()) == ["opsctl.yaml"]


def test_a_drill_report_path_that_is_a_url_is_refused_before_the_drill(root):
    """Checked directly, as tests/test_empty_values.py does: the command needs a platform first."""
    import shutil

    from opsctl.config import load_project
    from opsctl.errors import UsageError
    from opsctl.pitr import drill

    shutil.copy(REPO / "opsctl.yaml", root / "opsctl.yaml")
    project = load_project(root)
    with pytest.raises(UsageError, match=r"^--metrics-file ftp://host/\*\*\* is a URL") as refused:
        drill.drill(project, project.env("local"), metrics_path="ftp://u:s3cr3tpw@host/drill.prom")
    assert "s3cr3tpw" not in str(refused.value)


def test_local_paths_with_colons_are_still_reports(root):
    from opsctl.files import report_path

    for name in ("reports/run-10:00/health.xml", "C:/ci/health.xml", "a:b.xml"):
        assert report_path(name, "--junit") == root / name
