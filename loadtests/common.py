"""What the locustfiles share: the speech samples and the request helpers.

The samples are the worker's own test recordings (tests/worker/data, 16 kHz mono WAV), so
the load is real speech the model has to decode. Each upload gets a few random silent
frames appended: new bytes, so the worker's SHA-256 transcript store misses and every
request costs a real transcription instead of a cache hit. Set LOADTEST_AUDIO_DIR to use
other recordings (the Kubernetes manifests mount them there).

Every request carries `Cache-Control: no-cache` (the worker then runs the model even for
audio it has stored: a load test measures the model, not the transcript store) and, when
a key is set, `Authorization: Bearer KEY`. The key comes from $LOADTEST_API_KEY, else from
$OPSCTL_WORKER_API_KEY (deploy.api_key_env's default); opsctl sets it from the variable its
environment names, so plain `locust -f` and `opsctl loadtest run` send the same headers.
"""

from __future__ import annotations

import io
import os
import random
import wave
from functools import lru_cache
from pathlib import Path

import gevent
from urllib3 import encode_multipart_formdata


def audio_dir() -> Path:
    """Where the recordings are: $LOADTEST_AUDIO_DIR, else the repository's tests/worker/data
    (read at each call: one process may run several load tests)."""
    return Path(os.environ.get("LOADTEST_AUDIO_DIR") or Path(__file__).resolve().parent.parent / "tests" / "worker" / "data")


# size class -> recording: short (~4 s), medium (~7 s), long (~30 s)
SAMPLES = {"short": "hello.wav", "medium": "weather.wav", "long": "passage.wav"}
JOB_TIMEOUT_S = float(os.environ.get("LOADTEST_JOB_TIMEOUT", "120"))
POLL_INTERVAL_S = 0.5


def missing_samples() -> str | None:
    """Why the speech samples can't be read, or None: what `opsctl loadtest run` checks before
    a run (a user class's `preflight`), so a copied loadtests/ without them is one line, not
    every request failing on the target's account."""
    folder = audio_dir()
    missing = [name for name in SAMPLES.values() if not (folder / name).is_file()]
    if missing:
        return (f"the load test's speech samples {', '.join(missing)} are not in {folder}; set LOADTEST_AUDIO_DIR "
                "to a folder holding them (the repository's tests/worker/data has them)")
    for name in SAMPLES.values():  # there but no recording (breaker 44 T11: a 0-byte file failed every request)
        try:
            if not _read(folder / name)[1]:
                raise EOFError("no audio frames")
        except (wave.Error, EOFError, OSError) as exc:
            return (f"the load test's speech sample {folder / name} is not a readable WAV recording ({exc or 'empty'}); "
                    "replace it, or set LOADTEST_AUDIO_DIR to a folder of good ones")
    return None


def _api_keys() -> list[str]:
    return [k for k in (os.environ.get("LOADTEST_API_KEY"), os.environ.get("OPSCTL_WORKER_API_KEY")) if k]


def body_text(resp, limit: int = 200) -> str:
    """The start of an answer's body for a failure message, the API key masked: a target that
    echoes the request's Authorization header in its error page must not put the key into
    the reports."""
    text = (resp.text or "")[:limit + 4096]  # room for the longest spelling of a key across the cut
    try:  # every spelling opsctl masks (encoded, any letter case), before the cut (breaker 45 F4)
        from opsctl.redact import credentials, forms, mask_forms
    except ImportError:  # run by a Locust image without opsctl: the key as sent
        for key in _api_keys():
            text = text.replace(key, "***")
        return text[:limit]
    # and every secret the run's opsctl remembered: in a run in opsctl's process the users send
    # the key of deploy.api_key_env, which is in neither variable (breaker 47 F3)
    return credentials(mask_forms(text, {f for key in _api_keys() if key for f in forms(key)}))[:limit]


def json_answer(resp) -> dict | None:
    """The answer's JSON object, or None after failing the entry (`resp` is a catch_response
    context): a body that is not JSON (a proxy's HTML error page) or not an object. Raised
    inside the with-block, the error left the request neither a success nor a failure, so it
    vanished from every figure a gate judges."""
    try:
        body = resp.json()
    except Exception:  # noqa: BLE001 - ValueError, and what decoding the body raises first: no text
        # (TypeError, a binary body), a charset Python doesn't know (LookupError), JSON nested past
        # the recursion limit (RecursionError): each left the entry uncounted (breaker 52 K1)
        resp.failure(f"HTTP {resp.status_code} but not JSON: {_shown_body(resp)!r}")
        return None
    if not isinstance(body, dict):
        resp.failure(f"HTTP {resp.status_code} but a JSON {type(body).__name__}, not an object")
        return None
    return body


def _shown_body(resp) -> str:
    """The start of a body for a failure line; a body that can't be read as text says so."""
    try:
        return body_text(resp, 80)
    except Exception:  # noqa: BLE001 - the same decoding errors as json_answer's
        return f"({len(resp.content or b'')} bytes that are not text)"


def transcript_problem(result) -> str | None:
    """Why `result` holds no transcript, or None. Every request the users send asks for
    `response_format=json`, so a transcript is an object with a non-empty string `text`; a bare
    string (a proxy's HTML page as a job's result) is none (breaker 52 K10)."""
    if not isinstance(result, dict):
        return f"no transcript in the answer (a JSON {type(result).__name__}, not an object)"
    text = result.get("text")
    if not isinstance(text, str) or not text.strip():
        return "empty transcript" if isinstance(text, str) else "no transcript in the answer"
    return None


def judge_transcription(resp) -> None:
    """Fail the entry (`resp`: a catch_response context) unless it is a transcription: 200 and
    a JSON object with a non-empty `text`. Every user that transcribes judges with this, so none
    counts a proxy's 200 maintenance page as a transcription (breaker 50 G1: StressUser did)."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {_shown_body(resp)}")
    elif (answer := json_answer(resp)) is not None and (problem := transcript_problem(answer)):
        resp.failure(problem)


# what the worker's probes answer when it is up: /healthz {"status": "ok"}, /readyz {"status": "ready"}
LIVE = {"/healthz": "ok", "/readyz": "ready"}


def judge_probe(resp, path: str) -> None:
    """Fail the entry unless it is the worker's answer to `path` (/healthz or /readyz) when it is
    up: 200 and a JSON object whose `status` is LIVE[path] (a proxy's 200 page in front of a
    stopped service, or another service's {"status": "DOWN"}, is no live worker)."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {_shown_body(resp)}")
    elif (answer := json_answer(resp)) is not None and answer.get("status") != LIVE[path]:
        resp.failure(f"HTTP 200 but status {answer.get('status')!r}, not the live worker's {LIVE[path]!r}")


class StillInFlight(Exception):
    """A request or job unfinished when the run stopped: a failure (a timeout). opsctl counts
    failures of this class name as 'still in flight at the end'."""


def let_a_pending_stop_land() -> None:
    """Yield to the event loop once, at the start of a flow that reports itself.

    Locust stops a user waiting between tasks by killing its greenlet; when the wait ends in
    the same instant, the user starts its next task before the kill lands, and the kill
    then lands inside the flow, which would report it "not done when the run stopped": a
    failure the target never caused. One yield delivers a kill already queued, before the
    flow begins and before anything is reported.
    """
    gevent.sleep(0)


def _recording(size: str) -> tuple[wave._wave_params, bytes]:
    return _read(audio_dir() / SAMPLES[size])


@lru_cache(maxsize=None)
def _read(path: Path) -> tuple[wave._wave_params, bytes]:
    with wave.open(str(path)) as src:
        return src.getparams(), src.readframes(src.getnframes())


def request_headers() -> dict[str, str]:
    """The headers every user sends (FastHttpUser.default_headers)."""
    headers = {"Cache-Control": "no-cache"}
    key = os.environ.get("LOADTEST_API_KEY") or os.environ.get("OPSCTL_WORKER_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def unique_wav(size: str) -> bytes:
    """The recording of that size plus 1-1600 silent frames (< 0.1 s): unique bytes."""
    params, frames = _recording(size)
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames + b"\x00\x00" * random.randint(1, 1600))
    return out.getvalue()


def padded_wav(size: str, at_least: int) -> bytes:
    """The recording of that size followed by silence up to at least `at_least` bytes, plus
    1-1600 random silent frames: a longer, unique file for chunked uploads (the worker's
    voice activity filter skips the silence, so it costs decoding, not model time)."""
    params, frames = _recording(size)
    header = 44  # a plain PCM WAV header
    pad = max(0, at_least - header - len(frames))
    pad += pad % 2 + 2 * random.randint(1, 1600)
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames + b"\x00" * pad)
    return out.getvalue()


def transcription_form(size: str) -> tuple[bytes, dict[str, str]]:
    """The multipart body of an OpenAI-style upload and its Content-Type header.

    FastHttpUser's client has no `files=`; urllib3's encoder builds the same body
    requests would.
    """
    body, content_type = encode_multipart_formdata({
        "file": (f"{size}.wav", unique_wav(size), "audio/wav"),
        "model": "whisper-1",
        "response_format": "json",
    })
    return body, {"Content-Type": content_type}
