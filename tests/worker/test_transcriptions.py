"""OpenAI-compatible transcription through the official client and through plain HTTP."""

from __future__ import annotations

import json

import openai
import pytest

from worker_helpers import padded, sample, wer

pytestmark = pytest.mark.integration


@pytest.fixture
def client(worker, api_key) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=worker.url + "/v1", max_retries=0, timeout=120)


def test_openai_client_json(client):
    audio, text = sample("hello")
    result = client.audio.transcriptions.create(model="whisper-1", file=("hello.wav", audio))
    assert wer(text, result.text) < 0.3, result.text


def test_openai_client_verbose_json_and_text(client):
    audio, text = sample("weather")
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("weather.wav", audio), response_format="verbose_json",
        language="en", timestamp_granularities=["word", "segment"])
    assert wer(text, verbose.text) < 0.3, verbose.text
    assert verbose.language == "en"
    assert abs(verbose.duration - 7.19) < 0.1
    assert verbose.segments and verbose.segments[-1].end <= verbose.duration + 0.5
    assert verbose.words and verbose.words[0].word.lower().strip(",.") == "the"
    plain = client.audio.transcriptions.create(
        model="whisper-1", file=("weather.wav", audio), response_format="text")
    assert isinstance(plain, str) and wer(text, plain) < 0.3


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_plain_http_every_format(http, fmt):
    # padded audio: a SHA-256 no other test sent, so this runs the model, not the stored copy
    audio, text = padded("hello", 10 + len(fmt)), sample("hello")[1]
    r = http.post("/v1/audio/transcriptions", files={"file": ("hello.wav", audio, "audio/wav")},
                  data={"model": "whisper-1", "response_format": fmt})
    assert r.status_code == 200, r.text
    if fmt == "json":
        assert r.headers["content-type"].startswith("application/json")
        assert wer(text, r.json()["text"]) < 0.3
    elif fmt == "verbose_json":
        body = r.json()
        assert set(body) >= {"task", "language", "duration", "text", "segments"}
        assert body["language"] == "en" and wer(text, body["text"]) < 0.3
        assert {"id", "start", "end", "text", "tokens", "avg_logprob"} <= set(body["segments"][0])
    elif fmt == "text":
        assert r.headers["content-type"].startswith("text/plain")
        assert wer(text, r.text) < 0.3
    elif fmt == "srt":
        lines = r.text.strip().splitlines()
        assert lines[0] == "1" and " --> " in lines[1] and "," in lines[1].split(" --> ")[0]
        cues = [ln for ln in lines if ln and " --> " not in ln and not ln.isdigit()]
        assert wer(text, " ".join(cues)) < 0.3
    elif fmt == "vtt":
        lines = r.text.strip().splitlines()
        assert lines[0] == "WEBVTT" and lines[2].startswith("00:00:00.000 --> ")
        cues = [ln for ln in lines[1:] if ln and " --> " not in ln]
        assert wer(text, " ".join(cues)) < 0.3


def test_identical_audio_is_served_from_stored_transcript(http, worker):
    import psycopg

    audio, text = padded("hello", 777), sample("hello")[1]
    first = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                      data={"response_format": "verbose_json"})
    second = http.post("/v1/audio/transcriptions", files={"file": ("b.wav", audio)},
                       data={"response_format": "verbose_json"})
    assert first.status_code == second.status_code == 200
    assert json.dumps(first.json(), sort_keys=True) == json.dumps(second.json(), sort_keys=True)
    assert wer(text, second.json()["text"]) < 0.3
    metrics = http.get("/metrics").text
    hits = [ln for ln in metrics.splitlines() if ln.startswith("worker_dedup_hits_total ")]
    assert hits and float(hits[0].split()[1]) >= 1
    import hashlib

    with psycopg.connect(worker.database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM transcripts WHERE audio_sha256 = %s",
                            (hashlib.sha256(audio).hexdigest(),)).fetchone()[0]
    assert rows == 1
