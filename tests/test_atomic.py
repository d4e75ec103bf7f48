"""jepa_eval.atomic: every writer's temp-file + fsync + rename, and what a failure leaves behind."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from jepa_eval import atomic
from jepa_eval.errors import UserError


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_successful_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    atomic.atomic_write_json(path, {"x": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("]\n}\n")
    atomic.atomic_write_text(path, "é")
    assert path.read_bytes() == "é".encode("utf-8")
    atomic.atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and names(tmp_path) == ["a.json"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # the umask's permissions, like any new file


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "r.json"
    atomic.atomic_write_json(path, {"v": 1})

    def half_then_full(f):
        f.write(b'{"v": 2, "half')
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        atomic.atomic_write_file(path, half_then_full)
    with pytest.raises(TypeError):  # not serialisable, found after part of the object was written
        atomic.atomic_write_json(path, {"v": 3, "bad": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert names(tmp_path) == ["r.json"]
    with pytest.raises(OSError):  # a new file that fails never appears
        atomic.atomic_write_file(tmp_path / "new.json", half_then_full)
    assert names(tmp_path) == ["r.json"]


def test_a_failed_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "dir"
    (target / "inner").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic.atomic_write_text(target, "x")
    assert names(tmp_path) == ["dir"] and names(target) == ["inner"]


def test_torch_and_numpy_writes(tmp_path):
    atomic.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "s.pt")
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["w"], torch.arange(3))
    out = tmp_path / "a.npz"
    atomic.atomic_np_savez(out, {"x": np.arange(4)}, compressed=True)
    assert names(tmp_path) == ["a.npz", "s.pt"]  # the name as given: no second '.npz'
    assert np.array_equal(np.load(out)["x"], np.arange(4))


def test_torch_write_failure_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic.atomic_torch_save({"epoch": 1}, path)

    def full(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK half")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=r"could not write .*ck\.pt: No space left on device .*; keep it"):
        atomic.atomic_torch_save({"epoch": 2}, path, after="keep it")
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1} and names(tmp_path) == ["ck.pt"]


def test_concurrent_writers_of_one_file_use_distinct_temp_names(tmp_path):
    path, n = tmp_path / "shared.txt", 4
    inside = threading.Barrier(n, timeout=30)
    used: list[str] = []

    def writer(i: int) -> None:
        def fill(tmp):
            tmp.write_text(f"writer {i}")
            used.append(tmp.name)
            inside.wait()  # every writer holds its temporary file at the same time
        atomic.atomic_write_with(path, fill)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pid = os.getpid()
    assert len(set(used)) == n and f".shared.txt.{pid}.tmp" in used
    assert all(name.startswith(".shared.txt.") and name.endswith(f".{pid}.tmp") for name in used)
    assert path.read_text() in {f"writer {i}" for i in range(n)} and names(tmp_path) == ["shared.txt"]
    atomic.atomic_write_with(path, lambda tmp: used.append(tmp.name) or tmp.write_text("alone"))
    assert used[-1] == f".shared.txt.{pid}.tmp"  # names are freed after each write


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / f".a.json.{dead}.tmp").write_text("half")
    (tmp_path / f".a.json.2.{dead}.tmp").write_text("half")
    (tmp_path / f".b.json.{os.getpid()}.tmp").write_text("being written")
    (tmp_path / "keep.tmp").write_text("not ours")
    atomic.remove_stale_temp_files([tmp_path])
    assert names(tmp_path) == [f".b.json.{os.getpid()}.tmp", "keep.tmp"]
