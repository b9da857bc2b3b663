"""`--metrics-port`: the latest sweep as Prometheus gauges, for the rendered alert rules.

`opsctl render monitoring` scrapes this (monitoring.health_exporter) and alerts on
`opsctl_check_status == 2`, `opsctl_check_value{check="backup age"}` (hours) and
`opsctl_check_value{check="wal archive"}` (seconds of commits at risk, against dr.rpo), so a
team with a Prometheus gets the sweep's verdicts in its own alerting. A check that measured
nothing in the latest sweep has no `opsctl_check_value`, and a check no longer planned (a
color scaled away) has no series at all: never a stale figure. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

from opsctl.health.model import SweepResult


def check_port(port: int) -> int:
    """`port` unchanged when it is a TCP port one can listen on (1-65535; 0 would be a port
    the kernel picks, which no Prometheus could be pointed at); UsageError otherwise. Checked
    with the other options, before the first sweep: socket.bind() raised OverflowError for
    99999 after the checks were planned (breaker 37 G10)."""
    from opsctl.errors import UsageError

    if not 1 <= port <= 65535:
        raise UsageError(f"--metrics-port must be 1-65535, not {port}; pick a free port, e.g. 9464")
    return port


class Exporter:
    """Serves the latest sweep as Prometheus gauges on host:port (opsctl_check_status,
    opsctl_check_value, opsctl_check_duration_seconds, opsctl_sweep_duration_seconds).
    Raises UsageError when the port is out of range (`check_port`) or cannot be bound."""
    def __init__(self, port: int, host: str = "127.0.0.1"):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        check_port(port)
        self.registry = CollectorRegistry()
        self._keys: set[tuple[str, str, str]] = set()  # (env, check, kind) of the last sweep
        labels = ["env", "check", "kind"]
        self.status = Gauge("opsctl_check_status", "Nagios status of a check (0 OK, 1 WARNING, 2 CRITICAL, "
                            "3 UNKNOWN)", labels, registry=self.registry)
        self.value = Gauge("opsctl_check_value", "The value a check measured, in its unit", labels,
                           registry=self.registry)
        self.duration = Gauge("opsctl_check_duration_seconds", "How long a check took", labels,
                              registry=self.registry)
        self.sweep = Gauge("opsctl_sweep_duration_seconds", "How long the last sweep took", ["env"],
                           registry=self.registry)
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            from opsctl.errors import UsageError

            raise UsageError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                             "pick a free port") from None

    def update(self, result: SweepResult) -> None:
        """Set every gauge from `result` (durations in seconds). Series of checks the sweep no
        longer has (a color scaled away after a deploy) are removed, as is the value of a
        check that measured nothing, so no stale series keeps an alert firing."""
        keys = {(result.env, r.name, r.kind) for r in result.results}
        for key in self._keys - keys:
            for gauge in (self.status, self.duration, self.value):
                gauge.remove(*key)
        self._keys = keys
        for r in result.results:
            key = (result.env, r.name, r.kind)
            self.status.labels(*key).set(int(r.status))
            self.duration.labels(*key).set(r.duration_ms / 1000)
            if r.value is not None:
                self.value.labels(*key).set(r.value)
            else:  # nothing measured now: no stale figure for the rules (e.g. archive lag) to judge
                self.value.remove(*key)
        self.sweep.labels(result.env).set(result.duration_ms / 1000)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
