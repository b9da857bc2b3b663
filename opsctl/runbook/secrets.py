"""Masking a run's secret parameter values on every output path, as CI systems do.

GitHub Actions and GitLab CI replace a secret's value wherever it appears in a log; a value
built from the secret in a common encoding (a URL with the token percent-encoded, a JSON
string, a shell word, base64) is masked too, because that is how secrets leak in practice
(an `http` step's error repeats its URL). On top of that, every text passes through
`opsctl.redact.credentials`, which masks passwords in URLs and conninfo whatever they are.

The masker is applied to the step table, `--json`, `--junit`, the journal, opsctl's logs,
approval prompts and the `notify` action's message; actions themselves get the real values.
"""

from __future__ import annotations

import base64
import json
import logging
import shlex
from typing import Any, Iterable
from urllib.parse import quote, quote_plus

from opsctl.redact import MASK, credentials

MIN_DERIVED = 6  # characters: shorter values built from a secret are not registered as secrets


def variants(secret: str) -> set[str]:
    """The forms in which `secret` shows up in text: itself, each of its lines, and its
    percent-encoded, form-encoded, JSON-escaped, shell-quoted and base64 forms."""
    found = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             json.dumps(secret)[1:-1], shlex.quote(secret), base64.b64encode(secret.encode()).decode()}
    found |= {line.strip() for line in secret.splitlines()}
    return {v for v in found if v}


class Masker:
    """Callable: a value (str, dict, list, …) with every secret form replaced by `***`."""

    def __init__(self, secrets: Iterable[Any] = ()):
        forms: set[str] = set()
        for secret in secrets:
            if secret not in (None, ""):
                forms |= variants(str(secret))
        self.forms = sorted(forms, key=len, reverse=True)  # longest first: no half-masked value

    def add(self, derived: str) -> None:
        """Mask `derived` too: a value the run built from a secret (GitHub's `add-mask`).
        Values under `MIN_DERIVED` characters are left out: masking every "9" helps nobody."""
        if isinstance(derived, str) and len(derived) >= MIN_DERIVED:
            self.forms = sorted(set(self.forms) | variants(derived), key=len, reverse=True)

    def text(self, text: str) -> str:
        """`text` with every secret form masked, then credentials in URLs and conninfo."""
        for form in self.forms:
            text = text.replace(form, MASK)
        return credentials(text)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


class LogMask(logging.Filter):
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
        mask = LogMask(masker)
        for handler in handlers:
            handler.addFilter(mask)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(mask)

    return scope()
