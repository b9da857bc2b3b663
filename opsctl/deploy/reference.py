"""Image references (`--image`, the runbook `deploy` step's `image`) checked against the
grammar Docker and every OCI registry use, before a deploy does anything.

The grammar is the distribution project's reference grammar (github.com/distribution/reference,
reference.go; its regular expressions in regexp.go), the one `docker pull` applies:

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain '/'] remote-name
    domain           := host [':' port-number]
    host             := domain-name | IPv4address | \\[ IPv6address \\]
    domain-name      := domain-component ['.' domain-component]*
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    port-number      := /[0-9]+/
    remote-name      := path-component ['/' path-component]*
    path-component   := alpha-numeric [separator alpha-numeric]*
    alpha-numeric    := /[a-z0-9]+/
    separator        := /[_.]|__|[-]*/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := digest-algorithm ":" digest-hex

and a name of at most 255 characters. Digests are those the registries serve (go-digest:
sha256, sha384, sha512 with their lowercase hex lengths). No parser of this grammar is a
dependency of opsctl (docker-py's `parse_repository_tag` splits without checking), hence
these few expressions.

A reference without a tag is refused, unlike `docker pull` (which reads it as `:latest`):
the tag is the version a blue-green deploy records, rolls back to and shows, and a floating
tag such as `latest` deployed twice may be two different images. `NAME:TAG@sha256:...` pins
the image and keeps the tag as the version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opsctl.errors import UsageError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
NAME_MAX = 255  # distribution/reference NameTotalLengthMax
DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}  # go-digest's registered algorithms
EXAMPLE = "use NAME:TAG, e.g. worker:1.4.0 or registry.example.com:5000/team/worker:1.4.0"


@dataclass(frozen=True)
class ImageReference:
    """A checked image reference: name (with its registry host, if any), tag, digest or None."""

    name: str
    tag: str
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}" + (f"@{self.digest}" if self.digest else "")


def shown(text: str, limit: int = 80) -> str:
    """`text` quoted for a one-line message: control characters escaped (a terminal never
    runs them), cut to `limit` characters with its length said."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[:limit - 20]}...' ({len(text)} characters)"


def parse(text: str, option: str = "--image") -> ImageReference:
    """`text` as NAME:TAG[@DIGEST] per the distribution reference grammar (module docstring);
    UsageError (one line naming `option`, what is wrong and what to pass) otherwise, and for a
    reference without a tag."""
    if not text or not text.strip():
        raise UsageError(f"{option} is empty; {EXAMPLE}")
    bad = next((c for c in text if not c.isprintable() or c.isspace()), None)
    if bad is not None:
        what = "a space" if bad == " " else f"the control character {bad!r}"
        raise UsageError(f"{option} {shown(text)} contains {what}; {EXAMPLE}")
    match = REFERENCE.fullmatch(text)
    if match is None:
        raise UsageError(f"{option} {shown(text)} is not an image reference: {_why(text)}; {EXAMPLE}")
    name, tag, digest = match.groups()
    if len(name) > NAME_MAX:
        raise UsageError(f"{option} {shown(text)}: the name is {len(name)} characters, at most {NAME_MAX}; {EXAMPLE}")
    if digest is not None:
        algorithm, _, hexa = digest.partition(":")
        if DIGEST_HEX.get(algorithm) != len(hexa) or hexa != hexa.lower():
            raise UsageError(f"{option} {shown(text)}: the digest must be sha256:<64 lowercase hex digits> "
                             "(or sha384/sha512), as the registry shows it")
    if tag is None:
        raise UsageError(f"{option} {shown(text)} has no tag, and the tag is the version a deploy records "
                         f"and rolls back to; add it, e.g. {name}:1.4.0 (a floating tag such as latest "
                         "is not reproducible)")
    return ImageReference(name, tag, digest)


def version(text: str, option: str = "--to") -> str:
    """`text` when it can be a version (an image tag, the grammar's `tag`); UsageError (one
    line naming `option`) for an empty value or anything a tag cannot be."""
    if not text or not text.strip():
        raise UsageError(f"{option} is empty; give a version (an image tag such as 1.4.0), or leave {option} out "
                         "for the previous version")
    if not re.fullmatch(_TAG, text, re.ASCII):
        raise UsageError(f"{option} {shown(text)} is not a version: an image tag is 1 to 128 letters, digits, "
                         "'_', '.' or '-', not starting with '.' or '-'; 'opsctl status' lists the deployed ones")
    return text


def _why(text: str) -> str:
    """Which part of a reference that does not match breaks the grammar, in words."""
    rest, _, digest = text.partition("@")
    if "@" in text and not re.fullmatch(_DIGEST, digest, re.ASCII):
        return "the part after '@' must be a digest, e.g. @sha256:<64 hex digits>"
    head, sep, tag = rest.rpartition(":")
    if sep and "/" not in tag:  # NAME:TAG (a ':' before the last '/' is a registry port)
        if not re.fullmatch(_TAG, tag, re.ASCII):
            return (f"the tag {shown(tag)} must be 1 to 128 letters, digits, '_', '.' or '-', "
                    "not starting with '.' or '-'")
        rest = head
    if not re.fullmatch(_NAME, rest, re.ASCII):
        return (f"the name {shown(rest)} must be lowercase path components of letters and digits "
                "joined by '.', '_', '__' or '-', separated by '/', after an optional registry HOST[:PORT]/")
    return "it does not follow NAME[:TAG][@DIGEST]"
