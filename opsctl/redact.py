"""One redaction step for everything that turns a driver's or a child's error into output.

Two kinds of secret reach error text:

- URLs: a Slack webhook's path *is* its secret, and a database URL carries its password
  (libpq repeats a malformed URI word for word, password included). `redact` masks a URL
  for display; `credentials` finds every URL inside free text and masks its password, its
  secret parameters (`?token=`, `?code=`...) and a webhook's secret path.
- libpq `key=value` conninfo (`password=…`, `sslpassword=…`) and the like.

Every path that prints, logs, stores or sends an error text (tables, `--json`, JUnit,
alerts, journals) passes it through `credentials` first, so no caller has to know which
driver might echo a password.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import shlex
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"
MIN_SECRET = 4  # shorter values would mask ordinary words
_MIN_HEX = 8  # characters: shorter secrets are not masked in hex

# secrets this process has read (passwords of the URLs it resolved, keys from the
# environment), masked wherever they appear: libpq repeats a malformed password on its own,
# quoted, where no URL pattern can tell it is one
_known: set[str] = set()

# scheme://user:password@host — the password ends at the last '@' before the host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@'\"]*):(?P<pw>[^\s'\"]*)@")
# key=value conninfo (libpq) and other free text: password=…, sslpassword=…, PGPASSWORD=…,
# db_password=…, token=…, aws_secret_access_key=… (the AWS CLI's credentials file), jwt=…
# (presigned S3 URLs carry X-Amz-Signature and X-Amz-Credential, GCS ones X-Goog-Signature,
# Azure SAS URLs sig=). Narrower than the URL parameters below: in free text `key=` is an S3
# object key, `code=` an exit code and `PWD=` a shell's working folder, so those are masked
# only as a URL's parameters.
# (a key's prefix is at most 40 characters: `[\w-]*` before it took time quadratic in a run of
# letters and hyphens, 10 s for 10 KB of 'a-a-...': breaker 49 F4)
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:[\w-]{0,40}[_-]|pg|ssl)?pass(?:word|wd|phrase)?"
    r"|\b(?:[\w-]{0,40}api_?key|[\w-]{0,40}token|[\w-]{0,40}secret|auth_token|sig|[\w-]{0,40}jwt"
    r"|[\w-]{0,40}(?:access|secret|private|account|client)_?key"
    r"|x-(?:amz|goog)-(?:security-token|signature|credential))"
    r")(?P<sep>\s*=\s*)(?P<val>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,]+)",
    re.IGNORECASE)

# Query (and fragment, and `;path`) parameters that carry a secret, each with where the name
# comes from. Matched against the name lowercased, '-', '.' and spaces read as '_'
# (`X-Amz-Signature`, `api-key`, `API_KEY`, `apiKey` alike), by `re.search`.
# Left out on purpose: `sv` (an Azure SAS token's *signed version*, a date such as
# 2022-11-02: no secret; the SAS's secret is its `sig`, listed), `X-Amz-Date`/`se`/`sp`.
_SECRET_PARAMS = (
    (r"pass", "password, passwd, passphrase, sslpassword: libpq conninfo and URIs (RFC 3986 3.2.1)"),
    (r"(?:^|_)pwd$", "pwd: Zoom meeting links' passcode; PWD of ODBC and SQL Server connection strings"),
    (r"secret", "client_secret (OAuth 2.0, RFC 6749 2.3.1), secret, secret_key"),
    (r"token", "access_token (RFC 6750 2.3), id_token, private_token (GitLab), X-Amz-Security-Token, "
               "Google Chat webhooks' token"),
    (r"signature|^sig$", "X-Amz-Signature (S3 presigned, SigV4), X-Goog-Signature (GCS signed URLs), "
                         "Signature (SigV2, GCS V2), sig (Azure SAS, Logic Apps/Teams workflow URLs)"),
    (r"credential", "X-Amz-Credential, X-Goog-Credential: the signed URL's key and scope"),
    (r"^key$", "key: Google API keys (Google Chat webhooks, Maps), WeCom webhooks"),
    (r"api_?key", "api_key, apikey, x-api-key: most HTTP APIs"),
    (r"(?:^|_)(?:access|secret|private|account|subscription|functions|app|client|master|shared|signing)_?key$",
     "access_key, subscription-key (Azure API Management), x-functions-key (Azure Functions), account_key"),
    (r"auth", "auth, authorization, auth_token, oauth_*: credentials by name"),
    (r"session|sessid", "session, session_id, JSESSIONID (Servlet ';jsessionid='), PHPSESSID"),
    (r"jwt", "jwt: a bearer JSON Web Token (RFC 7519) given in the URL (Jitsi, Mercure, Grafana)"),
    # `code` is a false positive now and then (a test endpoint's `?code=503`); taken anyway:
    # Azure Functions' function key is `?code=` (an Azure Function's health URL is exactly what a
    # check names) as is an OAuth 2.0 authorization code (RFC 6749 4.1.2). A refused URL says
    # why in one line, and a status to expect belongs in the check's conditions, not its URL.
    (r"^code$", "code: Azure Functions function keys; OAuth 2.0 authorization codes"),
)
_SECRET_PARAM = re.compile("|".join(f"(?:{pattern})" for pattern, _ in _SECRET_PARAMS))

# Webhook URLs whose path is the secret itself (whoever has the URL can post), each with the
# path that carries it. A domain covers its subdomains (ptb./canary.discord.com,
# <tenant>.webhook.office.com); a path is matched case-insensitively after decoding and
# removing '//', '.' and '..' (what a server's router would do). Hosts compare normalized
# (`_host`). Not listed: Mattermost's and Rocket.Chat's `/hooks/<id>`: self-hosted, so on any
# host, where `/hooks/` also names receivers with no secret (an Alertmanager, an internal
# relay); no rule can tell them apart, so `config show` masks every sink URL's path instead.
_SECRET_PATHS = (
    ("hooks.slack.com", r"/.", "Slack incoming webhooks /services/T…/B…/<secret>, workflow triggers"),
    ("discord.com", r"/api/(?:v\d+/)?webhooks/", "Discord webhooks /api[/v10]/webhooks/<id>/<token>"),
    ("discordapp.com", r"/api/(?:v\d+/)?webhooks/", "Discord's older domain"),
    ("api.telegram.org", r"/(?:file/)?bot[^/]", "Telegram Bot API /bot<token>/<method>"),
    ("webhook.office.com", r"/.", "Microsoft Teams incoming webhooks <tenant>.webhook.office.com/webhookb2/…"),
    ("outlook.office.com", r"/webhook/", "Office 365 connectors (Teams' older webhook URLs)"),
    ("outlook.office365.com", r"/webhook/", "Office 365 connectors"),
    ("chat.googleapis.com", r"/.", "Google Chat /v1/spaces/…/messages?key=…&token=…"),
    ("hooks.zapier.com", r"/hooks/", "Zapier catch hooks /hooks/catch/<id>/<secret>"),
    ("maker.ifttt.com", r"/trigger/", "IFTTT Webhooks /trigger/<event>/with/key/<key>"),
    ("open.feishu.cn", r"/open-apis/bot/v2/hook/", "Feishu custom bots /open-apis/bot/v2/hook/<token>"),
    ("open.larksuite.com", r"/open-apis/bot/v2/hook/", "Lark custom bots"),
    ("events.pagerduty.com", r"/integration/", "PagerDuty /integration/<integration key>/enqueue"),
    ("events.eu.pagerduty.com", r"/integration/", "PagerDuty's EU service region"),
)
# a URL inside free text: up to whitespace, a quote or an angle bracket
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def secret_param(name: str) -> bool:
    """Whether a URL parameter named `name` carries a secret (`_SECRET_PARAMS` lists the names
    and where each comes from): case and '-'/'_'/'.' spellings alike, percent-decoded."""
    plain = re.sub(r"[-.\s]", "_", unquote(name).strip().lower())
    return bool(plain) and _SECRET_PARAM.search(plain) is not None


def _host(host: str) -> str:
    """`host` as a resolver reads it: lowercase, IDNA (fullwidth letters and '。' dots fold to
    ASCII, as httpx's parser does), without the trailing dot of a fully qualified name:
    `HOOKS.slack.com.` and `hooks.slack.com` are one host and must be judged alike."""
    host = host.strip().lower()
    try:
        host = host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):  # a label too long or empty: judged as written
        pass
    return host.rstrip(".")


def _path(path: str) -> str:
    """A URL path as a server routes it: percent-decoded, '//' folded, '.' and '..' removed."""
    out: list[str] = []
    for segment in re.split(r"/+", unquote(path)):
        if segment == "..":
            out = out[:-1]
        elif segment not in ("", "."):
            out.append(segment)
    return "/" + "/".join(out) + ("/" if path.endswith("/") and out else "")


def _webhook(host: str, path: str) -> str | None:
    """The webhook host whose path is its secret (`_SECRET_PATHS`), or None."""
    host, path = _host(host), _path(path)
    for domain, pattern, _ in _SECRET_PATHS:
        if (host == domain or host.endswith("." + domain)) and re.match(pattern, path, re.IGNORECASE):
            return host
    return None


def _mask_url(match: re.Match) -> str:
    """One URL found in free text with its secrets masked: a webhook's path whole, and the
    value of each secret parameter (`secret_param`) in its query, fragment or ';' path."""
    url = match.group(0)
    head, _, fragment = url.partition("#")
    head, query_mark, query = head.partition("?")
    try:
        parts = urlsplit(head)
        hooked = _webhook(parts.hostname or "", parts.path)
    except ValueError:
        hooked = None
    if hooked:
        return f"{parts.scheme}://{parts.netloc}/{MASK}"

    def params(text: str) -> str:
        return re.sub(r"(?P<name>[^&;=]+)=(?P<val>[^&;]*)",
                      lambda m: f"{m['name']}={MASK}" if secret_param(m["name"]) else m.group(0), text)

    scheme, _, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    path = re.sub(r";[^/]*", lambda m: params(m.group(0)), path)  # ;jsessionid=…
    out = f"{scheme}://{authority}{slash}{path}"
    if query_mark:
        out += "?" + params(query)
    if "#" in url:
        out += "#" + params(fragment)
    return out


def redact(url: str | None, keep_path: bool = False) -> str:
    """The URL with its secrets masked, for showing which endpoint a message is about.

    Everything after the host (path, query, credentials) is masked; `keep_path` keeps the
    path for probes, whose paths hold none; a webhook's path that is its secret
    (`_SECRET_PATHS`) is masked even so. Text that is not a URL becomes `***`.
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    if keep_path and not _webhook(host, parts.path):  # a webhook's path is its secret: never kept
        return f"{parts.scheme}://{host}{port}{parts.path}" + (f"?{MASK}" if parts.query else "")
    hidden = f"/{MASK}" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def url_secret(url: str | None) -> str | None:
    """What secret `url` carries, in words that never repeat it, or None: credentials in its
    userinfo ('user:password@', or a token as the user name), a query, fragment or ';' path
    parameter named like a secret (`secret_param`: `token=`, `X-Amz-Signature=`, `sig=`,
    `api-key=`, `code=`, `jwt=`..., each name listed with its source in `_SECRET_PARAMS`), or a
    webhook URL whose path is its own secret (`_SECRET_PATHS`: Slack, Discord, Telegram, Teams,
    Google Chat, Zapier...), its host compared as a resolver reads it (`HOOKS.slack.com.` is
    hooks.slack.com). A value with no scheme is read as `host:port` (an exporter target).
    For settings a committed file holds: opsctl.config refuses such URLs at load time."""
    if not url:
        return None
    text = url.strip()
    split = text if "://" in text else "//" + text
    try:
        parts = urlsplit(split)
        host = parts.hostname or ""
    except ValueError:  # 'http://[::1' and the like: judge the authority by hand
        authority = split.split("//", 1)[-1].split("/", 1)[0]
        return "credentials ('user:password@')" if "@" in authority else None
    if "@" in parts.netloc:
        return "credentials ('user:password@' or a token as the user name)"
    path_params = ";".join(re.findall(r";([^/]*)", parts.path))  # /app;jsessionid=…
    for where, part in (("query", parts.query), ("fragment", parts.fragment), ("path", path_params)):
        for name, _ in parse_qsl(part.replace(";", "&"), keep_blank_values=True):
            if secret_param(name):  # the name only when it is a plain key=: no value in it
                plain = len(name) <= 40 and re.fullmatch(r"[\w.-]+", name) and f"{name}=" in part
                return f"a secret in its {where}" + (f" (parameter '{name}')" if plain else "")
    hooked = _webhook(host, parts.path)
    if hooked:
        return f"a secret in its path (a {hooked} webhook URL is itself the secret)"
    return None


def url_password(url: str | None) -> str | None:
    """The password in a URL's userinfo, read leniently (a malformed URL has one too), or None.

    `postgresql://app:"p w"@[::1/x` gives `"p w"`: everything between the first ':' after
    the scheme's '//' and the last '@' of the authority. A `password=` query parameter counts,
    and so does a key=value conninfo's `password=` (quoted, or up to the next ` key=`).
    """
    if not url:
        return None
    if "://" not in url:  # a key=value conninfo: password=value, or 'quoted value'
        quoted = re.search(r"(?:^|\s)password\s*=\s*'((?:[^'\\]|\\.)*)'?", url)
        if quoted:
            return quoted.group(1) or None
        # unquoted, it runs to the next ` key=` (breaker 54 F8: libpq split `password=a b` and
        # printed "missing = after b"): the lenient reading takes the whole of it
        plain = re.search(r"(?:^|\s)password\s*=\s*(.*?)(?=\s+\w+\s*=|\s*$)", url)
        return (plain.group(1) or None) if plain else None
    rest = url.split("://", 1)[1]
    found = None
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if "/" in userinfo:  # an '@' in the path: the authority ends at the first '/'
            authority = rest.split("/", 1)[0]
            userinfo = authority.rsplit("@", 1)[0] if "@" in authority else ""
        if ":" in userinfo:
            found = userinfo.split(":", 1)[1] or None
    query = re.search(r"[?&]password=([^&#]*)", url)
    return found or (query.group(1) if query else None)


def _base64_forms(raw: bytes) -> set[str]:
    """Base64 of `raw` as it shows up inside the base64 of a longer text (`Basic
    base64("ops:" + secret)`): at each of the three alignments the secret can have, the
    part made of whole 3-byte groups, standard and URL-safe (as GitHub Actions masks)."""
    found = set()
    for offset in range(3):
        chunk = raw[offset:]
        chunk = chunk[:len(chunk) // 3 * 3]
        if len(chunk) >= 6 or (offset == 0 and chunk == raw and chunk):
            found |= {base64.b64encode(chunk).decode(), base64.urlsafe_b64encode(chunk).decode()}
    whole = base64.b64encode(raw).decode()
    return found | {whole, whole.rstrip("=")}


def forms(secret: str) -> set[str]:
    """The forms in which `secret` shows up in text: itself, each of its lines, and its
    percent-encoded (as URLs do, every byte, twice), form-encoded, JSON-escaped (also with `\\/`
    and as `\\uXXXX`), shell-quoted, hex (of its UTF-8 bytes, from 8 characters) and base64
    forms (the latter also inside the base64 of a longer text), hex and base64 also of its
    lower- and upper-case spellings. Matched in any letter case by `mask_forms`, so a server
    that lowercases an echoed header does not unmask it."""
    escaped = json.dumps(secret)[1:-1]
    found = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), escaped, shlex.quote(secret),
             quote(quote(secret, safe=""), safe=""),  # encoded twice (a URL inside a URL's parameter)
             "".join(f"%{b:02X}" for b in secret.encode()),  # every byte percent-encoded
             escaped.replace("/", "\\/"),  # JSON with its slashes escaped (PHP's json_encode)
             "".join(f"\\u{ord(c):04x}" for c in secret)}  # every character as \uXXXX
    for variant in {secret, secret.lower(), secret.upper()}:  # a server may change the case, then encode
        if len(secret) >= _MIN_HEX:  # the hex of a short one is a plain 8-digit number
            found.add(variant.encode().hex())
        found |= _base64_forms(variant.encode())
    found |= {line.strip() for line in secret.splitlines()}
    return {v for v in found if v}


@functools.lru_cache(maxsize=32)
def _forms_pattern(ordered: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)


def unescaped(text: str, levels: int = 3, quoted_printable: bool = False) -> str:
    """`text` with what escapes one character at a time decoded, up to `levels` levels (a JSON
    body inside a JSON log line is escaped twice): an escaped backslash, `\\uXXXX`, `\\u{X…}`
    (JavaScript, Rust, Swift), `\\UXXXXXXXX` (Python, C), `\\xNN`, octal `\\NNN` (C, shells'
    `$'…'`, PostgreSQL's escape strings) and `\\/`, HTML character references written with their
    ';' (`&#43;`, `&#x2B;`, `&plus;`), %XX of an ASCII byte, and line breaks with the indentation
    after them (a key wrapped onto the next line reads as one); with `quoted_printable`, also
    MIME's `=XX` and soft line breaks (RFC 2045 6.7), a reading of its own because `=` followed by
    two hex digits is ordinary text elsewhere (`size=20`). A server that escapes only some
    characters of an echoed key (System.Text.Json writes '+' as `\\u002B`) writes it in none
    of the whole forms `forms` lists (breaker 48 F1, 49 F2)."""
    for text in _decodings(text, _ESCAPED_QP if quoted_printable else _ESCAPED_UNIT, levels):
        pass
    return text


def _decodings(text: str, pattern: re.Pattern, levels: int = 3) -> Iterator[str]:
    """`text` decoded one level of escapes (`pattern`) at a time: each level that changed it."""
    for _ in range(levels):
        decoded = pattern.sub(lambda m: _decode_unit(m[0]), text)
        if decoded == text:
            return
        yield (text := decoded)


def mask_forms(text: str, found: Iterable[str]) -> str:
    """`text` with each of `found` replaced by `MASK`, in any letter case, longest first
    (no half-masked value where one form holds another). A secret that shows only once the
    escapes of single characters are decoded (`unescaped`: a key echoed with one character
    escaped, breaker 48 F1) is masked where it sits in `text`, the rest left as written (a
    decoded copy returned whole had unmasked other, percent-encoded passwords: breaker 49 F1).
    The forms present are picked with plain substring searches first (a regular expression of
    hundreds of alternatives is ~40x slower than them on text that holds none, the usual case)."""
    if not text:
        return text
    found = found if isinstance(found, set | frozenset | tuple | list) else tuple(found)
    masked = _mask_present(text, found)
    for written, escaped, units in ((_ESCAPED_UNIT, _ESCAPED_UNIT, _UNIT), (_QP_WRITTEN, _ESCAPED_QP, _UNIT_QP)):
        if not written.search(masked):  # nothing of this reading in the text: no pass over it
            continue
        # every level is looked at: a key holding what reads as an escape (`=4A`, `%41`) shows
        # at the level before that part of it is decoded too
        if any(_mask_present(plain, found) != plain for plain in _decodings(masked, escaped)):
            masked = _mask_escaped(masked, found, units)
    return masked


# one escaped character as servers write it: an escaped backslash, \uXXXX, \u{X..}, \UXXXXXXXX,
# \xNN, Perl's \x{X..}, octal \NNN, \/, an HTML character reference (with its ';', as servers
# write them), %XX, IIS's %uXXXX, a line break and the indentation after it, written or escaped
# (\n, \r\n inside a JSON string or a repr: breaker 52 K6); quoted-printable's =XX and soft line
# break are a reading of their own (unescaped)
_ESCAPES = (r"\\\\|\\u[0-9a-fA-F]{4}|\\u\{[0-9a-fA-F]{1,6}\}|\\U[0-9a-fA-F]{8}|\\x[0-9a-fA-F]{2}"
            r"|\\x\{[0-9a-fA-F]{1,6}\}|\\[0-7]{3}|\\/|(?:\\r)?\\n[ \t]*"
            r"|&(?:#[0-9]{1,10}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{1,31});|%[0-9a-fA-F]{2}|%u[0-9a-fA-F]{4}"
            r"|\r?\n[ \t]*")
_QUOTED_PRINTABLE = r"=[0-9a-fA-F]{2}|=\r?\n|=(?:\\r)?\\n"
_ESCAPED_UNIT = re.compile(_ESCAPES)
_ESCAPED_QP = re.compile(f"{_ESCAPES}|{_QUOTED_PRINTABLE}")
_QP_WRITTEN = re.compile(_QUOTED_PRINTABLE)
_UNIT = re.compile(_ESCAPES + "|.", re.DOTALL)  # a written unit of text: an escape, or one character
_UNIT_QP = re.compile(f"{_ESCAPES}|{_QUOTED_PRINTABLE}|.", re.DOTALL)


def _ascii(unit: str, value: int) -> str:
    """The character of an escaped byte, or `unit` as written when the byte is one of a longer
    UTF-8 sequence (not a character on its own)."""
    return chr(value) if value < 0x80 else unit


def _decode_unit(unit: str) -> str:
    head = unit[0]
    if head in "\r\n":
        return ""  # a line wrap (with its indentation) inside a key
    if len(unit) == 1:
        return unit
    if head == "=":
        return "" if unit[1] in "\r\n\\" else _ascii(unit, int(unit[1:], 16))  # a soft break, or =XX
    if head == "%":
        if unit[1] in "uU":  # IIS's %uXXXX: a UTF-16 unit
            value = int(unit[2:], 16)
            return unit if 0xD800 <= value <= 0xDFFF else chr(value)
        return _ascii(unit, int(unit[1:], 16))
    if head == "\\":
        if unit[1] in "\\/":
            return unit[1]
        if unit[1] in "rn":
            return ""  # an escaped line break (with the indentation after it) inside a key
        if unit[1] in "01234567":
            return _ascii(unit, int(unit[1:], 8))
        value = int(unit[2:].strip("{}"), 16)
        return unit if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF else chr(value)
    import html

    return html.unescape(unit)


def _mask_escaped(text: str, found: Iterable[str], units: re.Pattern = _UNIT, levels: int = 3) -> str:
    """`text` with every stretch that decodes (one to `levels` levels of escapes, read as
    `units`) to one of `found` replaced by `MASK`: each decoded character remembers the span of
    `text` it came from, so only what spells the secret is masked."""
    origins = [(i, i + 1) for i in range(len(text))]
    current, spans = text, []
    for _ in range(levels):
        out: list[str] = []
        next_origins: list[tuple[int, int]] = []
        for unit in units.finditer(current):
            decoded = _decode_unit(unit[0])
            span = (origins[unit.start()][0], origins[unit.end() - 1][1])
            out.append(decoded)
            next_origins.extend([span] * len(decoded))
        decoded_text = "".join(out)
        if decoded_text == current:
            break
        current, origins = decoded_text, next_origins
        lowered = current.lower()
        present = tuple(sorted({f for f in found if f and (f.lower() in lowered or f in current)},
                               key=lambda f: (-len(f), f)))
        if present:
            spans += [(origins[m.start()][0], origins[m.end() - 1][1])
                      for m in _forms_pattern(present).finditer(current)]
    if not spans:
        return text
    out, at = [], 0
    for start, end in sorted(spans):
        if end <= at:
            continue
        out += [text[at:max(at, start)], MASK] if start >= at else [MASK]
        at = max(at, end)
    return "".join(out) + text[at:]


def _mask_present(text: str, found: Iterable[str]) -> str:
    lowered = text.lower()
    present = tuple(sorted({f for f in found if f and (f.lower() in lowered or f in text)},
                           key=lambda f: (-len(f), f)))
    if not present:
        return text
    return _forms_pattern(present).sub(MASK, text)


def remember(*secrets: str | None) -> None:
    """Mask these values from now on, in every form of `forms` (and unquoted and decoded).

    Called where opsctl reads a secret: the URLs the endpoint resolver hands out, keys read
    from the environment. Forms shorter than 4 characters are ignored.
    """
    for secret in secrets:
        if not secret:
            continue
        found = {secret.strip("'\""), unquote(secret)} | forms(secret)
        # a URL's password with an '@' left unencoded: libpq ends it at the first '@' and prints
        # the rest as a host name (breaker 53 F2), so what follows each '@' is masked too
        found |= {secret.split("@", i)[i] for i in range(1, secret.count("@") + 1)}
        found |= set(secret.split())  # a conninfo's unquoted `password=a b`: libpq prints "b" alone
        _known.update(f for f in found if len(f) >= MIN_SECRET)


def credentials(text: str | None) -> str:
    """`text` with every password in it masked: URL userinfo and `key=value` pairs alike.

    `postgresql://app:s3cret@db/x` becomes `postgresql://app:***@db/x`;
    `host=db password='a b' user=app` becomes `host=db password=*** user=app`.
    In a URL, every parameter `url_secret` refuses is masked by the same rule (`secret_param`:
    `?code=***&access_key=***`) and a webhook whose path is its secret loses its path
    (`https://discord.com/***`), so `config show` (every string through `masked`) and error
    text hide what opsctl.yaml's load refuses.
    Every value given to `remember` is masked too, in any position.
    The user name and host stay, so the message still says which connection failed.
    """
    if not text:
        return text or ""
    text = mask_forms(text, _known)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _URL_IN_TEXT.sub(_mask_url, text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


def scrub(text: str, *secrets: str | None) -> str:
    """`text` with each known secret (and its URL form) replaced, then `credentials` applied.

    For an exception's text when the caller knows the secret it used (a webhook URL, an
    SMTP password); unknown credentials in URLs and conninfo are masked as well.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, redact(secret) if "://" in secret else MASK)
    return credentials(text)


def masked(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, str, numbers) with every string through `credentials`."""
    if isinstance(value, str):
        return credentials(value)
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value
