"""Reading and validating an OpenAI-style multipart upload.

The form is parsed by hand (not by FastAPI parameters) so that authentication, the rate
limit and the upload slot are checked before the body is read: a refused caller never
makes the service buffer 25 MB. The size limit is enforced twice: on Content-Length before
reading, and on the bytes actually received (a chunked upload has no Content-Length).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import units
from .errors import APIError, error_response, shown, shown_all
from .formats import FORMATS
from .model import Options

_SLACK = 64 * 1024  # multipart headers and the small form fields around the file

# C0 controls and DEL, and the C1 controls: PostgreSQL refuses NUL in text (and \u0000 in
# jsonb), and none of them belongs in a name, a purpose, an id or a key
# in a name, a purpose, an id or a key also the bidirectional embeddings, overrides and
# isolates (U+202A-U+202E, U+2066-U+2069): "\u202eevil.exe" reads "exe.live" wherever it is
# shown (breaker 57: a filename kept U+202E and echoed it); nor the line and paragraph
# separators (U+2028, U+2029: a new line in a log) and the tag characters (U+E0000-U+E007F,
# invisible text; breaker 58 G10); a prompt's text may hold the bidirectional ones
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\U000e0000-\U000e007f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # tab, CR, LF kept


def no_control(value: str | None, param: str, lines: bool = False) -> str | None:
    """`value` unchanged, or 400 `invalid_value` naming `param` when it holds a control
    character (with `lines`, tab, CR and LF are allowed: a prompt's text) or a lone surrogate.
    Every text field an endpoint stores goes through it, so a NUL is the client's error, not
    the store's 503."""
    if value and (_CONTROL_BUT_LINES if lines else _CONTROL).search(value):
        raise APIError(400, f"{param} must not contain control characters (such as NUL, or a bidirectional "
                       "override)" if not lines else f"{param} must not contain control characters (such as NUL)",
                       param=param,
                       code="invalid_value")
    if value and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 store (PostgreSQL, S3) holds it
            raise APIError(400, f"{param} is not valid Unicode (a lone surrogate)", param=param,
                           code="invalid_value") from None
    return value


def _languages(request: Request) -> set[str]:
    """The language codes the loaded model has a token for (Transcriber.languages); faster-whisper's
    whole list while no model is loaded (the route refuses before transcribing then)."""
    transcriber = getattr(getattr(request.app.state, "worker", None), "transcriber", None)
    if transcriber is not None:
        return transcriber.languages
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return set(_LANGUAGE_CODES)


@dataclass
class Upload:
    """One checked transcription form: the audio (`data`, empty when `file_id` names a
    completed upload), its SHA-256 (hex), the response format and the model options."""

    data: bytes
    filename: str | None
    content_type: str | None
    sha256: str
    response_format: str
    options: Options
    file_id: str | None = None  # a completed /v1/uploads file in place of `file` (jobs); data is then b""
    model: str = ""  # the `model` form field as sent (one model is served; part of the request's identity)

    def fingerprint(self) -> str:
        """SHA-256 of everything in the request that can change its result: the audio's hash,
        the requested model, response format, language, prompt, temperature and timestamp
        granularities. An Idempotency-Key reused with another fingerprint is refused (422)."""
        o = self.options
        parts = [self.sha256, self.model, self.response_format, o.language or "", o.prompt or "",
                 repr(float(o.temperature)), o.word_timestamps]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def too_large(limit: int, part: bool = False, size: int | None = None) -> APIError:
    """The 413 `file_too_large` for a body over `limit` bytes: a /v1/uploads part (`part`,
    field `data`, WORKER_MAX_PART_MB) or a transcription's `file` (WORKER_MAX_UPLOAD_MB); both
    limits count MiB. With `size` (the bytes read, when known) the message says it too,
    rounded up so it never reads as the limit (`units.mib_against`)."""
    what, setting = ("part", "WORKER_MAX_PART_MB") if part else ("file", "WORKER_MAX_UPLOAD_MB")
    if size is None:
        held, limit_shown = "is larger than", units.mib_limit(limit)
    else:
        shown, limit_shown = units.mib_against(size, limit)
        held = f"holds {shown} ({size} bytes), more than"
    if part:  # a /v1/uploads part: its bytes are the form field `data`
        return APIError(413, f"the part {held} the {limit_shown} part limit ({setting}); send it in"
                        " smaller parts", param="data", code="file_too_large")
    return APIError(413, f"the file {held} the {limit_shown} limit ({setting}); a larger file goes"
                    " through /v1/uploads, then POST /v1/jobs with its file_id", param="file", code="file_too_large")


async def read_upload(request: Request, max_bytes: int, default_format: str = "json",
                      allow_file_id: bool = False) -> Upload:
    """Parse and check the form. Option combinations OpenAI's API refuses are refused the
    same way (400 `invalid_request_error`): `timestamp_granularities[]` needs
    `response_format=verbose_json` ("response_format must be set verbose_json to use timestamp
    granularities", OpenAI API reference), and `include[]=logprobs` is only for json output of
    models other than Whisper, so it is refused here. `default_format` is the format used when
    the form names none (json for /audio/transcriptions, verbose_json for /jobs, whose result
    is read later in any format)."""
    form = await request.form(max_files=1, max_fields=32)
    try:
        file = form.get("file")
        file_id = no_control(str(form.get("file_id") or ""), "file_id") if allow_file_id else ""
        if file_id and isinstance(file, UploadFile):
            raise APIError(400, "send either `file` or `file_id`, not both", param="file_id",
                           code="invalid_value")
        if not isinstance(file, UploadFile) and not file_id:
            raise APIError(400, "a multipart `file` field with the audio is required"
                           + (" (or `file_id` of a completed upload)" if allow_file_id else ""),
                           param="file", code="missing_file")
        if file_id:
            data, filename, content_type = b"", None, None
        else:
            if file.size is not None and file.size > max_bytes:
                raise too_large(max_bytes, size=file.size)
            data, filename, content_type = await file.read(), file.filename, file.content_type
        response_format = str(form.get("response_format") or default_format)
        if response_format not in FORMATS:
            raise APIError(400, f"unknown response_format '{shown(response_format)}'; use one of "
                           + ", ".join(FORMATS), param="response_format", code="invalid_value")
        language = str(form.get("language") or "").strip().lower() or None
        if language and language not in _languages(request):
            raise APIError(400, f"unsupported language '{shown(language)}' (use an ISO-639-1 code this model knows)",
                           param="language", code="invalid_value")
        try:
            temperature = float(form.get("temperature") or 0.0)
        except ValueError:
            temperature = -1.0
        if not 0.0 <= temperature <= 1.0:
            raise APIError(400, "temperature must be a number between 0 and 1",
                           param="temperature", code="invalid_value")
        granularities = set(form.getlist("timestamp_granularities[]")) | set(
            form.getlist("timestamp_granularities"))
        if granularities - {"word", "segment"}:
            raise APIError(400, "timestamp_granularities takes word and/or segment",
                           param="timestamp_granularities", code="invalid_value")
        if granularities and response_format != "verbose_json":
            raise APIError(400, "timestamp_granularities[] is only supported with"
                           f" response_format=verbose_json (got {response_format}); send"
                           " response_format=verbose_json or leave the granularities out",
                           param="timestamp_granularities", code="invalid_value")
        include = set(form.getlist("include[]")) | set(form.getlist("include"))
        if include:
            raise APIError(400, f"include[] ({shown_all(sorted(include))}) is not supported:"
                           " logprobs are only given for gpt-4o transcription models with"
                           " response_format=json; leave include[] out",
                           param="include", code="invalid_value")
        prompt = no_control(str(form.get("prompt") or ""), "prompt", lines=True)
        options = Options(language=language, prompt=prompt or None,
                          temperature=temperature, word_timestamps="word" in granularities)
        return Upload(data=data, filename=filename, content_type=content_type,
                      sha256=hashlib.sha256(data).hexdigest(), response_format=response_format,
                      options=options, model=no_control(str(form.get("model") or ""), "model"), file_id=file_id or None)
    finally:
        await form.close()


class BodyLimit:
    """ASGI middleware: 413 for request bodies over the upload limit, before and while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int, part_bytes: int | None = None):
        self.app, self.max_bytes = app, max_bytes + _SLACK
        self.part_bytes = (part_bytes or max_bytes) + _SLACK  # /v1/uploads/{id}/parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        part = path.startswith("/v1/uploads/") and path.endswith("/parts")
        limit = self.part_bytes if part else self.max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length and length.isdigit() and int(length) > limit:
            refusal = too_large(limit - _SLACK, part)
            response = error_response(413, refusal.message, param=refusal.param, code="file_too_large",
                                      headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit - _SLACK, part)
            return message

        await self.app(scope, counting_receive, send)
