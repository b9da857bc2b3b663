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


def write_starter(folder: Path, force: bool = False) -> Path:
    """Write the starter as `folder`/opsctl.yaml (temporary file, then rename) and return
    its path. UsageError when `folder` is not a folder, or the file exists without `force`."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; create it first")
    target = folder / CONFIG_NAME
    if target.exists() and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    write_text(target, starter_text())  # whole or not at all; a full disk names the file
    return target
