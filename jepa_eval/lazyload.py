"""Reading only the tensors a caller needs from a checkpoint file.

A torch zip checkpoint is opened with ``torch.load(mmap=True, weights_only=True)``: unpickling reads the
small pickle, every tensor stays a view of a private, read-only-used mapping of the file, and pages
that are never touched (the other encoder, the predictor, the optimizer state) are never read. A part
is materialized by copying its tensors into ordinary memory, tensor by tensor, handing each copied
range of the mapping back to the kernel (``madvise(MADV_DONTNEED)``, Linux) so the file's pages never
add to the process's resident memory on top of the copy. The copies make the built modules
independent of the file: a file replaced or rewritten later cannot change or crash them.

The file is opened once and kept open; later reads go through ``/proc/self/fd`` (Linux), so they see
the same inode that was validated and hashed even after an atomic replacement of the path (a training
run rewriting ``jepa-latest.pth.tar``). A file changed in place is detected (size, mtime, inode) and
refused rather than read."""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .hashindex import remembered_sha256, signature
from .log import get_logger
from .statedict import check_checkpoint_path, safe_torch_load

log = get_logger(__name__)

MADV_DONTNEED = 4  # Linux value; the call is only made on Linux


def _file_ranges(st: os.stat_result) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of the file ``st`` describes (from /proc/self/maps)."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    ranges = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                if len(fields) >= 5 and fields[4] == str(st.st_ino) and fields[3] == dev:
                    lo, hi = fields[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


class _Pager:
    """Gives the pages of copied tensors back to the kernel; a no-op wherever that is not known safe."""

    def __init__(self, st: os.stat_result) -> None:
        self.ranges = _file_ranges(st) if sys.platform.startswith("linux") else []
        self.page = os.sysconf("SC_PAGE_SIZE") if self.ranges else 4096
        self.madvise = ctypes.CDLL(None, use_errno=True).madvise if self.ranges else None

    def drop(self, t: torch.Tensor) -> None:
        if self.madvise is None:
            return
        storage = t.untyped_storage()
        lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        # only inside a private mapping of the checkpoint file, whose pages are read, never written:
        # a dropped page that is read again is simply read again from the file
        if any(a <= lo and hi <= b for a, b in self.ranges):
            start = lo - lo % self.page
            self.madvise(ctypes.c_void_p(start), ctypes.c_size_t(hi - start), ctypes.c_int(MADV_DONTNEED))


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere). After a checkpoint's
    weights are released, glibc may keep tens of MB of freed small blocks mapped; the next checkpoint's
    copy would then peak that much above the first one's."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):   # musl or another libc without malloc_trim
            pass


class CheckpointFile:
    """One open checkpoint file: ``load()`` the top-level object (memory-mapped where the format allows),
    ``copy(sd, like)`` the tensors a part needs into ordinary memory, ``drop()`` the mapping again."""

    def __init__(self, path: Path, hash_index: str | os.PathLike | None = None) -> None:
        check_checkpoint_path(path)
        self.path = path
        self._file = open(path, "rb")
        weakref.finalize(self, self._file.close)
        self.st = os.fstat(self._file.fileno())
        with open(path, "rb") as f:
            self.legacy = f.read(1) == b"\x80"  # torch < 1.6 pickle format: no zip, cannot be mapped
        self.hash_index = hash_index
        self._obj: Any = None
        self._noted = False

    @property
    def fd_path(self) -> str:
        proc = f"/proc/self/fd/{self._file.fileno()}"
        return proc if os.path.exists(proc) else str(self.path)

    def sha256(self) -> str:
        return remembered_sha256(self.path, self._file.fileno(), self.hash_index)

    def load(self) -> Any:
        if self._obj is not None:
            return self._obj
        if signature(os.fstat(self._file.fileno())) != signature(self.st):
            raise UserError(f"checkpoint {self.path} changed on disk since it was loaded (size, mtime or "
                            f"inode differ), so its recorded sha256 no longer describes it; rerun")
        if self.legacy and not self._noted:
            self._noted = True
            log.warning(f"jepa-eval: note: {self.path} is in torch's legacy (pre-1.6, non-zip) format, which "
                        f"cannot be memory-mapped: it is read whole ({self.st.st_size / 2**30:.1f} GiB). Re-save "
                        f"it once with torch.save(torch.load(OLD, weights_only=True), NEW) to load only what a "
                        f"task needs")
        self._obj = safe_torch_load(self.fd_path, mmap=not self.legacy, shown=self.path)
        return self._obj

    def copy(self, sd: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copies of ``sd``'s tensors in ``like``'s dtypes (the module's), each copied range of the
        mapping released right away: resident memory grows by the copies alone."""
        if self.legacy:  # already in ordinary memory: a copy would only double it
            return {k: t.to(dtype=like[k].dtype) for k, t in sd.items()}
        pager = _Pager(self.st)
        out = {}
        for k, t in sd.items():
            out[k] = t.to(dtype=like[k].dtype, copy=True)
            pager.drop(t)
        return out

    def drop(self, keep_legacy: bool = True) -> None:
        """Forget the loaded object (unmapping the file). A legacy file's object is kept unless asked:
        reading it again would read the whole file again. Freed heap goes back to the OS (``trim_heap``)."""
        if not self.legacy or not keep_legacy:
            self._obj = None
        trim_heap()
