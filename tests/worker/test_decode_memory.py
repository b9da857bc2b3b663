"""Decoding is bounded by the duration limit at any sample rate, whatever the header says.

A very low sample rate turns a few KB into hours of 16 kHz output: the decoder must count
and stop in steps of source *time*, not of source samples (a 10 Hz file with its length
hidden once resampled 100,000 samples, 320 MB, in one step before the limit could bite).
Peak memory is measured with tracemalloc, which sees numpy's and bytearray's allocations.
"""

from __future__ import annotations

import tracemalloc

import pytest
from worker_helpers import silence_flac

from transcription_worker.model import SAMPLE_RATE, AudioTooLong, decode


@pytest.mark.parametrize("rate", [10, 100, 8000])
def test_a_hidden_length_is_refused_with_memory_bounded_by_the_limit(rate):
    limit = 60
    audio = silence_flac(3 * 3600 if rate < 8000 else 600, rate=rate, hide_duration=True)
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong):
            decode(audio, max_seconds=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    bound = limit * SAMPLE_RATE * 6 + 8 * 1024 * 1024  # the documented bound, plus slack
    assert peak < bound, f"{rate} Hz: peak {peak / 2**20:.0f} MiB over {bound / 2**20:.0f} MiB"


def test_low_rate_audio_under_the_limit_still_decodes_whole():
    samples = decode(silence_flac(30, rate=100), max_seconds=60)
    assert abs(len(samples) / SAMPLE_RATE - 30) < 0.5
