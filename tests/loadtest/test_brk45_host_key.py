"""Breaker 45's load-test findings, as kinds of fault:

F5  the API key in the `--host` path was printed raw on the console, in the JUnit and HTML
    reports and in the saved run; a password holding '/' moved 'user:pass@' into the path,
    and the 'bad port' line showed 17 characters of it. A host holding a key the users send,
    in any form opsctl masks, or an '@' anywhere, is refused: exit 2, one line, the key never
    echoed, nothing written.
F11 a short key (`rate`, `2000`) masked the user's own SLO text in the last line only
    (`error_***<5%`), while the table above showed it: the verdict is built from masked
    failure texts and is written as it is.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from loadtest_support import opsctl
from opsctl.config import load_project
from opsctl.loadtest import history
from test_breaker37 import _one_line

KEY = "Sk-LoadTest_Key+9/Zq=Xy7"


def _nothing_written(ops_root, reports):
    assert not reports.exists() or not any(reports.iterdir())
    saved = history.folder(load_project(ops_root))
    assert not saved.exists() or not any(saved.iterdir())


@pytest.mark.parametrize("url", [
    "http://{hp}/{key}",                      # the key as the path
    "http://{hp}/api/{key}/v1",               # ... inside it
    "http://{hp}/{lower}",                    # in another letter case
    "http://{hp}/{encoded}",                  # percent-encoded
    "http://u:{key}@{hp}",                    # a password holding '/': 'u:Sk-…+9' is the authority
    # breaker 47 F2: partly percent-encoded (a router decodes it before routing), and fullwidth
    "http://{hp}/{partly}",
    "http://{hp}/%{first:02X}{rest}",
    "http://{hp}/{fullwidth}",
    "http://{hp}:99999/{partly}",             # a bad port too: the key is named first, not the URL echoed
    # breaker 48 F2: split by a character IDNA drops or a blank (raw or percent-encoded)
    "http://{hp}/{soft}", "http://{hp}/{zwsp_encoded}", "http://{hp}/{tab_encoded}",
    "http://{hp}/%u{first:04X}{rest}",        # IIS's %uXXXX (breaker 49 F8)
])
@pytest.mark.parametrize("variable", ["LOADTEST_API_KEY", "OPSCTL_WORKER_API_KEY"])
def test_a_host_holding_the_api_key_is_refused_and_never_shown(ops_root, http_server, monkeypatch,
                                                                url, variable):
    monkeypatch.setenv(variable, KEY)
    reports = ops_root / "reports"
    host = url.format(hp=http_server, key=KEY, lower=KEY.lower(), encoded=quote(KEY, safe=""),
                      partly=KEY.replace("-", "%2D", 1), first=ord(KEY[0]), rest=quote(KEY[1:], safe=""),
                      fullwidth="".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in KEY),
                      soft=KEY[:12] + "\u00ad" + KEY[12:], zwsp_encoded=KEY[:12] + "%E2%80%8B" + KEY[12:],
                      tab_encoded=KEY[:12] + "%09%0A" + KEY[12:])
    out = opsctl(ops_root, "loadtest", "run", "--host", host, "-u", "1", "-r", "1", "-t", "2s",
                 "--classes", "AdminUser", "--stop-timeout", "1s", "--slo", "requests>=0",
                 "--html", str(reports / "r.html"), "--junit", str(reports / "r.xml"))
    line = _one_line(out)
    assert "--host" in line and "LOADTEST_API_KEY" in line, line
    assert "holds the API key" in line or "credentials" in line, line
    for piece in (KEY, KEY.lower(), quote(KEY, safe=""), KEY[:9], KEY.split("/")[0], "Zq=Xy7", "LoadTest"):
        assert piece not in out.stdout + out.stderr, piece
    _nothing_written(ops_root, reports)


def test_a_password_with_a_slash_is_refused_without_a_piece_of_it(ops_root, monkeypatch):
    """No key in the environment: the '@' alone refuses it, before the port is parsed."""
    monkeypatch.delenv("LOADTEST_API_KEY", raising=False)
    line = _one_line(opsctl(ops_root, "loadtest", "run", "--host", f"http://u:{KEY}@127.0.0.1:8080"))
    assert "credentials" in line and "Sk-LoadTest" not in line and "bad port" not in line, line


@pytest.mark.parametrize("host, says", [
    ("http://admin:hunter2secret\uff20127.0.0.1:8080", "credentials"),       # fullwidth '@' (breaker 47 F7)
    ("http://admin:hunter2secret\ufe6b127.0.0.1:8080", "credentials"),       # small '@'
    ("http://admin:hunter2secret%40127.0.0.1:8080", "credentials"),          # percent-encoded '@'
    ("http://127.0.0.1:hunter2secret/", "bad port"),                         # the port's text is not echoed
    ("http://[hunter2secret/", "not a valid URL"),
    ("ftp://hunter2secret.example/", "not an http(s) URL"),
])
def test_no_error_line_echoes_the_url(ops_root, monkeypatch, host, says):
    """A password or token the user put in the URL, not known to opsctl as a key, is not
    repeated by the line that refuses the URL (the parser's own text quotes the netloc)."""
    monkeypatch.delenv("LOADTEST_API_KEY", raising=False)
    for command in (("loadtest", "run", "--host", host), ("render", "locust", "--env", "local", "--host", host)):
        line = _one_line(opsctl(ops_root, *command))
        assert says in line and "hunter2" not in line, line


def test_a_base_url_with_a_path_still_runs_checks(ops_root, monkeypatch):
    """A path that holds no key is a base URL behind a proxy's prefix: not refused for it."""
    from opsctl.loadtest.plan import target_url

    monkeypatch.setenv("LOADTEST_API_KEY", KEY)
    assert target_url("http://127.0.0.1:8080/transcribe/") == "http://127.0.0.1:8080/transcribe"


@pytest.mark.parametrize("key, gate", [("rate", "error_rate<5%"), ("2000", "p95<2000ms,error_rate<5%")])
def test_a_short_key_leaves_the_users_slo_text_in_the_last_line(ops_root, http_server, monkeypatch,
                                                                 key, gate):
    monkeypatch.setenv("LOADTEST_API_KEY", key)
    out = opsctl(ops_root, "loadtest", "run", "--host", f"http://{http_server}", "-u", "1", "-r", "1",
                 "-t", "2s", "--classes", "TranscriptionUser", "--stop-timeout", "1s", "--slo", gate)
    assert out.code == 1, (out.code, out.stdout, out.stderr)
    # and the user is told why figures holding it read '***' elsewhere (breaker 47 F5)
    assert f"$LOADTEST_API_KEY is {len(key)} characters long: opsctl masks it wherever it shows" in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("opsctl: error: SLO breached: "), last
    for term in gate.split(","):  # each gate breached (no request succeeded), as the user wrote it
        assert f"{term} (" in last, last
    assert "***" not in last, last
