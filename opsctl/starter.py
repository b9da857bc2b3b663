"""`opsctl init`: a commented starter opsctl.yaml, so a new ops root starts from working text."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from opsctl.config import CONFIG_NAME
from opsctl.errors import UsageError
from opsctl.files import write_text


def starter_text() -> str:
    """The commented starter opsctl.yaml shipped in the package (opsctl/starter.yaml)."""
    return resources.files("opsctl").joinpath("starter.yaml").read_text()


def _kind(mode: int) -> str:
    import stat

    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def config_file_problem(folder: Path | str) -> str | None:
    """One line when `folder`/opsctl.yaml exists but is not a regular file (a folder, a FIFO,
    a device, followed through links), saying what to do; None when it is a file or absent.
    Said alike by `opsctl init` and `--root` (which would otherwise say to run init, which
    then refused: breaker 37 G16). A FIFO is only stat'ed, never opened (opening it waits
    for a writer or reader for ever)."""
    import os
    import stat

    try:
        folder = Path(folder).expanduser().resolve()  # as config.find_root names it
        target = folder / CONFIG_NAME
        mode = os.stat(target).st_mode
    except (OSError, RuntimeError):  # absent, a dangling link, a folder not searchable, a link loop
        try:
            if target.is_symlink():  # "holds no opsctl.yaml; run init" would have init write through it
                return (f"{target} is a symbolic link to {os.readlink(target)}, which does not exist (or loops); "
                        f"fix or remove the link, then run 'opsctl init {folder}'")
        except (OSError, NameError):
            pass
        return None
    if stat.S_ISREG(mode):
        return None
    return (f"{target} exists but is {_kind(mode)}, not a regular file; remove or rename it, "
            f"then run 'opsctl init {folder}'")


def starter_folder(path: str | None) -> Path:
    """The folder `opsctl init PATH` means: PATH, or the current folder when PATH is left out.
    UsageError when PATH is given empty or blank (`opsctl init "$DIR"` with DIR unset): taking
    it for "here" wrote into the current directory (breaker 42 R18)."""
    from opsctl.errors import not_empty

    not_empty(path, "PATH", "give the folder that is to hold opsctl.yaml, or leave it out for the current one")
    return Path(path) if path is not None else Path(".")


def write_starter(folder: Path | str | None, force: bool = False) -> Path:
    """Write the starter as `folder`/opsctl.yaml (temporary file, then rename) and return
    its path; `folder` as `opsctl init PATH` gives it (text, None for the current folder:
    `starter_folder`). `folder` is made (with its parents, as `git init DIR` does) when missing.
    UsageError, before anything is made or written, when `folder` is empty, a file or can't be
    made, when opsctl.yaml there is not a regular file (`config_file_problem`: a FIFO once hung
    init, a folder ended in IsADirectoryError), or exists without `force`."""
    folder = (folder if isinstance(folder, Path) else starter_folder(folder)).expanduser().resolve()
    target = folder / CONFIG_NAME
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a folder; give the folder that is to hold {CONFIG_NAME}")
        problem = config_file_problem(folder)
        if problem:
            raise UsageError(problem)
        if target.exists() and not force:
            raise UsageError(f"{target} already exists; pass --force to overwrite it")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a parent folder would be, no permission
        raise UsageError(f"{folder} can't be made ({exc.strerror or exc}); give another folder") from None
    write_text(target, starter_text())  # whole or not at all; a full disk names the file
    return target
