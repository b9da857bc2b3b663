"""The one redaction step: passwords in URLs and conninfo never survive into output."""

import pytest

from opsctl.redact import credentials, redact, scrub


@pytest.mark.parametrize("text, secret", [
    ('invalid URI query parameter: "postgresql://postgres:Pa55@w0rd@127.0.0.1:5432/x?ssl=z"', "Pa55@w0rd"),
    ("connection to server failed: host=db password='a secret' user=app", "a secret"),
    ("host=db password=hunter2 dbname=x", "hunter2"),
    ("Error 111 connecting to redis://:tok3n@cache:6379/0.", "tok3n"),
    ("https://user:pw%40x@example.com/path?token=abc&x=1", "pw%40x"),
    ("GET https://example.com/hook?token=abc123 returned 404", "abc123"),
])
def test_credentials_masks_every_form(text, secret):
    out = credentials(text)
    assert secret not in out
    assert "***" in out


def test_credentials_keeps_what_says_which_connection():
    out = credentials("could not connect to postgresql://app:pw@db.internal:5432/transcribe")
    assert out == "could not connect to postgresql://app:***@db.internal:5432/transcribe"


def test_redact_and_scrub_hide_a_known_secret():
    hook = "https://hooks.slack.com/services/T0/B0/XyZ"
    assert redact(hook) == "https://hooks.slack.com/***"
    assert scrub(f"POST {hook} failed", hook) == "POST https://hooks.slack.com/*** failed"
    assert credentials(None) == ""


@pytest.mark.parametrize("url, password", [
    ('postgresql://app:"XyZzy42"@[::1/x', '"XyZzy42"'),
    ("postgresql://app:a bXyZzy42@127.0.0.1:5/t", "a bXyZzy42"),
    ("postgresql://app:p%ZZXyZzy42@127.0.0.1:5/t", "p%ZZXyZzy42"),
    ("postgresql://app:p@ss@db/t", "p@ss"),
    ("postgresql://app@db/t?sslmode=x&password=XyZzy42", "XyZzy42"),
    ("postgresql://db/t", None),
    ("redis://:tok3n@cache:6379/0", "tok3n"),
])
def test_url_password_reads_malformed_urls_too(url, password):
    from opsctl.redact import url_password

    assert url_password(url) == password


MALFORMED = ['postgresql://app:"XyZzy42"@[::1/x',
             "postgresql://app:a bXyZzy42@[::1/transcribe",
             "postgresql://app:p%ZZXyZzy42@127.0.0.1:1/t",
             "postgresql://app@127.0.0.1:1/t?password=XyZzy42&sslmode=zz",
             # breaker 53 F2: an '@' or '/' left unencoded in the password
             "postgresql://app:p@ss#XyZzy42@127.0.0.1:1/t",
             "postgresql://app:XyZzy42/pass@127.0.0.1:1/t",
             # breaker 54 F8: a key=value conninfo, its password unquoted with a space in it
             "host=127.0.0.1 port=1 user=app password=Hunter2 XyZzy42 dbname=t"]


@pytest.mark.parametrize("url", MALFORMED)
@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_a_password_libpq_repeats_on_its_own_never_reaches_output(runner, tmp_path, monkeypatch, url, flags):
    """libpq quotes a malformed password alone ("unexpected spaces found in "a b…""): only
    knowing the secret masks it, so the resolver remembers every URL password it hands out."""
    import base64
    import os

    from opsctl.cli import app

    (tmp_path / "opsctl.yaml").write_text(
        "version: 1\nproject: t\nenvironments:\n  side:\n    platform: kubernetes\n"
        "    kubernetes: {context: none, namespace: t}\n"
        "    database: {url_env: SIDE_DATABASE_URL}\n    redis: {url_env: SIDE_REDIS_URL}\n"
        "    buckets: {audio: a, backups: b}\n"
        f"    backup: {{repository: 'file://{tmp_path}/repo'}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIDE_DATABASE_URL", url)
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", base64.b64encode(os.urandom(32)).decode())
    for argv in (["backup", "create", "--env", "side", "--type", "db", *flags],
                 ["--log-format", "json", "backup", "create", "--env", "side", "--type", "db", *flags]):
        result = runner.invoke(app, argv)
        assert result.exit_code in (1, 2), result.output
        assert "opsctl: error:" in result.output
        assert "XyZzy42" not in result.output


@pytest.mark.parametrize("argv", [["health", "--env", "side", "--check", "postgres"],
                                  ["health", "--env", "side", "--check", "postgres", "--json"],
                                  ["backup", "create", "--env", "side", "--type", "db"]])
def test_a_url_libpq_would_misread_is_refused_naming_its_variable(runner, tmp_path, monkeypatch, argv):
    """Breaker 53 F2: with `p@ss#...SECRET@host` libpq took `ss#...SECRET@host` for the host name
    and printed it (health, --json, backup create): 13 of 15 characters of the password. The
    URL is refused before any connection, in one line naming the variable, never its value."""
    from opsctl.cli import app

    (tmp_path / "opsctl.yaml").write_text(
        "version: 1\nproject: t\nenvironments:\n  side:\n    platform: kubernetes\n"
        "    kubernetes: {context: none, namespace: t}\n"
        "    database: {url_env: SIDE_DATABASE_URL}\n    buckets: {audio: a, backups: b}\n"
        f"    backup: {{repository: 'file://{tmp_path}/repo'}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIDE_DATABASE_URL", "postgresql://transcribe:p@ss#w0rdXyZzy42@127.0.0.1:1/transcribe")
    monkeypatch.setenv("OPSCTL_BACKUP_KEY", "A" * 43 + "=")
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "XyZzy42" not in result.output and "w0rd" not in result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "$SIDE_DATABASE_URL" in line and "%40" in line, line


@pytest.mark.parametrize("url", ["postgresql://postgres:2024/Secretpw@127.0.0.1:51015/transcribe",
                                 "postgresql://app:2024/Secretpw@db:5432", "postgresql://app:7/pw@db/x",
                                 "postgres://app:2024/pw@db.example.com/x?sslmode=require"])
def test_a_password_of_digits_then_a_slash_is_refused(url):
    """Breaker 54 F8b: `app:2024/pw@db:5432/x` passed the check; libpq read host `app`, port
    2024 and the database `pw@db:5432/x`, a piece of the password in every error naming it."""
    from opsctl.endpoints import check_database_url
    from opsctl.errors import UsageError

    with pytest.raises(UsageError, match=r"^\$V: a '/' in its password is not percent-encoded") as caught:
        check_database_url(url, "V")
    assert "pw" not in str(caught.value).lower().replace("password", "") and "%2F" in str(caught.value)


@pytest.mark.parametrize("url", ["postgresql://app:pw@db:5432/x", "postgresql://db:5432/d@b",
                                 "postgresql://db:5432/team@home", "postgresql://db/a@b?sslmode=require",
                                 "postgresql://app:p%40ss%2F@[::1]:5432/x", "postgresql://[::1]:5432/a@b",
                                 "postgresql://app@db/x", "host=db password=a@b/c", "postgres://u:p#x@db/x",
                                 "postgresql:///x?host=/tmp&password=a@b", "postgresql://u:p@h1:5432,h2:5433/x"])
def test_urls_libpq_reads_as_written_are_taken(url):
    from opsctl.endpoints import check_database_url

    check_database_url(url, "V")


@pytest.mark.parametrize("url, shown", [
    ("https://api.telegram.org/bot123:XyZzy42/getMe", "https://api.telegram.org/***"),
    ("https://discord.com/api/v10/webhooks/1/XyZzy42", "https://discord.com/***"),
    ("https://hooks.slack.com./services/T0/B0/XyZzy42", "https://hooks.slack.com./***"),
    ("http://127.0.0.1:8080/readyz?code=XyZzy42", "http://127.0.0.1:8080/readyz?***"),  # a probe's path stays
])
def test_a_probe_target_keeps_its_path_unless_the_path_is_the_secret(url, shown):
    """`redact(keep_path=True)` names a health check's target; a webhook whose path is its
    secret (tester's P7: Telegram's /bot<token>/, Discord's /api/v10/webhooks/) loses it."""
    assert redact(url, keep_path=True) == shown


def test_a_key_escaped_in_part_is_masked_where_it_sits_and_the_rest_stays_masked(monkeypatch):
    """Breaker 48 F1 and 49 F1, F2: a key echoed with one character escaped (System.Text.Json's
    \\u002B, an HTML &#43;, escaped again inside a JSON log line, percent-encoded three times)
    is masked; masking it no longer decodes the whole text, which had shown a percent-encoded
    password beside it in clear."""
    from opsctl import redact

    monkeypatch.setattr(redact, "_known", set())
    redact.remember("Zq9+Lx/w8Kp=Ab")
    cases = {
        "auth Zq9\\u002BLx/w8Kp=Ab failed for postgresql://app:pa%20ss%2Fw0rd@db:5432/x":
            "auth *** failed for postgresql://app:***@db:5432/x",
        "x Zq9\\u002BLx/w8Kp=Ab y ?token=TOPSECRET%20PART2": "x *** y ?token=***",
        'log {"body": "Zq9\\\\u002BLx/w8Kp=Ab"}': 'log {"body": "***"}',
        "html Zq9&amp;amp;#43;Lx/w8Kp=Ab end": "html *** end",
        "pct Zq9%25252BLx/w8Kp=Ab end": "pct *** end",
        "js Zq9+Lx\\/w8Kp\\x3dAb end": "js *** end",
        "no key: 5% &amp; \\\\ %41 \\u0041": "no key: 5% &amp; \\\\ %41 \\u0041",
    }
    for text, expected in cases.items():
        assert redact.credentials(text) == expected, text


@pytest.mark.parametrize("text", [
    "x Zq9\\053Lx/w8Kp=Ab y",          # octal: C, shells' $'...', PostgreSQL E'' strings
    "x Zq9\\U0000002BLx/w8Kp=Ab y",    # Python's and C's 8-digit escape
    "x Zq9\\u{2B}Lx/w8Kp=Ab y",        # JavaScript, Rust, Swift
    "x Zq9=2BLx/w8Kp=3DAb y",           # quoted-printable (a mail or a MIME part)
    "x Zq9=2BLx/w8K=\r\np=3DAb y",      # ... with a soft line break inside the key
    "x Zq9+Lx/w8\nKp=Ab y",             # a key wrapped onto the next line
    "x Zq9+Lx/w8\r\n    Kp=Ab y",       # ... with CRLF and indentation
    "x Zq9+Lx/w8\\r\\n Kp=Ab y",         # breaker 52 K6: the wrap escaped, inside a JSON string
    "x Zq9+Lx/w8\\nKp=Ab y",              # ... or a repr
    "x Zq9=2BLx/w8K=\\r\\np=3DAb y",      # a soft line break escaped (a MIME body in a JSON event)
    "x Zq9%u002BLx/w8Kp=Ab y",            # IIS's %uXXXX
    "x Zq9\\x{2B}Lx/w8Kp=Ab y",           # Perl's \x{...}
    "x Zq9&#00000043;Lx/w8Kp=Ab y",       # a character reference with leading zeros
])
def test_a_key_escaped_in_the_other_ways_servers_write_it_is_masked(monkeypatch, text):
    """Breaker 49 F2 (left open in session 28) and 52 K6: octal, `\\U`, `\\u{}`, `\\x{}`, `%u`,
    quoted-printable and line-wrapped spellings of a key (the wrap written or escaped) showed it
    readable."""
    from opsctl import redact

    monkeypatch.setattr(redact, "_known", set())
    redact.remember("Zq9+Lx/w8Kp=Ab")
    assert redact.credentials(text) == "x *** y"


def test_the_readings_leave_ordinary_text_and_keys_that_look_escaped_alone(monkeypatch):
    """`=XX` is ordinary text outside quoted-printable, so it is a reading of its own: a key
    holding `=4A` and escaped elsewhere is still found, and text with no key is unchanged."""
    from opsctl import redact

    monkeypatch.setattr(redact, "_known", set())
    redact.remember("abc=4Adef+xyz")
    assert redact.credentials("k abc=4Adef\\u002Bxyz e") == "k *** e"
    assert redact.credentials("k abc=3D4Adef=2Bxyz e") == "k *** e"  # QP writes its = as =3D
    plain = "size=20 a\nb \\053 =3D %41 \\u{41} \\U00000041"
    assert redact.credentials(plain) == plain


@pytest.mark.parametrize("url", ["postgresql://app:Tr0ub4dor#XyZzy42@127.0.0.1:5432/t",
                                 "postgresql://app:Tr0ub4dor?XyZzy42@127.0.0.1:5432/t",
                                 "postgres://app:p%23XyZzy42@127.0.0.1/t?sslmode=disable",
                                 "postgresql://app:XyZzy42@127.0.0.1/t",
                                 "postgresql://app@127.0.0.1/t?password=XyZzy42",
                                 "host=127.0.0.1 user=app password=XyZzy42 dbname=t"])
def test_a_child_gets_the_password_in_its_environment_never_on_its_command_line(url):
    """Breaker 54 F2: urllib ends a URL's authority at '#' or '?', libpq does not: with such a
    password the whole URL went onto pg_dump's and psql's command line (visible in ps)."""
    from opsctl.backup.postgres import client, params

    conninfo, env = client(url)
    assert "XyZzy42" not in conninfo, conninfo
    assert "XyZzy42" in env["PGPASSWORD"]
    assert params(conninfo).get("user") == "app" and params(conninfo).get("dbname") == "t"


@pytest.mark.parametrize("url", MALFORMED)
def test_no_part_of_a_malformed_password_reaches_a_health_report(runner, tmp_path, monkeypatch, url):
    """The postgres check's message goes to the table, --json, JUnit, the history and alerts."""
    from opsctl.cli import app

    (tmp_path / "opsctl.yaml").write_text(
        "version: 1\nproject: t\nenvironments:\n  side:\n    platform: kubernetes\n"
        "    kubernetes: {context: none, namespace: t}\n"
        "    database: {url_env: SIDE_DATABASE_URL}\n    buckets: {audio: a, backups: b}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIDE_DATABASE_URL", url)
    junit = tmp_path / "h.xml"
    for argv in (["health", "--env", "side", "--check", "postgres"],
                 ["health", "--env", "side", "--check", "postgres", "--json", "--junit", str(junit)]):
        result = runner.invoke(app, argv)
        assert result.exit_code in (2, 3), result.output
        assert "XyZzy42" not in result.output
    assert not junit.exists() or "XyZzy42" not in junit.read_text()
