"""Bad uploads get a 4xx in OpenAI's error shape, and the service keeps serving."""

from __future__ import annotations

import openai
import pytest
from worker_helpers import LIMITS, sample, wer

pytestmark = pytest.mark.integration


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("name,payload,code", [
    ("notes.txt", b"this is a text file, not audio\n" * 20, "invalid_audio"),
    ("empty.wav", b"", "invalid_audio"),
    ("truncated.wav", sample("hello")[0][:40], "invalid_audio"),
    ("noise.mp3", bytes(range(256)) * 64, "invalid_audio"),
])
def test_undecodable_uploads_are_400(http, name, payload, code):
    err = error_of(http.post("/v1/audio/transcriptions", files={"file": (name, payload)}), 400)
    assert err["code"] == code and err["param"] == "file"
    assert err["type"] == "invalid_request_error"


def test_unknown_response_format_is_400(http):
    r = http.post("/v1/audio/transcriptions", files={"file": ("h.wav", sample("hello")[0])},
                  data={"response_format": "docx"})
    err = error_of(r, 400)
    assert err["param"] == "response_format" and "docx" in err["message"]


@pytest.mark.parametrize("data,param", [({"language": "klingon"}, "language"),
                                        ({"temperature": "hot"}, "temperature")])
def test_bad_options_are_400(http, data, param):
    r = http.post("/v1/audio/transcriptions", files={"file": ("h.wav", sample("hello")[0])}, data=data)
    assert error_of(r, 400)["param"] == param


def test_missing_file_is_400(http):
    r = http.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert error_of(r, 400)["code"] == "missing_file"
    r = http.post("/v1/audio/transcriptions", json={"file": "x"})
    assert error_of(r, 400)["param"] == "file"


def test_over_the_size_limit_is_413(http):
    big = b"\0" * (LIMITS["max_upload_mb"] * 1024 * 1024 + 200_000)
    err = error_of(http.post("/v1/audio/transcriptions", files={"file": ("big.wav", big)}), 413)
    assert err["code"] == "file_too_large"

    def chunks():  # no Content-Length: the limit is enforced on the bytes received
        yield b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.wav\"\r\n\r\n"
        for _ in range(len(big) // 65536 + 1):
            yield b"\0" * 65536
        yield b"\r\n--xx--\r\n"

    r = http.post("/v1/audio/transcriptions", content=chunks(),
                  headers={"Content-Type": "multipart/form-data; boundary=xx"})
    assert error_of(r, 413)["code"] == "file_too_large"
    r = http.post("/v1/jobs", files={"file": ("big.wav", big)})
    assert error_of(r, 413)["code"] == "file_too_large"


def test_openai_client_sees_bad_input_as_bad_request(worker, api_key):
    client = openai.OpenAI(api_key=api_key, base_url=worker.url + "/v1", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model="whisper-1", file=("x.txt", b"not audio"))
    assert "decode" in str(exc.value)
    # ...and the service still serves a good request afterwards
    audio, text = sample("hello")
    ok = client.audio.transcriptions.create(model="whisper-1", file=("h.wav", audio),
                                            response_format="text")
    assert wer(text, ok) < 0.3
