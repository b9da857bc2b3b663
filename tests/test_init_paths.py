"""`opsctl init` on the paths it meets: a folder not made yet is made (as `git init DIR`), an
opsctl.yaml that is not a regular file (a FIFO, a folder) is refused in one line, exit 2,
without opening it, and `--root` says the same as init instead of "run 'opsctl init'"
(breaker 37 G16)."""

from __future__ import annotations

import os
import threading

import pytest

from opsctl.cli import app


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opsctl: error:"), result.stderr
    assert "unexpected" not in lines[0] and "Traceback" not in result.output and result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def invoke_within(runner, args, seconds: float = 20):
    """The command's result; fails the test (instead of hanging it) when it does not end."""
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("result", runner.invoke(app, args)), daemon=True)
    worker.start()
    worker.join(seconds)
    if "result" not in done:  # a FIFO opened for writing waits for a reader: be one, let it end
        fifo = next((a for a in args if os.path.exists(os.path.join(a, "opsctl.yaml"))), None)
        if fifo:
            reader = os.open(os.path.join(fifo, "opsctl.yaml"), os.O_RDONLY | os.O_NONBLOCK)
            worker.join(seconds)  # the starter (a few KiB) fits in the pipe's buffer
            os.close(reader)
        pytest.fail(f"opsctl {' '.join(args)} did not end in {seconds:.0f} s")
    return done["result"]


@pytest.fixture
def fifo_root(tmp_path):
    folder = tmp_path / "ff"
    folder.mkdir()
    os.mkfifo(folder / "opsctl.yaml")
    return folder


def test_init_refuses_a_fifo_without_opening_it(runner, fifo_root):
    result = invoke_within(runner, ["init", str(fifo_root), "--force"], seconds=5)
    one_line_error(result, str(fifo_root / "opsctl.yaml"), "a FIFO", "not a regular file")
    assert not (fifo_root / "opsctl.yaml").is_file()


def test_init_refuses_a_folder_named_opsctl_yaml(runner, tmp_path):
    (tmp_path / "dd" / "opsctl.yaml").mkdir(parents=True)
    result = runner.invoke(app, ["init", str(tmp_path / "dd"), "--force"])
    one_line_error(result, str(tmp_path / "dd" / "opsctl.yaml"), "a folder", "not a regular file")
    assert (tmp_path / "dd" / "opsctl.yaml").is_dir()


@pytest.mark.parametrize("how", ["--root", "OPSCTL_ROOT"])
def test_root_and_init_say_the_same_of_a_fifo(runner, fifo_root, how):
    args, env = (["--root", str(fifo_root)], {}) if how == "--root" else ([], {"OPSCTL_ROOT": str(fifo_root)})
    status = runner.invoke(app, [*args, "status"], env=env)
    init = invoke_within(runner, ["init", str(fifo_root)], seconds=5)
    one_line_error(status, "exists but is a FIFO")
    assert "holds no opsctl.yaml" not in status.stderr
    assert status.stderr == init.stderr


def test_init_makes_a_folder_that_is_not_there(runner, tmp_path):
    folder = tmp_path / "ops" / "prod"
    result = runner.invoke(app, ["init", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "opsctl.yaml").read_text().startswith("# opsctl.yaml")
    assert runner.invoke(app, ["--root", str(folder), "config", "show"]).exit_code == 0


@pytest.mark.parametrize("under", ["a-file", "a-file/below"])
def test_init_under_a_file_is_one_line(runner, tmp_path, under):
    (tmp_path / "a-file").write_text("not a folder\n")
    result = runner.invoke(app, ["init", str(tmp_path / under)])
    one_line_error(result, str(tmp_path / under))
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


def test_an_empty_root_is_refused_not_ignored(runner, tmp_path, monkeypatch):
    """Breaker 37 G18: `--root ''` was ignored and the walk up chose another project; an empty
    OPSCTL_ROOT stays what an empty variable is, unset."""
    monkeypatch.chdir(tmp_path)
    one_line_error(runner.invoke(app, ["--root", "", "status"]), "--root is empty")
    one_line_error(runner.invoke(app, ["--root", "  ", "status"]), "--root is empty")


@pytest.mark.parametrize("given", ["", "   "])
def test_an_empty_path_is_refused_not_taken_for_here(tmp_path, monkeypatch, runner, given):
    """Breaker 42 R18: `opsctl init "$DIR"` with DIR unset wrote opsctl.yaml into the current folder."""
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["init", given])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "PATH is empty" in r.stderr, r.stderr
    assert not (tmp_path / "opsctl.yaml").exists()
    assert runner.invoke(app, ["init"]).exit_code == 0 and (tmp_path / "opsctl.yaml").is_file()


def test_a_dangling_opsctl_yaml_link_is_said_as_one(tmp_path, runner):
    """Breaker 43 S14: a dangling opsctl.yaml link read as "holds no opsctl.yaml; run init"."""
    (tmp_path / "opsctl.yaml").symlink_to(tmp_path / "gone.yaml")
    for args in (["--root", str(tmp_path), "config", "show"], ["init", str(tmp_path)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert f"{tmp_path / 'opsctl.yaml'} is a symbolic link to {tmp_path / 'gone.yaml'}, which does not exist" \
            in r.stderr, r.stderr
    assert not (tmp_path / "gone.yaml").exists()
