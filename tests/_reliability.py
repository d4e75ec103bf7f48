"""Shared helpers of the reliability tests (bad inputs, kill -9 and resume, concurrent runs, determinism):
tiny batteries, the CLI in this process or in a real one, and the checks every failure must pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from jepa_eval.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = "timm:vit_tiny_patch16_224,img_size=16,patch_size=8,depth=2"
ERROR_PREFIX = "jepa-eval: error:"


def write_battery(path: Path, *entries: str) -> Path:
    """A battery YAML whose task entries are given as YAML mapping bodies (one per entry)."""
    body = "".join("  - " + "\n    ".join(e.strip().splitlines()) + "\n" for e in entries)
    path.write_text(f"description: reliability test battery\ntasks:\n{body}")
    return path


def knn_entry(dataset: str = "digits", root: str | Path | None = None, train: int = 40, test: int = 20,
              splits: str = "", extra: str = "", entry_id: str = "") -> str:
    lines = ["task: knn", f"dataset: {dataset}", f"max_samples: {{train: {train}, test: {test}}}",
             "params: {ks: [5]}"]
    if entry_id:
        lines.insert(1, f"id: {entry_id}")
    if root is not None:
        lines.append(f"root: {root}")
    if splits:
        lines.append(f"splits: {splits}")
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def cli_inprocess(capsys, argv: list) -> tuple[int, str, str]:
    """``jepa-eval ARGV`` through the real entry point, in this process (fast)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: spinning threads only slow it down
    return env


def cli_command(argv: list) -> list[str]:
    return [sys.executable, "-m", "jepa_eval", *[str(a) for a in argv]]


def cli_subprocess(argv: list, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``jepa-eval ARGV`` as a separate Python process, as a user or a cluster job runs it."""
    return subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=cli_env(), **kw)


def cli_popen(argv: list, log: Path, pause_after: str | None = None, seconds: float = 2.0) -> subprocess.Popen:
    """Start ``jepa-eval ARGV`` in the background; its stdout and stderr go to ``log``. With ``pause_after``
    ('module:function', looked up in that module's namespace at call time) the child sleeps ``seconds``
    after each call of it: on a fast machine a tiny run can write its next state between two polls of the
    test, and the pause leaves the test time to put its FIFO in place first."""
    command = cli_command(argv)
    if pause_after:
        module, name = pause_after.split(":")
        command = [sys.executable, "-c", _PAUSE_AFTER, module, name, str(seconds), *command[3:]]
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=cli_env())


_PAUSE_AFTER = """
import importlib, sys, time
module, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
mod = importlib.import_module(module)
real = getattr(mod, name)
setattr(mod, name, lambda *a, **kw: (real(*a, **kw), time.sleep(seconds))[0])
from jepa_eval.cli import main
sys.exit(main(sys.argv[4:]))
"""


def wait_for(condition: Callable[[], object], proc: subprocess.Popen | None = None, timeout: float = 240,
             what: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL: no handler, no cleanup, no flushing - the process is simply gone."""
    import signal
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def block_writes_to(path: Path) -> bool:
    """Put a FIFO where a process is about to write a temporary file: its ``open`` then waits for a
    reader that never comes, so the process stops exactly at that write until it is killed. Returns
    False when a regular file is there right now (the process is writing it; try again)."""
    try:
        os.mkfifo(path)
        return True
    except FileExistsError:
        return False


def records(out: Path) -> list[Path]:
    return sorted(p for p in (out / "records").rglob("*.json") if not p.name.startswith(".")) \
        if (out / "records").exists() else []


def record_metrics(out: Path) -> dict[str, dict]:
    """{entry id: metrics} of every record under ``out``."""
    found = {}
    for p in records(out):
        rec = json.loads(p.read_text())
        found[rec["entry"]] = rec["metrics"]
    return found


def assert_clean_failure(code: int, err: str, out: Path, expect: str) -> str:
    """Exit code 2, exactly one error line (the last one) holding ``expect``, no traceback, no record,
    no temporary file left in the results folder. Returns the error line."""
    import re
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert re.search(expect, errors[0]), f"{expect!r} not in {errors[0]!r}"
    if out.exists():
        assert not records(out), records(out)
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    return errors[0]
