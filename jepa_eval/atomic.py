"""Every file the suite writes for others to read goes through here: to a temporary file beside the target,
flushed and fsynced, then renamed over it (``os.replace``), so a reader or a crash sees the old file or the
new one, never half of one. A failed write removes its temporary file; the target is untouched.

Temporary names are ``.NAME.PID.tmp`` (``.NAME.N.PID.tmp`` while another thread of this process writes the
same target): distinct for concurrent writers, predictable for a single one, and they end in the writer's
process id, so ``remove_stale_temp_files`` can tell a dead writer's leftovers from a live writer's file."""
from __future__ import annotations

import errno
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from .errors import write_error

_claimed: set[Path] = set()   # temporary names in use by this process's writers
_claim_lock = threading.Lock()


@contextmanager
def _temp_name(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` that no other writer of this process uses until the block ends."""
    pid = os.getpid()
    with _claim_lock:
        n = 0
        tmp = path.with_name(f".{path.name}.{pid}.tmp")
        while tmp in _claimed:
            n += 1
            tmp = path.with_name(f".{path.name}.{n}.{pid}.tmp")
        _claimed.add(tmp)
    try:
        yield tmp
    finally:
        with _claim_lock:
            _claimed.discard(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: str | os.PathLike, fill: Callable[[Path], None], sync: bool = True) -> None:
    """Atomically replace ``path`` with what ``fill(tmp)`` writes to the path ``tmp``. An error (OSError
    included) propagates unchanged once the temporary file is removed."""
    path = Path(path)
    with _temp_name(path) as tmp:
        try:
            fill(tmp)
            if sync:
                _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            # only a failed write removes its file: after the rename the name is free for the next write
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_file(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Atomically replace ``path`` with what ``write(f)`` writes to an open file (``mode`` 'wb' or 'w')."""
    def fill(tmp: Path) -> None:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    atomic_write_with(path, fill, sync=False)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_file(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text (whatever the locale)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None, newline: bool = True) -> None:
    """``json.dump`` straight into the temporary file (a huge object is never held as one string)."""
    def write(f: IO) -> None:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys, default=default)
        if newline:
            f.write("\n")
    atomic_write_file(path, write, "w")


def atomic_np_savez(path: str | os.PathLike, arrays: dict[str, Any], compressed: bool = False) -> None:
    """``np.savez[_compressed]`` to ``path`` as named (through a file object, so no '.npz' is appended)."""
    import numpy as np
    save = np.savez_compressed if compressed else np.savez
    atomic_write_file(path, lambda f: save(f, **arrays), "wb")


def atomic_torch_save(obj: Any, path: str | os.PathLike,
                      after: str = "the previous file is kept; free space and rerun to resume") -> None:
    """``torch.save(obj, path)`` atomically; a failed write (disk full, quota, permission) raises the one-line
    ``UserError`` of ``write_error`` ending with ``after``."""
    import torch

    def fill(tmp: Path) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write without an errno
            if "unexpected pos" not in str(e) and "write" not in str(e):
                raise
            raise OSError(errno.EIO, f"write failed ({' '.join(str(e).split())[-60:]})", str(tmp)) from None
    try:
        atomic_write_with(path, fill)
    except OSError as e:
        raise write_error(path, e, "", after) from None


def remove_stale_temp_files(folders: Iterable[str | os.PathLike]) -> None:
    """Remove the temporary files of writers killed mid-write (those of live processes are kept)."""
    for folder in folders:
        for tmp in Path(folder).glob(".*.*.tmp"):
            pid = tmp.name.rsplit(".", 2)[-2]
            if not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
