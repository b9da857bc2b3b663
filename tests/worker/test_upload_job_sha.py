"""A job's transcript is stored under the SHA-256 of the bytes it transcribed (issue 26,
the review's store-poisoning case): a /v1/uploads file is keyed by upload, not by content, so the
object a job downloads may no longer be the audio it was made for; such a job fails and
nothing reaches the shared transcript store."""
from __future__ import annotations

import hashlib
import io
from types import SimpleNamespace

from transcription_worker import jobs
from transcription_worker.model import Options


class _Db:
    def __init__(self):
        self.saved, self.finished = [], []

    def mark_running(self, job_id, owner):
        return True

    def save_transcript(self, *args):
        self.saved.append(args)

    def finish_job(self, job_id, owner, **kw):
        self.finished.append(kw)


def test_a_job_whose_audio_changed_stores_nothing_and_fails(monkeypatch):
    # the model is not what is tested: decoding and transcribing answer at once
    monkeypatch.setattr(jobs, "decode", lambda source, limit: [0.0] * 16_000)
    monkeypatch.setattr(jobs, "transcribe_audio", lambda *a: {"text": "hello", "duration": 1.0})
    audio = b"RIFF the recording the object holds now"
    sha = hashlib.sha256(audio).hexdigest()
    store = SimpleNamespace(download=lambda key: (io.BytesIO(audio), sha, len(audio)))
    state = SimpleNamespace(db=_Db(), store=store, owner="w1", settings=SimpleNamespace(max_audio_seconds=60),
                            transcriber=SimpleNamespace(name="whisper-base"))
    jobs.run_job(state, "job_1", "audio/uploads/upload_x", "a" * 64, Options())  # made for other audio
    assert state.db.saved == []
    assert len(state.db.finished) == 1 and "not the audio this job was made for" in state.db.finished[0]["error"]
    jobs.run_job(state, "job_2", "audio/uploads/upload_x", sha, Options())  # the audio it was made for
    assert [s[0] for s in state.db.saved] == [sha] and state.db.finished[1] == {}
