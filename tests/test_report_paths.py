"""Report paths (--junit, --html, --csv, --metrics-file, --history): one check before any work
(opsctl.files.report_path) and one writer (write_text) for the drill, load tests and health.

Found by trying them as CI does: `--junit /dev/null` replaced the device with a regular file
(the report was renamed over it); `/dev/stdout` was resolved to a /proc pipe name that the
write then failed on; a name too long for the temporary name beside it, or for the file
system, failed after the work or with a traceback; 'reports/' was taken for a file name."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from opsctl.errors import UsageError
from opsctl.files import report_path, write_text


def test_a_device_or_fifo_is_written_in_place_never_replaced(tmp_path):
    null = report_path("/dev/null", "--junit")
    write_text(null, "<testsuites/>")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_text(report_path(fifo, "--metrics-file"), b"opsctl_dr_drill_success 1\n")
    reader.join(10)
    assert got == [b"opsctl_dr_drill_success 1\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert report_path("/dev/stdout", "--junit") == __import__("pathlib").Path("/dev/stdout")  # not /proc/.../pipe:[N]


@pytest.mark.parametrize("name, says", [
    ("r" * 252 + ".x", "longer than"),   # fits the file system, not `.{name}.tmp` beside it
    ("r" * 300 + ".xml", "longer than"),  # raised OSError (exit 1, "unexpected") before
])
def test_a_name_too_long_is_refused_before_any_work(tmp_path, name, says):
    with pytest.raises(UsageError, match=says):
        report_path(tmp_path / name, "--junit")
    assert list(tmp_path.iterdir()) == []


def test_a_trailing_slash_names_a_folder(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        report_path(f"{tmp_path}/reports/", "--junit")
    assert list(tmp_path.iterdir()) == []


def test_a_regular_report_is_written_whole_and_its_folder_made(tmp_path):
    path = report_path(tmp_path / "ci" / "health.xml", "--junit")
    write_text(path, "<testsuites/>")
    assert path.read_text() == "<testsuites/>" and sorted(p.name for p in path.parent.iterdir()) == ["health.xml"]



def test_a_symlink_keeps_being_a_link_and_its_target_gets_the_report(tmp_path):
    """`--junit latest.xml` with latest.xml -> real.xml: the link was replaced by a regular file
    and real.xml kept its old text. Now the target is replaced whole and the link stays."""
    real, link = tmp_path / "real.xml", tmp_path / "latest.xml"
    real.write_text("old\n")
    link.symlink_to("real.xml")
    write_text(report_path(str(link), "--junit"), "<new/>\n")
    assert link.is_symlink() and real.read_text() == "<new/>\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.xml", "real.xml"]  # no temporary left


def test_a_link_to_a_process_stream_is_written_in_place(tmp_path):
    """A link to /proc/self/fd/1 (what /dev/stdout is) with stdout a file: the link was replaced
    by a regular file and nothing reached the file (as root, `--junit /dev/stdout > log` replaced
    /dev/stdout for the whole machine); /dev/fd/1 failed after the work on '/dev/fd/.1.tmp'. Both
    are written through now, and a stream that is not open is refused before any work."""
    import subprocess
    import sys

    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    for target in (str(link), "/dev/fd/1"):
        log = tmp_path / "run.log"
        with log.open("w") as out:
            subprocess.run([sys.executable, "-c", "from opsctl.files import report_path, write_text;"
                            f"write_text(report_path({target!r}, '--junit'), '<junit/>\\n')"],
                           stdout=out, check=True)
        assert log.read_text() == "<junit/>\n", target
    assert link.is_symlink()
    with pytest.raises(UsageError, match="does not exist"):
        report_path("/dev/fd/987", "--junit")


@pytest.mark.parametrize("links", [{"a": "b", "b": "a"}, {"s": "s"},
                                   {**{f"c{i}": f"c{i + 1}" for i in range(45)}}])
def test_a_link_loop_or_a_chain_over_40_is_refused_and_no_link_replaced(tmp_path, links):
    """Breaker 12: a loop, a self-loop or a chain of 45 links had one link replaced by a file."""
    for name, dest in links.items():
        (tmp_path / name).symlink_to(dest)
    first = next(iter(links))
    with pytest.raises(UsageError, match="too many levels of symbolic links"):
        report_path(str(tmp_path / first), "--junit")
    assert all((tmp_path / name).is_symlink() for name in links)


def test_a_stream_reached_through_a_relative_link_or_a_linked_folder_keeps_earlier_output(tmp_path):
    """Breaker 12: a relative link to ../../proc/self/fd/1 or a folder link to /proc was taken
    for a file: with stdout a log file, the log was replaced and its earlier lines lost. Written
    through the process's own stdout now, after what it printed before."""
    import subprocess
    import sys

    (tmp_path / "p").symlink_to("/proc")
    (tmp_path / "rel").symlink_to("../" * len(tmp_path.parts) + "proc/self/fd/1")
    for target in (tmp_path / "p" / "self" / "fd" / "1", tmp_path / "rel"):
        log = tmp_path / "run.log"
        with log.open("w") as out:
            subprocess.run([sys.executable, "-c", "from opsctl.files import report_path, write_text;"
                            "print('earlier output', flush=True);"
                            f"write_text(report_path({str(target)!r}, '--junit'), '<report/>\\n');"
                            "print('after the report')"], stdout=out, check=True)
        assert log.read_text() == "earlier output\n<report/>\nafter the report\n", target


def test_standard_input_is_never_a_report(tmp_path):
    """Breaker 13: `--junit /dev/stdin` with stdin a user's file overwrote that file."""
    import subprocess
    import sys

    mine = tmp_path / "input.txt"
    mine.write_text("the user's data\n")
    with mine.open() as given:
        done = subprocess.run([sys.executable, "-c", "from opsctl.files import report_path;"
                               "report_path('/dev/stdin', '--junit')"], stdin=given, capture_output=True, text=True)
    assert done.returncode != 0 and "standard input" in done.stderr
    assert mine.read_text() == "the user's data\n"


@pytest.mark.parametrize("make", [True, False])  # --junit makes the folder; health monitor --history does not
def test_a_loop_in_a_folder_of_the_path_is_refused_before_any_work(tmp_path, make):
    """Breaker 13: `L -> L` and the path L/x.xml: with the folder made it was refused as "File
    exists"; without (`--history`) it passed and the write failed after the work (ELOOP)."""
    (tmp_path / "L").symlink_to("L")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    for path in (tmp_path / "L" / "x.xml", tmp_path / "a" / "deeper" / "x.xml"):
        with pytest.raises(UsageError, match="too many levels of symbolic links"):
            report_path(str(path), "--history", make=make)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["L", "a", "b"]


def test_a_fifo_nobody_reads_fails_in_one_line_instead_of_hanging(tmp_path, monkeypatch):
    """Breaker 13: a FIFO with no reader was accepted and the report's write then blocked for
    ever, after the work. It waits files.FIFO_WAIT for a reader, then says so (exit 2); a
    reader that comes within the wait gets the report."""
    import subprocess
    import sys

    from opsctl import files

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "FIFO_WAIT", 0.3)
    path = report_path(fifo, "--junit")  # a reader may still come: not refused here
    with pytest.raises(UsageError, match="FIFO that no process reads .*start its reader first"):
        write_text(path, "<testsuites/>")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    monkeypatch.setattr(files, "FIFO_WAIT", 30)
    late = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(0.5); print(open({str(fifo)!r}).read())"],
                            stdout=subprocess.PIPE, text=True)
    write_text(path, "<testsuites/>")
    assert late.communicate(timeout=30)[0] == "<testsuites/>\n"
