"""`opsctl status`: where traffic is, each color, the last deploys, and any interrupted deploy."""

from __future__ import annotations

import time

from opsctl.deploy import bluegreen
from opsctl.deploy.model import DeployRecord, Driver, Outcome


def _past_standby(record: DeployRecord, colors: dict, active: str | None) -> str | None:
    """The notice for an old color still running after its standby time (deploy.scale_down_delay
    after the switch): a deploy, promote or rollback run with --no-wait, or stopped while it
    waited, left it; on Kubernetes it holds a full fleet of GPU nodes (breaker 53 F6)."""
    old = record.from_color
    state = colors.get(old) if old else None
    if not record.standby_until or old == active or state is None or not state.running:
        return None
    late = time.time() - record.standby_until
    if late <= 0:
        return None
    until = time.strftime("%H:%M:%S UTC", time.gmtime(record.standby_until))
    late_text = f"{late:.0f} s" if late < 120 else f"{late / 60:.0f} min"
    return (f"{old} ({record.from_version}) still runs {late_text} past its standby time ({until}, "
            "deploy.scale_down_delay after the switch): a command run with --no-wait, or stopped while it waited, "
            "left it; the next deploy or rollback stops it")


def status(driver: Driver, last: int = 10) -> dict:
    """Where traffic is, each color, the last `last` deploys (newest first, without steps),
    and any deploy interrupted after its switch (then `known_good` is the color traffic
    returns to). Read-only: takes no lock.

    Returns {driver, active_color, known_good: {color, version},
    known_good_warm (that color runs and answers ready now: checked, not assumed), notice (text or None:
    an interrupted deploy, or an old color running past its standby time),
    colors: {color: ColorState}, awaiting_promotion (a color or None), deploys: [record dicts]}.
    """
    history = driver.history()
    active = driver.active_color()
    colors = driver.colors()
    good_color, good_version = bluegreen.known_good(driver)
    good_state = colors.get(good_color) if good_color else None
    # checked, not assumed: `opsctl local down/up` restarts only the active color
    warm = bool(good_state and good_state.running and good_state.ready)
    notice = None
    record = history[-1] if history else None
    unresolved = None  # the newest record's id when it is in progress and its process is gone
    if record is not None and record.outcome == Outcome.IN_PROGRESS:
        unresolved = None if driver.deploy_running() else record.id
        if unresolved is None:
            notice = f"deploy {record.id} of {record.version} is running"
        elif record.strategy == "rollback":
            notice = (f"rollback {record.id} to {record.version} was interrupted "
                      + ("after its switch: traffic is on " if active == record.to_color else "before its switch: "
                         "traffic stayed on ") + f"{active}; the next command records it")
        elif bluegreen.switched(driver, record):
            kept = ("is kept warm" if warm else "is NOT running ('opsctl local up' starts it again; 'opsctl rollback' "
                    "and 'opsctl abort' start it before switching)")
            notice = (f"deploy {record.id} of {record.version} was interrupted after the switch: traffic on "
                      f"{record.to_color} without a post-promotion verdict; known-good {record.from_color} "
                      f"({record.from_version}) {kept}. 'opsctl deploy' or 'opsctl promote' finish its "
                      "analysis, 'opsctl rollback' or 'opsctl abort' return to the known-good color")
        elif bluegreen.went_back(driver, record):  # judged from its steps, not only where traffic is
            notice = (f"deploy {record.id} of {record.version} moved traffic to {record.to_color} and returned it to "
                      f"{record.from_color} ({record.from_version}); the process stopped before recording its end. "
                      "'opsctl abort' or the next deploy closes the record and stops "
                      f"{record.to_color}")
        else:
            notice = (f"deploy {record.id} of {record.version} was interrupted before the switch: traffic "
                      f"stayed on {active}; the next deploy cleans up")
    elif record is not None and record.outcome == Outcome.PROMOTED:
        notice = _past_standby(record, colors, active)
    return {
        "driver": driver.name,
        "active_color": active,
        "known_good": {"color": good_color, "version": good_version},
        "known_good_warm": warm,
        "notice": notice,
        "colors": colors,
        "awaiting_promotion": next((r.to_color for r in history[-1:] if r.outcome == Outcome.AWAITING_PROMOTION), None),
        # a record its killed process left `in-progress` reads so, as the notice says (breaker 42 R17:
        # "in-progress" under a notice that it was interrupted)
        "deploys": [{k: ("in-progress (interrupted)" if k == "outcome" and r.id == unresolved else v)
                     for k, v in r.to_dict().items() if k != "steps"} for r in reversed(history[-last:])],
    }
