"""The deploy lock on Kubernetes: a `coordination.k8s.io/v1` Lease, as leader election uses it.

Held means: a holderIdentity whose renewTime + leaseDurationSeconds is still in the future.
The holder renews it from a background thread every third of the duration, so a deploy
waiting 15 minutes for GPU nodes keeps it, while a deploy killed with -9 (or a CI runner
that vanished) loses it within one duration and the next deploy takes it over: a crash
never needs a person to delete a lock.

Expiry is judged as client-go's leader election judges it (tools/leaderelection: observedRecord
/ observedTime), never by comparing the holder's written renewTime with this machine's clock
(a holder whose clock runs slow would look expired while it renews on time): a deploy that finds
the Lease held watches it and takes it over only after it saw no change to the holder's record
for the lease's whole duration, measured on its own monotonic clock. A renewal seen meanwhile
means the holder lives: refused. A Lease live by this machine's clock is refused at once (that
way skew can only delay a take-over, never allow one); a released Lease (holder empty) is taken
at once.

Taking over is a compare-and-swap: a JSON patch whose `test` operations require the holder
and renewTime just read, so of two deploys racing for an expired lease only one wins (the
API server applies a JSON patch atomically). Creating the Lease is atomic too (409 for the
loser).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from opsctl.errors import LeaseHeld, OperationFailed

log = logging.getLogger(__name__)

NAME = "opsctl-deploy"


def micro_time(at: dt.datetime | None = None) -> str:
    """Kubernetes MicroTime, the format renewTime and acquireTime are stored in."""
    return (at or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """A Lease's MicroTime text as an aware datetime; None for empty."""
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def identity() -> str:
    """Who holds the lease, readable in `kubectl get lease`, unique per acquisition."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}/pid-{os.getpid()}/{uuid.uuid4().hex[:8]}"


def held_by_other(spec: dict, me: str, now: dt.datetime) -> str | None:
    """The other holder's description when the lease is held and not expired, else None."""
    holder = spec.get("holderIdentity")
    renewed = parse_time(spec.get("renewTime"))
    if not holder or holder == me or renewed is None:
        return None
    expires = renewed + dt.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)
    if expires <= now:
        return None
    return f"{holder} (renewed {renewed:%H:%M:%S} UTC, expires in {(expires - now).total_seconds():.0f}s)"


class Lease:
    """Acquire, renew and release one Lease through the coordination API of a client."""

    def __init__(self, coordination, namespace: str, env_name: str, seconds: int = 60,
                 call: Callable | None = None):
        self.api, self.ns, self.env_name, self.seconds = coordination, namespace, env_name, seconds
        self.call = call or (lambda fn, *a, **kw: fn(*a, **kw))  # the driver's error mapping
        self.me = identity()
        self.lost = threading.Event()  # set once the Lease is known to be someone else's

    def check(self) -> None:
        """Fencing, before each change a deploy makes: raise OperationFailed unless the Lease
        is still ours, read from the API now. A deploy that stalled past the Lease's duration (a
        suspended laptop, a paused CI VM) may have lost it to another deploy, which may have
        changed everything since: it must change nothing more. Still ours but expired (no one
        took it): renewed first."""
        if not self.lost.is_set():
            spec = (self._read() or {}).get("spec") or {}
            now = dt.datetime.now(dt.timezone.utc)
            renewed = parse_time(spec.get("renewTime"))
            expired = renewed is None or renewed + dt.timedelta(seconds=spec.get("leaseDurationSeconds") or 0) <= now
            if spec.get("holderIdentity") != self.me or (expired and not self.renew()):
                self.lost.set()
        if self.lost.is_set():
            holder = ((self._read() or {}).get("spec") or {}).get("holderIdentity") or "nobody"
            raise OperationFailed(f"this deploy lost the deploy lease {self.ns}/{NAME} (now held by {holder}): it "
                                  f"stalled longer than the lease's {self.seconds}s and another deploy may have taken "
                                  "over; it stopped without changing anything more; check 'opsctl status'")

    def _read(self) -> dict | None:
        return self.call(self.api.read_namespaced_lease, NAME, self.ns, missing_ok=True)

    def _refused(self, holder: str) -> LeaseHeld:
        return LeaseHeld(f"another deploy is running on env '{self.env_name}': lease {self.ns}/{NAME} "
                         f"is held by {holder}; wait for it or check 'opsctl status'", holder)

    def _observe(self, old: dict) -> None:
        """Watch another holder's record (holder, renewTime) for the lease's duration on the
        local monotonic clock; return when it stayed unchanged that long (the holder is gone),
        raise the refusal at the first change (the holder renews: alive). The record's own
        renewTime is compared with nothing but itself: clock skew cannot expire a live lease."""
        record = (old.get("holderIdentity"), old.get("renewTime"))
        duration = float(old.get("leaseDurationSeconds") or self.seconds)
        began = time.monotonic()
        log.info("the deploy lease is held by %s; taking it over if it is not renewed within %.0fs",
                 record[0], duration)
        while True:
            left = duration - (time.monotonic() - began)
            if left <= 0:
                return
            time.sleep(min(left, max(0.2, duration / 10)))
            seen = ((self._read() or {}).get("spec") or {})
            if (seen.get("holderIdentity"), seen.get("renewTime")) != record:
                raise self._refused(seen.get("holderIdentity") or "another deploy that just took it")

    def acquire(self) -> None:
        """Take the Lease: create it, or take it over when released, or once its holder's
        record stayed unchanged for the lease's duration as observed here (_observe), by a
        JSON-patch compare-and-swap on what was read. Raises OperationFailed naming the holder
        when another deploy holds it (renews it meanwhile, or won the race)."""
        now = dt.datetime.now(dt.timezone.utc)
        spec = {"holderIdentity": self.me, "leaseDurationSeconds": self.seconds,
                "acquireTime": micro_time(now), "renewTime": micro_time(now)}
        current = self._read()
        if current is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": NAME, "namespace": self.ns,
                                 "labels": {"app.kubernetes.io/managed-by": "opsctl"}},
                    "spec": {**spec, "leaseTransitions": 0}}
            if self.call(self.api.create_namespaced_lease, self.ns, body, conflict_ok=True) is None:
                raise self._refused(self._holder_now())
            return
        old = current.get("spec") or {}
        other = held_by_other(old, self.me, now)
        if other:
            raise self._refused(other)
        if old.get("holderIdentity") and old.get("holderIdentity") != self.me:  # expired only by our clock
            self._observe(old)
            now = dt.datetime.now(dt.timezone.utc)
            spec.update(acquireTime=micro_time(now), renewTime=micro_time(now))
        # compare-and-swap on what was just read: whoever changed it first wins
        ops = [{"op": "test", "path": f"/spec/{key}", "value": old[key]}
               for key in ("holderIdentity", "renewTime") if key in old]
        ops += [{"op": "add", "path": f"/spec/{key}", "value": value} for key, value in spec.items()]
        ops.append({"op": "add", "path": "/spec/leaseTransitions", "value": int(old.get("leaseTransitions") or 0) + 1})
        if self.call(self.api.patch_namespaced_lease, NAME, self.ns, ops,
                     _content_type="application/json-patch+json", rejected_ok=True) is None:
            raise self._refused(self._holder_now())
        if old.get("holderIdentity"):
            log.warning("took over the expired deploy lease of %s", old["holderIdentity"])

    def _holder_now(self) -> str:
        spec = (self._read() or {}).get("spec") or {}
        return spec.get("holderIdentity") or "another deploy that just took it"

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours (then the deploy is told)."""
        ops = [{"op": "test", "path": "/spec/holderIdentity", "value": self.me},
               {"op": "replace", "path": "/spec/renewTime", "value": micro_time()}]
        return self.call(self.api.patch_namespaced_lease, NAME, self.ns, ops,
                         _content_type="application/json-patch+json", rejected_ok=True) is not None

    def release(self) -> None:
        """Give it up at once (holder emptied) so the next deploy need not wait for expiry."""
        ops = [{"op": "test", "path": "/spec/holderIdentity", "value": self.me},
               {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
               {"op": "replace", "path": "/spec/renewTime", "value": micro_time()}]
        self.call(self.api.patch_namespaced_lease, NAME, self.ns, ops,
                  _content_type="application/json-patch+json", rejected_ok=True)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the Lease for the `with` block, renewed every third of its duration by a
        thread, released at the end. Raises as `acquire`."""
        self.acquire()
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(self.seconds / 3):
                try:
                    if not self.renew():
                        self.lost.set()  # the deploy's next change is refused (check)
                        log.error("the deploy lease %s/%s was taken by someone else", self.ns, NAME)
                        return
                except Exception as exc:  # a blip of the API: try again next period
                    log.warning("renewing the deploy lease failed: %s", exc)

        thread = threading.Thread(target=keep, name="opsctl-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            try:
                self.release()
            except Exception as exc:  # it expires on its own within one duration
                log.warning("releasing the deploy lease failed (%s); it expires in %ss", exc, self.seconds)
