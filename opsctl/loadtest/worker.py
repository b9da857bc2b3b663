"""A Locust worker process for `opsctl loadtest run --workers N`:
`python -m opsctl.loadtest.worker --master-port P --locustfile F`.

A plain Locust WorkerRunner (a dedicated process, so Locust's usual gevent monkey patching
is fine here) plus two additions: every stats report carries the exact latencies counted
since the previous one (opsctl.loadtest.latencies), and on the master's `opsctl_flush` it sends a last stats report
and then its own request count, in that order on the same connection. The master waits for
both before it quits, so no report is lost to Locust's fixed 0.5 s quit grace, and the run
can show that the workers' counts add up to its total.
"""

from __future__ import annotations

import argparse
import os
import signal


def main(argv: list[str] | None = None) -> int:
    """Run one Locust worker connected to the master at --master-host/--master-port, with the
    user classes of --locustfile; returns 0 when the master tells it to quit."""
    parser = argparse.ArgumentParser(prog="python -m opsctl.loadtest.worker")
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--locustfile", required=True)
    args = parser.parse_args(argv)

    import locust  # noqa: F401  (patches this process for gevent first)
    from locust.env import Environment
    from locust.event import Events
    from locust.util.load_locustfile import load_locustfile

    from opsctl.loadtest import inflight
    from opsctl.loadtest.latencies import REPORT_KEY, Recorder

    from opsctl.loadtest.plan import request_headers

    inflight.install()  # requests unanswered at the stop are recorded as failed, as in-process
    classes, _shapes = load_locustfile(args.locustfile)
    for cls in classes.values():  # as the master's in-process run does (plan.headers)
        if hasattr(cls, "default_headers"):
            cls.default_headers = {**(cls.default_headers or {}), **request_headers(os.environ.get("LOADTEST_API_KEY"))}
    env = Environment(user_classes=list(classes.values()), events=Events(), locustfile=args.locustfile)
    runner = env.create_worker_runner(args.master_host, args.master_port)
    counts = {"requests": 0, "failures": 0}

    def on_request(exception=None, **_kw) -> None:
        counts["requests"] += 1
        counts["failures"] += exception is not None

    def on_flush(environment, msg, **_kw) -> None:
        data: dict = {}
        environment.events.report_to_master.fire(client_id=runner.client_id, data=data)
        runner.send_message("stats", data)
        runner.send_message("opsctl_final", dict(counts))

    env.events.request.add_listener(on_request)
    recorder = Recorder().attach(env.events)
    env.events.report_to_master.add_listener(
        lambda client_id, data, **_kw: data.__setitem__(REPORT_KEY, recorder.take()))
    runner.register_message("opsctl_flush", on_flush)

    def after_stop(**_kw) -> None:
        # Locust's worker sleeps stop_timeout after every stop before it reads its next
        # message (it expects a new run); opsctl's flush comes right after the stop, and the
        # users are already stopped here, so that sleep would only delay the last report.
        # The next spawn message sets stop_timeout again.
        env.stop_timeout = 0

    env.events.test_stop.add_listener(after_stop)
    # A terminal's Ctrl-C reaches the whole process group: the master (opsctl) decides, stops
    # the run and asks for the final report; a worker dying of it would leave the run unsaved
    # ("sent no final report"). The master's quit (or terminate, in close()) still ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner.greenlet.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
