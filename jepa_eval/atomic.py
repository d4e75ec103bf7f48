"""Atomic ``torch.save``: checkpoints and probe states are written to a temporary name and renamed, and a
failed write (disk full, quota, permission) removes the temporary file and ends with one line."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from .errors import write_error


def atomic_torch_save(obj: Any, path: str | os.PathLike, tmp: str | os.PathLike | None = None,
                      after: str = "the previous file is kept; free space and rerun to resume") -> None:
    """``torch.save(obj, path)`` through ``tmp`` (default: a hidden per-process name beside ``path``)."""
    import torch
    path = Path(path)
    tmp = Path(tmp) if tmp else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write without an errno
            if "unexpected pos" not in str(e) and "write" not in str(e):
                raise
            raise OSError(errno.EIO, f"write failed ({' '.join(str(e).split())[-60:]})", str(tmp)) from None
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e, "", after) from None
    except BaseException:
        # only a failed write leaves a temporary file to remove: after a successful rename the name may
        # already belong to the next write (of another process or thread), which must not be touched
        Path(tmp).unlink(missing_ok=True)
        raise
