"""Transcriptions through the router as a well-behaved HTTP client sends them.

Like the OpenAI SDKs, browsers and Go's http.Transport, it sends a request again when its
kept-alive connection was closed before any byte of a response: Caddy closes idle
connections when it loads a new config (a color switch), and a request written at that
instant never reached it. Anything else is the caller's to judge.
"""

from __future__ import annotations

import httpx


def transcribe(client: httpx.Client, router_url: str, audio: bytes) -> tuple[httpx.Response, int]:
    """POST one transcription; returns the response and how many times it was sent again (0 or 1)."""
    def send() -> httpx.Response:
        return client.post(f"{router_url}/v1/audio/transcriptions",
                           files={"file": ("hello.wav", audio, "audio/wav")}, data={"model": "whisper-1"})

    try:
        return send(), 0
    except httpx.RemoteProtocolError as exc:
        if "without sending a response" not in str(exc):
            raise
        return send(), 1
