"""Helpers shared by the worker tests: samples, audio made on the fly, word error rate."""

from __future__ import annotations

import io
import re
import socket
import sys
import wave
from pathlib import Path

DATA = Path(__file__).parent / "data"
BIN = Path(sys.executable).parent / "transcription-worker"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
LIMITS = {"rpm": 20, "concurrent_uploads": 2, "daily_audio_seconds": 120, "max_upload_mb": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(name: str) -> tuple[bytes, str]:
    """(WAV bytes, the exact text espeak-ng spoke) of a shipped sample."""
    return (DATA / f"{name}.wav").read_bytes(), (DATA / f"{name}.txt").read_text()


def padded(name: str, extra_ms: int) -> bytes:
    """A shipped sample with `extra_ms` of trailing silence: same words, a new SHA-256."""
    with wave.open(str(DATA / f"{name}.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams(params)
        w.writeframes(frames + b"\0\0" * (16 * extra_ms))
    return buf.getvalue()


def silence_wav(seconds: float, rate: int = 8000) -> bytes:
    """8-bit 8 kHz silence: long audio in few bytes (for the daily audio limit)."""

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(rate)
        w.writeframes(b"\x80" * int(seconds * rate))
    return buf.getvalue()


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(normalize(reference), normalize(hypothesis))


