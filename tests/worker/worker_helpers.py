"""Helpers shared by the worker tests: samples, audio made on the fly, word error rate."""

from __future__ import annotations

import io
import re
import socket
import sys
import time
import uuid
import wave
from pathlib import Path
from urllib.parse import urlparse

DATA = Path(__file__).parent / "data"
BIN = Path(sys.executable).parent / "transcription-worker"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
LIMITS = {"rpm": 20, "concurrent_uploads": 2, "daily_audio_seconds": 120, "max_upload_mb": 2,
          "max_audio_seconds": 600}


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


def reversed_speech(name: str) -> bytes:
    """A shipped sample played backwards: speech-like sound in no language, which makes
    Whisper loop to its token limit on every window (breaker 29 F5: 30 s of the passage
    took 49 s of 2 cores on the sequential path, every window at temperature 1.0)."""
    import numpy as np

    with wave.open(str(DATA / f"{name}.wav")) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setparams(params)
        w.writeframes(np.frombuffer(frames, dtype=np.int16)[::-1].tobytes())
    return buf.getvalue()


def silence_wav(seconds: float, rate: int = 8000) -> bytes:
    """8-bit 8 kHz silence: long audio in few bytes (for the daily audio limit)."""

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(rate)
        w.writeframes(b"\x80" * int(seconds * rate))
    return buf.getvalue()


def silence_flac(seconds: float, rate: int = 8000, hide_duration: bool = False) -> bytes:
    """FLAC of `seconds` of silence, encoded with PyAV: an hour is about 650 KB. With
    `hide_duration` the STREAMINFO total-samples field is zeroed (legal: "unknown"), so
    nothing in the file says how long it is and only decoding can tell."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        block, total, pts = rate * 10, int(seconds * rate), 0
        zeros = np.zeros((1, block), dtype=np.int16)
        while pts < total:
            n = min(block, total - pts)
            frame = av.AudioFrame.from_ndarray(zeros[:, :n], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            for packet in stream.encode(frame):
                out.mux(packet)
            pts += n
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(buf.getvalue())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    if hide_duration:  # bytes 18-25: rate(20) channels(3) bits(5) total samples(36)
        packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def metric(text: str, name: str) -> float:
    """The value of an unlabelled series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(normalize(reference), normalize(hypothesis))




def wait_for_job(http, job_id: str, timeout: float = 300) -> dict:
    """Poll the job's row in PostgreSQL (not the API: polls would count against the key's
    requests per minute), then read the job once through the API."""
    import psycopg

    database_url = http.worker.database_url
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row and row[0] in ("succeeded", "failed"):
            return http.get(f"/v1/jobs/{job_id}").json()
        assert time.monotonic() < deadline, f"job {job_id} still {row} after {timeout}s"
        time.sleep(0.2)


def _samples(name: str):
    import numpy as np

    with wave.open(str(DATA / f"{name}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def _speed(samples, factor: float):
    """Play `factor` times faster (pitch moves with it): another speaker, as far as the model
    is concerned."""
    import numpy as np

    n = int(len(samples) / factor)
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)),
                     samples).astype(np.int16)


# (sample, speed) pieces of the long recording: the 30 s passage, the weather report and the
# greeting, at five speeds, in an order that never repeats the same piece back to back.
LONG_PIECES = [("passage", 1.0), ("weather", 1.0), ("hello", 0.92), ("passage", 1.12),
               ("weather", 0.9), ("passage", 0.88), ("hello", 1.1), ("weather", 1.15),
               ("passage", 1.05), ("hello", 1.0), ("weather", 0.95), ("passage", 0.95),
               ("hello", 0.88), ("passage", 1.0)]


def long_recording(min_seconds: float = 180, pieces=None, gap_ms: int = 700) -> tuple[bytes, str]:
    """(16 kHz mono WAV, reference text) of varied speech at least `min_seconds` long, built
    from the shipped samples (espeak-ng speech at several speeds, 0.7 s pauses between
    pieces); pieces repeat from the start until the length is reached."""
    import numpy as np

    pieces = pieces or LONG_PIECES
    parts, texts, total, i = [], [], 0, 0
    gap = np.zeros(16 * gap_ms, dtype=np.int16)
    while total < min_seconds * 16000:
        name, factor = pieces[i % len(pieces)]
        clip = _speed(_samples(name), factor) if factor != 1.0 else _samples(name)
        parts += [clip, gap]
        texts.append((DATA / f"{name}.txt").read_text().strip())
        total += len(clip) + len(gap)
        i += 1
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.concatenate(parts).tobytes())
    return buf.getvalue(), " ".join(texts)


def to_flac(wav: bytes) -> bytes:
    """A 16 kHz mono 16-bit WAV re-encoded losslessly as FLAC (PyAV): about half the bytes."""
    import av
    import numpy as np

    with wave.open(io.BytesIO(wav)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        rate = w.getframerate()
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        for start in range(0, len(samples), rate * 10):
            chunk = samples[start:start + rate * 10].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


# Where the spoken passages sit in the hour-long recording (seconds from the start).
SPARSE_HOUR = [(30, "passage"), (600, "weather"), (1260, "hello"), (1800, "passage"),
               (2700, "weather"), (3540, "passage")]


def sparse_hour_mp3(path: Path, minutes: float = 60, places=None) -> str:
    """Write `minutes` of MP3 (16 kHz mono, 128 kbit/s CBR: 57.6 MB an hour) to `path`: a
    low noise floor (about -64 dBFS, which the VAD skips) with the shipped samples spoken at
    the `places` given as (seconds, sample name). Returns the text spoken, in order. Encoded
    10 s at a time with PyAV's libmp3lame at its fastest setting."""
    import av
    import numpy as np

    rate, places = 16000, places or SPARSE_HOUR
    total = int(minutes * 60 * rate)
    audio = (np.random.default_rng(7).standard_normal(total) * 20).astype(np.int16)
    texts = []
    for at, name in sorted(places):
        clip = _samples(name)
        audio[at * rate: at * rate + len(clip)] += clip[: max(0, total - at * rate)]
        texts.append((DATA / f"{name}.txt").read_text().strip())
    with av.open(str(path), "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.bit_rate = 128_000
        stream.codec_context.options = {"compression_level": "9"}  # lame -q 9: fastest
        for start in range(0, total, rate * 10):
            chunk = np.ascontiguousarray(audio[start:start + rate * 10].reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return " ".join(texts)


def send_part(http, upload_id: str, data: bytes):
    """POST one part (form field `data`) of an upload with the client `http`."""
    return http.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("part", data)})


def drop_mid_part(base_url: str, key: str | None, upload_id: str, data: bytes) -> None:
    """A client whose connection dies half-way through a part (to the worker or the router
    at `base_url`; no Authorization header when `key` is None)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"part\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    url = urlparse(base_url)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall((f"POST /v1/uploads/{upload_id}/parts HTTP/1.1\r\nHost: {url.netloc}\r\n"
                      f"{auth}Content-Length: {len(body)}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        sock.sendall(body[: len(body) // 2])
