"""`opsctl status`: where traffic is, each color, the last deploys, and any interrupted deploy."""

from __future__ import annotations

from opsctl.deploy import bluegreen
from opsctl.deploy.model import Driver, Outcome


def status(driver: Driver, last: int = 10) -> dict:
    """Where traffic is, each color, the last `last` deploys (newest first, without steps),
    and any deploy interrupted after its switch (then `known_good` is the color traffic
    returns to). Read-only: takes no lock.

    Returns {driver, active_color, known_good: {color, version}, notice (text or None),
    colors: {color: ColorState}, awaiting_promotion (a color or None), deploys: [record dicts]}.
    """
    history = driver.history()
    active = driver.active_color()
    notice = None
    record = history[-1] if history else None
    if record is not None and record.outcome == Outcome.IN_PROGRESS:
        if driver.deploy_running():
            notice = f"deploy {record.id} of {record.version} is running"
        elif bluegreen.switched(driver, record):
            notice = (f"deploy {record.id} of {record.version} was interrupted after the switch: traffic on "
                      f"{record.to_color} without a post-promotion verdict; known-good {record.from_color} "
                      f"({record.from_version}) is kept warm. 'opsctl deploy' or 'opsctl promote' finish its "
                      "analysis, 'opsctl rollback' or 'opsctl abort' return to the known-good color")
        else:
            notice = (f"deploy {record.id} of {record.version} was interrupted before the switch: traffic "
                      f"stayed on {active}; the next deploy cleans up")
    good_color, good_version = bluegreen.known_good(driver)
    return {
        "driver": driver.name,
        "active_color": active,
        "known_good": {"color": good_color, "version": good_version},
        "notice": notice,
        "colors": driver.colors(),
        "awaiting_promotion": next((r.to_color for r in history[-1:] if r.outcome == Outcome.AWAITING_PROMOTION), None),
        "deploys": [{k: v for k, v in r.to_dict().items() if k != "steps"} for r in reversed(history[-last:])],
    }
