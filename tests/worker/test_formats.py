"""Response formats rendered from one verbose_json document (no model needed)."""

from __future__ import annotations

from transcription_worker.formats import render

RESULT = {"task": "transcribe", "language": "en", "duration": 3725.5, "text": "Hello there. Bye.",
          "segments": [{"id": 0, "start": 0.0, "end": 1.25, "text": " Hello there."},
                       {"id": 1, "start": 3723.1234, "end": 3725.5, "text": " Bye."}]}


def test_srt_numbers_cues_and_uses_comma_milliseconds():
    assert render(RESULT, "srt") == ("1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n"
                                     "2\n01:02:03,123 --> 01:02:05,500\nBye.\n")


def test_vtt_has_header_and_dot_milliseconds():
    assert render(RESULT, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.\n\n"
                                     "01:02:03.123 --> 01:02:05.500\nBye.\n")


def test_json_text_and_verbose():
    assert render(RESULT, "json") == {"text": "Hello there. Bye."}
    assert render(RESULT, "text") == "Hello there. Bye.\n"
    assert render(RESULT, "verbose_json") is RESULT


def test_no_time_is_past_the_end_of_the_recording():
    """Breaker 29: on 59 s of tones the sequential loop's last segment ran 56-63 s, and its srt
    cue outlasted the audio. Whisper's timestamp tokens can point into the window's padding;
    the document clamps every segment and word time to the recording's duration."""
    from faster_whisper.transcribe import Segment, Word

    from transcription_worker.model import document

    words = [Word(start=55.2, end=58.9, word=" hum", probability=0.5),
             Word(start=58.9, end=62.4, word=" hum.", probability=0.4)]
    segments = [Segment(id=0, seek=0, start=0.0, end=30.0, text=" la", tokens=[1], avg_logprob=-1.0,
                        compression_ratio=1.0, no_speech_prob=0.1, words=None, temperature=0.0),
                Segment(id=1, seek=3000, start=56.0, end=63.0, text=" hum hum.", tokens=[2], avg_logprob=-1.0,
                        compression_ratio=1.0, no_speech_prob=0.1, words=words, temperature=0.0)]
    doc = document(iter(segments), "en", 59.0004, word_timestamps=True)
    assert doc["duration"] == 59.0
    assert [(s["start"], s["end"]) for s in doc["segments"]] == [(0.0, 30.0), (56.0, 59.0)]
    assert [(w["start"], w["end"]) for w in doc["words"]] == [(55.2, 58.9), (58.9, 59.0)]
    assert render(doc, "srt").endswith("00:00:56,000 --> 00:00:59,000\nhum hum.\n")
