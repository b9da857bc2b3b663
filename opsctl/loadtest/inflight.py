"""Requests still in flight when a run stops are recorded as failures, not forgotten.

Locust fires its `request` event only when an answer (or an error) arrives; when a run
stops, users still waiting for an answer are killed and their requests vanish from every
count. Against a target whose API hangs, a run would then judge only the few requests that
did answer (a 12 s run against a hanging worker reported "error_rate 0%" over its health
polls). Locust has no "request started" event to count them from, so `install()` wraps the
two HTTP clients' `request` methods (FastHttpSession, HttpSession) once per process: when
the user's greenlet is killed inside one (GreenletExit, Locust's stop), the wrapper fires
that request as failed with `StillInFlight` (its name and method as Locust would have
recorded them, its time so far) before the greenlet dies. The run gives users in a request
their stop timeout (Locust's `stop_timeout`, `--stop-timeout`) to finish first, so a slow
answer is still a success; what has no answer by then is a timeout.

Only requests the target had a chance to answer count. Locust stops a user that is waiting
between tasks by killing its greenlet (`User.stop`); when that wait ends in the same
instant, the user begins its next request before the kill lands, and the kill then cut a
request the run itself had just started (CI saw a healthy, 1 s target judged "1 of 12
still in flight" with a 20 s stop timeout). So the wrapper yields to the event loop once
before it sends: a kill already on its way lands there, before anything is sent or timed,
and the request is not counted at all. A user inside a request when the stop comes is
never killed early (Locust marks it stopping and waits), so every request that *is*
recorded in flight was left unanswered for the stop timeout.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from opsctl.loadtest.latencies import StillInFlight

_MARK = "_opsctl_in_flight"


def _wrap(request):
    @functools.wraps(request)
    def wrapped(self, method, url, *args: Any, **kwargs: Any):
        import gevent
        from gevent import GreenletExit

        gevent.sleep(0)  # a kill already queued for this user lands here, before the request
        began = time.perf_counter()
        try:
            return request(self, method, url, *args, **kwargs)
        except GreenletExit:
            name = kwargs.get("name") or (args[0] if args and isinstance(args[0], str) else None)
            name = name or getattr(self, "request_name", None) or str(url)
            waited = (time.perf_counter() - began) * 1000
            self.request_event.fire(
                request_type=method.decode() if isinstance(method, bytes) else method, name=name,
                response_time=waited, response_length=0, response=None, context={}, url=str(url),
                exception=StillInFlight(f"no answer when the run stopped ({waited / 1000:.1f} s in flight)"))
            raise

    setattr(wrapped, _MARK, True)
    return wrapped


def install() -> None:
    """Wrap FastHttpSession.request and HttpSession.request in this process (idempotent)."""
    from locust.clients import HttpSession
    from locust.contrib.fasthttp import FastHttpSession

    for cls in (FastHttpSession, HttpSession):
        if not getattr(cls.request, _MARK, False):
            cls.request = _wrap(cls.request)
