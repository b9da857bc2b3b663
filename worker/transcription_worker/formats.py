"""Rendering a transcript in OpenAI's response formats.

Every format is made from the one verbose_json document the model produces (and the
database stores), so a deduplicated request can be answered in any format.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {
    "json": "application/json", "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def render(result: dict[str, Any], fmt: str) -> dict[str, Any] | str:
    """`result` is a verbose_json document; returns a dict (JSON formats) or text."""
    segments = result.get("segments", [])
    if fmt == "json":
        return {"text": result["text"]}
    if fmt == "verbose_json":
        return result
    if fmt == "text":
        return result["text"] + "\n"
    if fmt == "srt":
        blocks = [f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n"
                  f"{s['text'].strip()}\n" for i, s in enumerate(segments, start=1)]
        return "\n".join(blocks)
    if fmt == "vtt":
        blocks = [f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{s['text'].strip()}\n"
                  for s in segments]
        return "WEBVTT\n\n" + "\n".join(blocks)
    raise ValueError(fmt)
