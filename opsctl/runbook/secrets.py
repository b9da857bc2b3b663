"""Masking a run's secret parameter values on every output path, as CI systems do.

GitHub Actions and GitLab CI replace a secret's value wherever it appears in a log; a value
built from the secret in a common encoding (a URL with the token percent-encoded, a JSON
string, a shell word, hex, base64 — also inside the base64 of a longer text, at the secret's
three possible alignments, as GitHub Actions does) is masked too, in any letter case, because that is how
secrets leak in practice (an `http` step's error repeats its URL; `Authorization: Basic`
encodes "user:secret"). Text is masked before it is cut, and a piece of a secret left at
a cut someone else made (the text's edges, an ellipsis) is masked as well. The values of
the environment's secret variables (those opsctl.yaml names, cloud credentials, names
that say secret) are masked the same way. On top of that, every text passes through
`opsctl.redact.credentials`, which masks passwords in URLs and conninfo whatever they are.

The masker is applied to the step table, `--json`, `--junit`, the journal, opsctl's logs,
approval prompts and the `notify` action's message; actions themselves get the real values.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Iterable, Mapping

from opsctl.redact import MASK, credentials, forms, mask_forms

MIN_DERIVED = 6  # characters: shorter values built from a secret are not registered as secrets
MIN_FRAGMENT = 5  # characters: a piece of a secret this long at a word's edge is masked
FRAGMENT_OF = 8  # characters: only secrets (and their forms) this long have their pieces masked
MAX_FRAGMENTED = 256  # characters: longer secrets (keys, certificates) are masked whole and by line
# environment variables whose name says they hold a secret (besides those opsctl.yaml names)
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_KEY|CREDENTIAL|_KEY$|^PG(PASS|PASSWORD)$)", re.I)
KNOWN_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PULUMI_ACCESS_TOKEN",
                    "PULUMI_CONFIG_PASSPHRASE", "GITHUB_TOKEN", "PGPASSWORD", "REDISCLI_AUTH")


def environment_secret_names(env: Any = None, env_vars: Mapping[str, str] | None = None) -> set[str]:
    """Names of the environment variables that hold secrets: those opsctl.yaml names for
    `env` (every `*_env` setting: backup.key_env, deploy.api_key_env, database.url_env,
    sinks' url_env/password_env…), the cloud and tool credentials in `KNOWN_SECRET_ENV`,
    and any variable of `env_vars` whose name says secret (`SECRET_NAME`)."""
    env_vars = os.environ if env_vars is None else env_vars
    names = set(KNOWN_SECRET_ENV)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).endswith("_env") and isinstance(item, str) and item:
                    names.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    if env is not None:
        walk(env.model_dump() if hasattr(env, "model_dump") else env)
    names |= {n for n in env_vars if SECRET_NAME.search(n)}
    return names


class Masker:
    """Callable: a value (str, dict, list, …) with every secret form replaced by `***`."""

    def __init__(self, secrets: Iterable[Any] = ()):
        found: set[str] = set()
        for secret in secrets:
            if secret not in (None, ""):
                found |= forms(str(secret))
        self.forms = sorted(found, key=len, reverse=True)  # longest first: no half-masked value
        self.cut_forms = set(found)  # forms whose pieces are masked where a word starts or ends

    def add(self, derived: str, pieces: bool = False) -> None:
        """Mask `derived` too: a value the run built from a secret (GitHub's `add-mask`).
        Values under `MIN_DERIVED` characters are left out: masking every "9" helps nobody.
        `pieces`: also mask what is left of it at a cut (see `text`); off by default, as a
        derived value starts or ends with plain words ("Token …") and holds the secret,
        whose own pieces are masked."""
        if isinstance(derived, str) and len(derived) >= MIN_DERIVED:
            found = forms(derived)
            self.forms = sorted(set(self.forms) | found, key=len, reverse=True)
            if pieces:
                self.cut_forms |= found

    def add_environment(self, env: Any = None, env_vars: Mapping[str, str] | None = None) -> set[str]:
        """Mask the values of the secret environment variables (`environment_secret_names`);
        returns their names."""
        env_vars = os.environ if env_vars is None else env_vars
        names = environment_secret_names(env, env_vars)
        for name in names:
            value = env_vars.get(name)
            if value:  # whole forms only: such values are often URLs or words ("opsctl-local")
                self.add(value, pieces=False)
        return names

    def _fragments(self) -> tuple[re.Pattern, re.Pattern] | None:
        """Two patterns: a piece of a secret's end where a word starts, and a piece of its
        start where a word ends (at least `MIN_FRAGMENT` characters, secrets of at least
        `FRAGMENT_OF`): what is left of a secret that someone cut before masking. Only the
        run's secret parameters (and values built from them) are cut this way; the values
        of secret environment variables are masked whole."""
        raw = sorted({f for f in self.cut_forms if FRAGMENT_OF <= len(f) <= MAX_FRAGMENTED}, key=len, reverse=True)
        key = tuple(raw)
        if getattr(self, "_fragment_key", None) != key:
            self._fragment_key = key
            ends = sorted({f[-n:] for f in raw for n in range(MIN_FRAGMENT, len(f))}, key=len, reverse=True)
            starts = sorted({f[:n] for f in raw for n in range(MIN_FRAGMENT, len(f))}, key=len, reverse=True)
            self._fragment_res = None if not raw else (
                re.compile(r"(?:^|(?<=[\s….]))(?:" + "|".join(map(re.escape, ends)) + ")", re.M),
                re.compile(r"(?:" + "|".join(map(re.escape, starts)) + r")(?=$|[\s…]|\.\.\.)", re.M))
        return self._fragment_res

    def text(self, text: str) -> str:
        """`text` with every secret form masked, and the pieces of one left at a cut (at
        the start or end of a word, a line or the text), then credentials in URLs and
        conninfo."""
        text = mask_forms(text, self.forms)
        patterns = self._fragments() if text else None
        if patterns:
            for pattern in patterns:
                text = pattern.sub(MASK, text)
        return credentials(text)

    def clip(self, text: str, limit: int, keep: str = "head") -> str:
        """`text` masked, then cut to `limit` characters (`keep` "head" or "tail"): masking
        first, so no piece of a secret survives the cut."""
        text = self.text(text)
        return text[:limit] if keep == "head" else text[-limit:]

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


class _LogMask(logging.Filter):
    """A handler filter that masks the secrets in each record's message (and its fields)."""

    def __init__(self, masker: Masker):
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record's message (and fields) in place; always keeps the record."""
        record.msg, record.args = self.masker.text(record.getMessage()), None
        if hasattr(record, "fields"):
            record.fields = self.masker(record.fields)
        return True


def masking_logs(masker: Masker):
    """Context manager: opsctl's log handlers mask `masker`'s secrets while it is open."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        handlers = logging.getLogger("opsctl").handlers + logging.getLogger().handlers
        mask = _LogMask(masker)
        for handler in handlers:
            handler.addFilter(mask)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(mask)

    return scope()
