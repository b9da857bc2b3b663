"""Breaker 46 F2: messages that print a size or a duration against a limit read like it.

A 30.3 s recording over a 30 s limit said "the audio is 30 s long, over the 30 s limit"; the
daily upload limit counted MiB and said "60 MB ... (44 MB used)"; a part of 8 MiB + 1 byte was
"larger than the 8 MB part limit". Now every such message goes through one formatter
(`transcription_worker.units`): MiB for counts of 1,048,576 bytes, a figure over a limit
rounded up, one under it rounded down. One real worker (PostgreSQL, Redis, moto S3, the
model) with small limits, over HTTP."""

from __future__ import annotations

import hashlib
import os
import secrets

import httpx
import pytest
from worker_helpers import AWS_ENV, DATA, send_part, silence_wav
from worker_support import serving, worker_env

pytestmark = pytest.mark.integration
MIB = 1024 * 1024
PASSAGE = (DATA / "passage.wav").read_bytes()  # 30.2999 s of speech, 16 kHz mono


@pytest.fixture(scope="module")
def limited(model_dir, postgres, redis_server, s3, tmp_path_factory):
    """A worker with WORKER_MAX_AUDIO_SECONDS=30, a 60 MiB daily upload limit, 8 MiB parts,
    20 MiB uploads, 2 MiB form files and 60 s of audio a day; yields (url, keys)."""
    os.environ.update(AWS_ENV)
    suffix = secrets.token_hex(4)
    bucket = f"brk46-units-{suffix}"
    s3.client().create_bucket(Bucket=bucket)
    keys = [f"sk-test-{secrets.token_hex(16)}" for _ in range(8)]
    env = worker_env(model_dir, WORKER_DATABASE_URL=postgres.make_database(f"brk46u_{suffix}"),
                     WORKER_S3_ENDPOINT_URL=s3.endpoint_url, WORKER_S3_BUCKET=bucket,
                     WORKER_REDIS_URL=redis_server.url,
                     WORKER_API_KEY_HASHES=",".join(hashlib.sha256(k.encode()).hexdigest() for k in keys),
                     WORKER_MAX_AUDIO_SECONDS="30", WORKER_RATE_LIMIT_DAILY_UPLOAD_MB="60",
                     WORKER_MAX_PART_MB="8", WORKER_MAX_UPLOAD_TOTAL_MB="20", WORKER_MAX_UPLOAD_MB="2",
                     WORKER_RATE_LIMIT_DAILY_AUDIO_SECONDS="60")
    with serving(env, tmp_path_factory.mktemp("brk46u") / "w.log") as (_, url):
        yield url, keys


@pytest.fixture
def http(limited):
    url, keys = limited
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {keys.pop()}"}) as client:
        yield client


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return err


def _create(http: httpx.Client, size: int) -> httpx.Response:
    return http.post("/v1/uploads", json={"filename": "a.wav", "bytes": size, "mime_type": "audio/wav",
                                          "purpose": "transcription"})


def _file_id(http: httpx.Client, audio: bytes) -> str:
    up = _create(http, len(audio))
    assert up.status_code == 200, up.text
    part = send_part(http, up.json()["id"], audio)
    assert part.status_code == 200, part.text
    done = http.post(f"/v1/uploads/{up.json()['id']}/complete", json={"part_ids": [part.json()["id"]]})
    assert done.status_code == 200, done.text
    return done.json()["file"]["id"]


def test_audio_over_the_limit_reads_over_it_through_uploads_and_a_job(http):
    err = _error(http.post("/v1/jobs", data={"file_id": _file_id(http, PASSAGE)}), 413, "audio_too_long")
    assert err["param"] == "file_id"
    assert "the audio is 30.3 s long, over the 30 s limit per recording" in err["message"], err


def test_audio_over_the_limit_reads_over_it_on_the_sync_route(http):
    r = http.post("/v1/audio/transcriptions", files={"file": ("passage.wav", PASSAGE)})
    err = _error(r, 413, "audio_too_long")
    assert "the audio is 30.3 s long, over the 30 s limit per recording" in err["message"], err


def test_daily_upload_limit_says_mib_and_the_bytes_used(http):
    """The tester's case: 44 MiB used of 60, a 20 MiB upload refused."""
    for size in (20 * MIB, 20 * MIB, 4 * MIB):
        assert _create(http, size).status_code == 200
    err = _error(_create(http, 20 * MIB), 429, "daily_upload_limit_exceeded")
    assert ("daily upload limit of 60 MiB for this API key: 44 MiB used today, and this upload's 20 MiB"
            " is more than the 16 MiB left") in err["message"], err
    assert " MB" not in err["message"], err


def test_daily_upload_used_just_under_the_limit_never_reads_as_it(http):
    """One byte under the 60 MiB a day: "59.99 MiB used", not "60 MB used" (the limit)."""
    for size in (20 * MIB, 20 * MIB, 20 * MIB - 1):
        assert _create(http, size).status_code == 200
    err = _error(_create(http, 2), 429, "daily_upload_limit_exceeded")
    assert "60 MiB for this API key: 59.99 MiB used today" in err["message"], err


def test_a_part_one_byte_over_the_part_limit_reads_over_it(http):
    up = _create(http, 20 * MIB).json()
    err = _error(send_part(http, up["id"], b"\1" * (8 * MIB + 1)), 413, "file_too_large")
    assert err["param"] == "data"
    assert ("the part holds 8.01 MiB (8388609 bytes), more than the 8 MiB part limit (WORKER_MAX_PART_MB)"
            in err["message"]), err


def test_an_upload_over_the_total_cap_says_both_in_mib(http):
    err = _error(_create(http, 20 * MIB + 1), 413, "file_too_large")
    assert err["param"] == "bytes"
    assert ("an upload may hold at most 20 MiB (WORKER_MAX_UPLOAD_TOTAL_MB, 20971520 bytes); this one is"
            " 20.01 MiB (20971521 bytes)") in err["message"], err


def test_a_form_file_over_the_limit_says_mib(http):
    r = http.post("/v1/audio/transcriptions", files={"file": ("big.wav", b"\0" * (2 * MIB + 1))})
    err = _error(r, 413, "file_too_large")
    assert "the file holds 2.01 MiB (2097153 bytes), more than the 2 MiB limit (WORKER_MAX_UPLOAD_MB)" in err["message"]


def test_daily_audio_used_just_under_the_limit_never_reads_as_it(http):
    """59.96 s of the day's 60 used (two jobs, each under the 30 s a recording): the old message
    said "(60.0 s used, this file is 1.0 s)"."""
    for seconds in (29.99, 29.97):
        assert http.post("/v1/jobs", files={"file": ("a.wav", silence_wav(seconds))}).status_code == 202
    err = _error(http.post("/v1/jobs", files={"file": ("b.wav", silence_wav(1))}), 429, "daily_audio_limit_exceeded")
    assert "daily audio limit of 60 s reached for this API key (59.96 s used; this file's 1 s is more than" in err[
        "message"], err


@pytest.mark.parametrize(("value", "limit", "expected"), [
    (30.2999375, 30, ("30.3", "30")), (30.0001, 30, ("30.01", "30")), (59.96, 60, ("59.96", "60")),
    (44, 60, ("44", "60")), (15.97, 15.96, ("15.97", "15.96")), (30, 30, ("30", "30")),
    (0.3 * 3, 0.9, ("0.9", "0.9")), (3600, 600, ("3600", "600")),
])
def test_a_figure_against_a_limit_never_reads_across_it(value, limit, expected):
    from transcription_worker import units

    assert units.against(value, limit) == expected


def test_mib_tells_one_byte_apart_from_the_limit():
    from transcription_worker import units

    assert units.mib_against(60 * MIB - 1, 60 * MIB) == ("59.99 MiB", "60 MiB")
    assert units.mib_against(60 * MIB + 1, 60 * MIB) == ("60.01 MiB", "60 MiB")
    assert units.mib(8 * MIB) == "8 MiB" and units.seconds(1.0) == "1 s" and units.mib(0.04 * MIB) == "0.04 MiB"


# --- breaker 47 F10: a limit reads as it is, a figure beside it as exactly as it needs -------
# WORKER_MAX_AUDIO_SECONDS=0.04 said "the audio is 4.2 s long, over the 0 s limit", and 4.15
# "the audio is 4.3 s long, over the 4.2 s limit" (hello.wav is 4.21 s)


@pytest.mark.parametrize(("value", "limit", "expected"), [
    (4.21, 0.04, ("4.21", "0.04")), (4.21, 4.15, ("4.21", "4.15")), (4.2, 4.15, ("4.2", "4.15")),
    (4.149, 4.15, ("4.149", "4.15")), (4.151, 4.15, ("4.151", "4.15")), (0.05, 0.04, ("0.05", "0.04")),
    (30.2999375, 30, ("30.3", "30")), (59.96, 60, ("59.96", "60")), (4.15, 4.15, ("4.15", "4.15")),
    (1, 60 - 59.96, ("1", "0.04")),  # a limit arithmetic left float noise on still reads as set
])
def test_a_limit_reads_as_it_is_and_the_figure_with_as_many_decimals_as_it_needs(value, limit, expected):
    from transcription_worker import units

    assert units.against(value, limit) == expected


def test_the_tester_audio_limits_read_as_set():
    from transcription_worker import units
    from transcription_worker.model import AudioTooLong

    assert "the audio is 4.21 s long, over the 0.04 s limit" in str(AudioTooLong(0.04, 4.21))
    assert "the audio is 4.21 s long, over the 4.15 s limit" in str(AudioTooLong(4.15, 4.21))
    assert "longer than the 4.15 s limit" in str(AudioTooLong(4.15))
    assert units.seconds_against(4.21, 4.15) == ("4.21 s", "4.15 s")
    assert units.seconds_limit(0.04) == "0.04 s" and units.seconds_limit(30.0) == "30 s"
    assert units.mib_limit(60 * MIB) == "60 MiB" and units.mib_limit(2.75 * MIB) == "2.75 MiB"
    assert units.mib_against(60 * MIB - 1, 60 * MIB) == ("59.99 MiB", "60 MiB")


def _pairs() -> list[tuple[float, float]]:
    """(value, limit): limits as settings are written (short decimals), values on them, a hair
    or a byte either side, near and far, and at random (seeded: the same pairs every run)."""
    import random

    rng = random.Random(46)
    limits = [0.04, 0.1, 0.5, 1, 2.75, 4.15, 8, 15.96, 30, 60, 123.456, 600, 3600, 14400, 0.001, 99.99]
    pairs = []
    for limit in limits:
        for delta in (0, 1e-9, 1e-6, 1e-4, 0.001, 0.004, 0.005, 0.006, 0.01, 0.049, 0.05, 0.06, 0.1, 0.5, 1):
            for value in (limit + delta * limit, limit - delta * limit, limit + delta, limit - delta):
                if value >= 0:
                    pairs.append((value, limit))
        pairs += [(rng.uniform(0, 2 * limit), limit) for _ in range(20)]
        pairs += [(round(rng.uniform(0, 2 * limit), rng.randint(0, 4)), limit) for _ in range(10)]
    for mib in (1, 2, 8, 20, 60):  # sizes in MiB a byte either side of a MiB limit
        pairs += [((mib * MIB + d) / MIB, mib) for d in (-2, -1, 0, 1, 2, 1000, -1000)]
    return pairs


@pytest.mark.parametrize(("value", "limit"), _pairs())
def test_shown_figures_compare_as_the_numbers_and_the_limit_parses_back(value, limit):
    import math

    from transcription_worker import units

    shown, limit_shown = units.against(value, limit)
    assert float(limit_shown) == limit, (value, limit, limit_shown)  # the limit as it is
    if math.isclose(value, limit, rel_tol=1e-12, abs_tol=1e-12) and value <= limit:  # float noise under it
        assert shown == limit_shown
    elif value > limit:  # refused by an exact comparison: never reads as equal (breaker 48 F6)
        assert float(shown) > float(limit_shown), (value, limit, shown, limit_shown)
    else:
        assert float(shown) < float(limit_shown), (value, limit, shown, limit_shown)
    assert value == 0 or float(shown) != 0
    # the figure is as close as the limit's last decimal (one at least) tells: 4.21 over 4.15 is
    # never "4.3"
    unit = 10.0 ** -max(1, len(limit_shown.partition(".")[2]))
    assert abs(float(shown) - value) <= unit * (1 + 1e-9), (value, limit, shown, limit_shown)
    assert limit_shown == units.exact(limit)  # as it reads alone


@pytest.mark.parametrize(("value", "limit"), [
    (20, 16.000123977661133), (16, 16.000123977661133), (2 / MIB, 1 / MIB), (0, 1 / MIB),
    (1, 60 - 59.959999999999994), (59.96, 60.00000000123),
])
def test_a_limit_with_no_short_decimal_form_still_compares_right(value, limit):
    """An amount left (a limit less what was used, bytes in MiB) has no short form: it is shown
    as a figure, and the two texts still compare as the numbers do."""
    from transcription_worker import units

    shown, limit_shown = units.against(value, limit)
    assert float(limit_shown) != 0
    assert (float(shown) > float(limit_shown)) if value > limit else (float(shown) < float(limit_shown))


def test_breaker_48_figures_read_on_their_side_and_near_their_value():
    """Breaker 48 F6: "the audio is 4.21 s long, over the 4.21 s limit" for a 4.2099999999999 s
    limit; "this upload's 0.2 MiB is more than the 0.1 MiB left" for 0.13 MiB of 0.1004 left."""
    from transcription_worker import units

    shown, limit_shown = units.seconds_against(4.21, 4.2099999999999)
    assert shown != limit_shown and float(shown[:-2]) > float(limit_shown[:-2]), (shown, limit_shown)
    assert units.mib_against(134_764, int(0.1004 * MIB)) == ("0.13 MiB", "0.1 MiB")


def test_a_value_that_is_not_finite_is_shown_not_raised():
    """Breaker 49 F9: against(inf, 30) raised OverflowError, against(nan, 30) ValueError."""
    from transcription_worker import units

    assert units.against(float("inf"), 30) == ("inf", "30")
    assert units.against(float("nan"), 30)[0] == "nan"


@pytest.mark.parametrize(("value", "left", "expected"), [
    (62.599875, 42.813375, ("62.6 s", "42.8 s")), (5.0, 4.95, ("5 s", "4.95 s")), (1.0, 0.0, ("1 s", "0 s")),
    (30.01, 30.0, ("30.01 s", "30 s")),
])
def test_what_is_left_of_a_limit_reads_as_a_figure_not_as_a_limit_set(value, left, expected):
    """Breaker 57 F7: "this file's 62.599875 s is more than the 42.813375 s left", and "this
    upload's 1001 MiB is more than the 999.999999046 MiB left": what is left was shown as a
    limit as set whenever it had a short decimal form by chance. It reads as a figure now, with
    as many decimals as tell the two apart."""
    from transcription_worker import units

    assert units.seconds_against(value, left, limit_is_set=False) == expected
    assert units.mib_against(1001 * MIB, 1000 * MIB - 1, limit_is_set=False) == ("1001 MiB", "1000 MiB")
    assert units.mib_against(16 * MIB + 1, 16 * MIB, limit_is_set=False) == ("16.01 MiB", "16 MiB")
