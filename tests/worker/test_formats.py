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
