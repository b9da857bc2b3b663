"""SIGTERM as Ctrl-C (opsctl.signals): what CI's cancel does to an operation."""

from __future__ import annotations

import os
import signal
import time

import pytest

from opsctl.signals import sigterm_as_interrupt


def test_sigterm_in_the_block_is_an_interrupt():
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) is not None


@pytest.fixture(params=["sigint-handled", "sigint-ignored"])
def sigint(request):
    """Python's Ctrl-C handler, or SIGINT ignored (a job started in the background, an xdist
    worker): the interrupt must come back either way."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler if request.param == "sigint-handled" else signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_a_finalizer_is_delivered_again_not_a_traceback(capsys, sigint):
    """Breaker 37 G8: a SIGTERM landing in a client's ConnectionPool.__del__ as a backup finished
    printed "Exception ignored in ... KeyboardInterrupt" with a traceback, and the cancel was lost."""

    class Pool:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):
                pass

    after = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        Pool()  # collected at once: the interrupt is raised inside __del__
        for _ in range(100):  # the work goes on (5 s): the interrupt must reach it
            time.sleep(0.05)
        after.append("the work went on")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert after == []
