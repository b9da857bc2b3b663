"""Speech samples for tests and benchmarks (made with espeak-ng, shipped in tests/worker/data)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

DATA = Path(__file__).resolve().parent / "worker" / "data"


def variant(name: str = "hello", n: int = 0) -> bytes:
    """The sample with n extra silent frames: new bytes, so the worker's SHA-256 cache misses
    and every request is a real transcription."""
    with wave.open(str(DATA / f"{name}.wav")) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames + b"\x00\x00" * n)
    return out.getvalue()
