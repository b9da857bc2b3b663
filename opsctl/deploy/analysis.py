"""Pre- and post-promotion analysis: is the new color really serving transcriptions?

Pre-promotion runs on the preview color directly (readiness, then a real transcription of
the bundled sample checked for its words), on the very first deploy too. Post-promotion
watches the promoted color's own /metrics over the analysis window while canary
transcriptions go through the router, and judges error rate and p95 on that window only.

Every request analysis sends carries `Cache-Control: no-cache` (the worker's contract: such a
request is always transcribed by the model, never answered from the transcript store), and
post-promotion judges only the color's real model runs (`worker_transcription_duration_seconds`),
never store hits (`worker_dedup_hits_total`): a window with no real transcription fails.

A driver may not reach a color directly (Kubernetes from outside the cluster: `url` is
None). Then pre-promotion is skipped and says so, never silently passed, and post-promotion
judges the canaries alone, through the router: their failure rate and their own p95.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from importlib import resources

import httpx

from opsctl.health.checks.http import bounded_request

MAX_WORD_ERROR = 0.3
MAX_ANSWER = 1024 * 1024  # bytes of a transcription answer (decompressed): the sample's is under 1 KB
TRANSCRIBE = "/v1/audio/transcriptions"


@dataclass
class Verdict:
    """An analysis or gate result: passed or not, and one line saying why."""

    ok: bool
    detail: str
    skipped: bool = False  # nothing could be checked from here; the step shows "skipped"
    gone: bool = False  # the checked process no longer accepts connections


# a word: a run of letters, digits and apostrophes in any script, except that each Chinese,
# Japanese or Korean character counts alone (those scripts put no spaces between words, so a
# hallucinated "ご視聴ありがとうございました" repeated would otherwise be one word)
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+(?:'[^\W_]+)*")


def _words(text: str) -> list[str]:
    """The words of `text`, NFKC-folded (full-width letters read as letters) and case-folded."""
    import unicodedata

    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def word_error(expected: str, heard: str) -> float:
    """Word error rate of `heard` against `expected`: (substitutions + deletions + insertions)
    / expected words, after lower-casing and dropping punctuation (jiwer's word alignment).
    Words added count: a transcript with Whisper's hallucinated tail ("Thank you." repeated
    after the speech) scored 0.00 when only missing words were counted (breaker 50 G2), and
    words of every script count (breaker 52 K2: a Japanese or Cyrillic tail was not seen).
    Can exceed 1.0; an empty `expected` makes any word heard an error of 1.0 per word."""
    import jiwer

    ref, hyp = " ".join(_words(expected)), " ".join(_words(heard))
    if not ref:
        return float(len(hyp.split()))
    return jiwer.process_words(ref, hyp).wer


def sample() -> tuple[bytes, str]:
    """(WAV bytes, expected transcript) of the sample bundled in opsctl.deploy."""
    files = resources.files("opsctl.deploy")
    return files.joinpath("sample.wav").read_bytes(), files.joinpath("sample.txt").read_text().strip()


# The worker's request option that skips its transcript store (the model runs every time).
NO_CACHE = {"Cache-Control": "no-cache"}


def auth_headers(api_key_env: str) -> dict:
    """The probes' API key, read from the variable opsctl.yaml names (never logged)."""
    key = os.environ.get(api_key_env, "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def analysis_headers(api_key_env: str) -> dict:
    """What every analysis request sends: the API key (when set) and `Cache-Control: no-cache`."""
    return {**auth_headers(api_key_env), **NO_CACHE}


def transcribe_check(base_url: str, headers: dict, timeout: float = 120.0) -> Verdict:
    """The bundled sample transcribed by the model (never the store) and checked for its words."""
    audio, expected = sample()
    try:  # bounded in total, not per read (a server trickling bytes held the check for ever), and
        # in size, decompressed (a small gzip answer inflated to gigabytes): breaker 52 K5
        resp = bounded_request("POST", f"{base_url}{TRANSCRIBE}", files={"file": ("sample.wav", audio, "audio/wav")},
                               data={"model": "whisper-1", "language": "en"}, headers={**headers, **NO_CACHE},
                               timeout=timeout, max_body=MAX_ANSWER)
    except httpx.HTTPError as exc:
        return Verdict(False, f"transcription request failed: {exc}")
    except ValueError as exc:  # over MAX_ANSWER
        return Verdict(False, f"transcription answer refused: {exc}")
    if resp.status_code != 200:
        return Verdict(False, f"transcription answered {resp.status_code}: {_shown(resp.text)}")
    heard = _transcript(resp)
    if heard is None:
        return Verdict(False, "transcription answered 200 without a transcript (not a JSON object with a "
                              f"'text' string; a proxy's or maintenance page?): {_shown(resp.text)}")
    wer = word_error(expected, heard)
    ok = wer < MAX_WORD_ERROR
    return Verdict(ok, f"word error {wer:.2f} (limit {MAX_WORD_ERROR}): heard {_heard(heard)}")


def _heard(text: str, limit: int = 200) -> str:
    """The transcript for a verdict line: quoted, its first `limit` characters and how long it
    was (a 20,000-word hallucination made a 300 KB step detail, record and event)."""
    text = " ".join(text.split())
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"


def _transcript(resp: httpx.Response) -> str | None:
    """The `text` of a transcription answer, or None when the body is not a JSON object with a
    string `text` (an HTML page, a list, null): such an answer is a failed check, never a crash
    that leaves traffic on a color whose canaries failed (breaker 50 G5)."""
    try:
        body = resp.json()
    except ValueError:
        return None
    text = body.get("text") if isinstance(body, dict) else None
    return text if isinstance(text, str) else None


def _shown(body: str) -> str:
    """An answer's body for a one-line verdict: its first 200 characters, blanks folded."""
    return " ".join(body[:200].split()) or "(empty body)"


# Post-promotion: how long the promoted color may answer /readyz with anything but 200 before
# the analysis fails: Kubernetes' default readinessProbe (period 10 s x failureThreshold 3).
# A worker saturated by real transcriptions misses probes while its dependency pings wait,
# without being broken; a refused connection (the process is gone) fails at once.
READY_GRACE_SECONDS = 30.0
# A canary is a real transcription of the sample: on a saturated machine it can take far
# longer than its audio; waiting for it gives the window a latency to judge instead of a
# timeout with nothing transcribed.
CANARY_TIMEOUT = 120.0


def ready_check(base_url: str) -> Verdict:
    """GET /readyz (5 s timeout): ok on 200; `gone` when the connection is refused."""
    try:
        resp = bounded_request("GET", f"{base_url}/readyz", timeout=5, max_body=64 * 1024)
    except ValueError as exc:  # an answer over the cap: no worker's readiness
        return Verdict(False, f"/readyz: {exc}")
    except httpx.ConnectError as exc:
        return Verdict(False, f"/readyz refused the connection, the process is gone: {exc}", gone=True)
    except httpx.HTTPError as exc:
        return Verdict(False, f"/readyz unreachable: {exc!r}")
    return Verdict(resp.status_code == 200, f"/readyz {resp.status_code}")


def pre_promotion(base_url: str | None, headers: dict) -> Verdict:
    """The preview's readiness, then a real transcription of the bundled sample (word error
    below MAX_WORD_ERROR). Skipped (ok) when `base_url` is None: not reachable from here."""
    if base_url is None:
        return Verdict(True, "the preview color is not reachable from here (run opsctl inside the "
                       "cluster to check it): readiness rests on its pods' /readyz probes", skipped=True)
    ready = ready_check(base_url)
    if not ready.ok:
        return ready
    return transcribe_check(base_url, headers)


@dataclass
class Snapshot:
    """One scrape of a color's /metrics, the counters post-promotion analysis compares."""

    errors: float  # 5xx answers on the /v1/ routes
    transcriptions: float  # real model runs: worker_transcription_duration_seconds_count
    buckets: dict[float, float]  # their cumulative counts by upper bound (seconds)
    store_hits: float  # worker_dedup_hits_total: answered from stored transcripts, never judged


class ScrapeError(Exception):
    """A color's /metrics could not be read or answered anything but 200 (the message says)."""


def scrape(base_url: str, headers: dict) -> Snapshot:
    """Read a color's /metrics (with the API key: the main port asks for one when keys are on).

    Raises ScrapeError when /metrics cannot be read; analysis then fails, never passes blind.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        resp = bounded_request("GET", f"{base_url}/metrics", headers=headers, timeout=5)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"{base_url}/metrics unreachable: {exc}") from None
    except ValueError as exc:  # over bounded_request's cap
        raise ScrapeError(f"{base_url}/metrics: {exc}") from None
    if resp.status_code != 200:
        hint = "; set the API key in the variable deploy.api_key_env names" if resp.status_code in (401, 403) else ""
        raise ScrapeError(f"{base_url}/metrics answered {resp.status_code}{hint}")
    errors = transcriptions = hits = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "worker_requests_total" and s.labels.get("route", "").startswith("/v1/"):
                if s.labels.get("status", "").startswith("5"):
                    errors += s.value
            elif s.name == "worker_transcription_duration_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "worker_transcription_duration_seconds_count":
                transcriptions += s.value
            elif s.name == "worker_dedup_hits_total":
                hits += s.value
    return Snapshot(errors, transcriptions, buckets, hits)


def p95_ms(before: Snapshot, after: Snapshot) -> float | None:
    """The window's 95th percentile of real transcriptions, interpolated in its histogram
    bucket as Prometheus' histogram_quantile does (so it can be off by up to a bucket's width)."""
    deltas = sorted((le, after.buckets.get(le, 0) - before.buckets.get(le, 0)) for le in after.buckets)
    count = deltas[-1][1] if deltas else 0
    if count <= 0:
        return None
    rank = 0.95 * count
    lower, below = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            if le == float("inf"):
                return lower * 1000
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return (lower + (le - lower) * share) * 1000
        lower, below = le, cumulative
    return None


def judge_window(before: Snapshot, after: Snapshot, max_error_pct: float, max_p95_ms: float) -> Verdict:
    """Error rate and p95 over the window's real transcriptions; none at all is a failure.

    Error rate = 5xx answers / (real transcriptions + 5xx answers): store hits count in neither.
    """
    if (went_down := _went_down(before, after)) is not None:
        return Verdict(False, went_down)
    real = after.transcriptions - before.transcriptions
    errors = after.errors - before.errors
    hits = after.store_hits - before.store_hits
    ignored = f" ({hits:.0f} store hits not judged)" if hits else ""
    if real <= 0:
        return Verdict(False, f"0 real transcriptions by the promoted color in the window{ignored}, "
                              f"{errors:.0f} errors: nothing to judge its model by")
    error_pct = 100.0 * errors / (real + errors)
    if (unread := _histogram_problem(before, after, real)) is not None:  # never passed blind
        shown, p95 = f"n/a ({unread}: the p95 can't be judged)", None
    else:  # +Inf holds every transcription and a finite bucket exists: p95_ms finds the rank
        p95, shown = p95_ms(before, after), None
        top = max(le for le in after.buckets if le != float("inf"))
        if p95 >= top * 1000 and _share_above(before, after, top) > 0.05:
            # histogram_quantile answers the top finite bound when the 95th percentile lies past
            # it: the real p95 is unknown and larger, so a limit above that bound could never fail
            shown, p95 = f"above {top * 1000:.0f} ms (past the histogram's top bucket)", float("inf")
    detail = (f"judged {real:.0f} real transcriptions{ignored}: error rate {error_pct:.1f}% "
              f"(max {max_error_pct}%), p95 {shown or f'{p95:.0f} ms'} (max {max_p95_ms:.0f} ms)")
    return Verdict(error_pct <= max_error_pct and p95 is not None and p95 <= max_p95_ms, detail)


def _went_down(before: Snapshot, after: Snapshot) -> str | None:
    """Why the window can't be judged when a counter of the color went down between the two
    scrapes (its process restarted: what the new one counted says nothing of the old one's
    errors; breaker 52 K4 judged -33 % errors), or when one is not a number; else None."""
    pairs = [(before.errors, after.errors), (before.transcriptions, after.transcriptions),
             (before.store_hits, after.store_hits)]
    pairs += [(before.buckets.get(le, 0.0), n) for le, n in after.buckets.items()]
    if any(not (math.isfinite(a) and math.isfinite(b)) for a, b in pairs):
        return "the promoted color's metrics hold a value that is not a number: its window can't be judged"
    if any(b < a for a, b in pairs) or any(le not in after.buckets for le in before.buckets):
        return ("the promoted color's counters went down during the window (its worker restarted): "
                "its window can't be judged")
    return None


def _histogram_problem(before: Snapshot, after: Snapshot, real: float) -> str | None:
    """Why the window's latency histogram can't give a p95 of its `real` transcriptions: no
    +Inf bucket, no finite bucket, or fewer observations than were counted (breaker 52 K3: a
    histogram of +Inf alone gave a p95 of 0 ms); else None."""
    inf = float("inf")
    if inf not in after.buckets:
        return "its histogram has no +Inf bucket"
    if not any(le != inf for le in after.buckets):
        return "its histogram has no finite bucket"
    observed = after.buckets[inf] - before.buckets.get(inf, 0.0)
    if observed != real:
        return f"its histogram holds {observed:.0f} of the {real:.0f} transcriptions counted"
    return None


def _share_above(before: Snapshot, after: Snapshot, top: float) -> float:
    """The share of the window's observations above the top finite bucket bound `top` (s)."""
    count = after.buckets.get(float("inf"), 0) - before.buckets.get(float("inf"), 0)
    within = after.buckets.get(top, 0) - before.buckets.get(top, 0)
    return (count - within) / count if count > 0 else 0.0


def post_promotion(color_url: str | None, router_url: str | None, window: float, max_error_pct: float,
                   max_p95_ms: float, headers: dict, probe_every: float = 1.0) -> Verdict:
    """Watch the window; canary transcriptions through the router give it traffic to judge."""
    if color_url is None:
        if router_url is None:
            return Verdict(True, "neither the promoted color nor a router_url is reachable from here; "
                           "set router_url in opsctl.yaml to analyse through the router", skipped=True)
        return canaries(router_url, window, max_error_pct, max_p95_ms, headers, probe_every)
    try:
        before = scrape(color_url, headers)
    except ScrapeError as exc:
        return Verdict(False, f"cannot read the promoted color's metrics: {exc}")
    deadline = time.monotonic() + window
    probes = failed_probes = 0
    unready_since: float | None = None

    def still_ready() -> Verdict | None:
        """None while the color is ready or within its grace; a failing verdict otherwise."""
        nonlocal unready_since
        ready = ready_check(color_url)
        if ready.ok:
            unready_since = None
            return None
        unready_since = unready_since or time.monotonic()
        if ready.gone or time.monotonic() - unready_since >= READY_GRACE_SECONDS:
            return Verdict(False, f"promoted color stopped being ready during the analysis window ({ready.detail})")
        return None

    while time.monotonic() < deadline:
        if router_url:
            probes += 1
            if not transcribe_check(router_url, headers, timeout=max(window, CANARY_TIMEOUT)).ok:
                failed_probes += 1
        if (failed := still_ready()) is not None:
            return failed
        time.sleep(min(probe_every, max(0.0, deadline - time.monotonic())))
    while unready_since is not None:  # not ready when the window closed: settle it either way
        time.sleep(probe_every)
        if (failed := still_ready()) is not None:
            return failed
    try:
        after = scrape(color_url, headers)
    except ScrapeError as exc:
        return Verdict(False, f"cannot read the promoted color's metrics: {exc}")
    judged = judge_window(before, after, max_error_pct, max_p95_ms)
    return Verdict(judged.ok and failed_probes == 0, f"{judged.detail}; canaries failed {failed_probes}/{probes}")


def canaries(router_url: str, window: float, max_error_pct: float, max_p95_ms: float, headers: dict,
             probe_every: float = 1.0) -> Verdict:
    """Post-promotion through the router only: canary transcriptions timed client-side, so the
    verdict does not depend on which of the color's pods answered."""
    deadline = time.monotonic() + window
    timings: list[float] = []
    failed = 0
    while True:
        began = time.monotonic()
        if not transcribe_check(router_url, headers, timeout=max(window, CANARY_TIMEOUT)).ok:
            failed += 1
        timings.append((time.monotonic() - began) * 1000)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(probe_every, max(0.0, deadline - time.monotonic())))
    timings.sort()
    p95 = timings[max(0, -(-95 * len(timings) // 100) - 1)]  # nearest rank
    error_pct = 100.0 * failed / len(timings)
    detail = (f"{len(timings)} canaries through the router, failed {failed} ({error_pct:.1f}%, max "
              f"{max_error_pct}%), p95 {p95:.0f} ms (max {max_p95_ms:.0f} ms)")
    return Verdict(error_pct <= max_error_pct and p95 <= max_p95_ms, detail)
