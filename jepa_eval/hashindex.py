"""A remembered sha256 per checkpoint file, so a 10 GB file is hashed once, not by every job.

``CACHE/checkpoint-sha256.json`` maps a file's real path to ``{size, mtime_ns, ino, dev, sha256}``.
The stored hash is reused only while all four still match the file (``os.stat`` after resolving
links); any change - a rewrite, ``touch``, a copy or rename over it - hashes it again. The index is
rewritten atomically under a lock file, so concurrent jobs never see a torn index; a damaged or
unwritable index only costs a re-hash."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import atomic_write_text
from .log import get_logger

log = get_logger(__name__)

INDEX_NAME = "checkpoint-sha256.json"
MAX_ENTRIES = 2000  # beyond this the entries of files that no longer exist are dropped on write


def sha256_fd(fd: int, chunk: int = 1 << 24) -> str:
    """sha256 of an open file's whole content (positional reads: the file offset is untouched)."""
    h, offset = hashlib.sha256(), 0
    while block := os.pread(fd, chunk, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def signature(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}


def default_cache_dir() -> Path:
    """The library's default feature cache folder, which also holds the sha256 index (the command line
    also reads ``$JEPA_EVAL_CACHE``: ``commands/_environment.py``)."""
    return Path.home() / ".cache" / "jepa-eval" / "features"


def default_index() -> Path:
    return default_cache_dir() / INDEX_NAME


def _read(index: Path) -> dict[str, dict]:
    try:
        data = json.loads(index.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remembered_sha256(path: str | os.PathLike, fd: int, index: str | os.PathLike | None = None) -> str:
    """The sha256 of ``fd`` (the open file ``path``), from ``index`` (a JSON file, or a folder that
    holds ``checkpoint-sha256.json``; default: the feature cache folder) while the file is unchanged."""
    index = Path(index).expanduser() if index is not None else default_index()
    if index.suffix != ".json":
        index = index / INDEX_NAME
    key = os.path.realpath(path)
    sig = signature(os.fstat(fd))
    entry = _read(index).get(key)
    if isinstance(entry, dict) and {k: entry.get(k) for k in sig} == sig and entry.get("sha256"):
        return str(entry["sha256"])
    digest = sha256_fd(fd)
    if signature(os.fstat(fd)) != sig:  # written to while we read it: do not remember a torn hash
        return digest
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(index) + ".lock", timeout=60):
            entries = _read(index)  # re-read under the lock: other processes may have added entries
            entries[key] = {**sig, "sha256": digest}
            if len(entries) > MAX_ENTRIES:
                entries = {k: v for k, v in entries.items() if os.path.exists(k)}
            atomic_write_text(index, json.dumps(entries, indent=0, sort_keys=True))
    except (OSError, Timeout) as e:
        log.warning(f"jepa-eval: warning: cannot remember the sha256 of {path} in {index} ({e}); "
                    f"it will be computed again next time")
    return digest
