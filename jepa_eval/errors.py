"""User-facing errors: the CLI prints their message on one line and exits with code 2."""
from __future__ import annotations

import difflib
import os
import shutil
from pathlib import Path
from typing import Iterable


class UserError(Exception):
    """A mistake in the user's input (path, name, parameter, data). Never a bug in the suite."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system holding ``path`` (its nearest existing parent), e.g. '1.2 GB free'."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1000
    return ""


def write_error(path: str | os.PathLike, err: OSError, what: str = "", after: str = "rerun to resume") -> UserError:
    """One line for a failed write (disk full, quota, permission, file size limit): the path, the reason
    and the free space there. Writers use a temporary name and a rename, so nothing is half-written."""
    reason = err.strerror or str(err)
    return UserError(f"could not write {what + ' ' if what else ''}{path}: {reason} ({free_space(path)} there); "
                     f"{after}")
