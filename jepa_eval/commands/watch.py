"""jepa-eval watch: evaluate each checkpoint of a pretraining run as it appears, refresh the report.

Safe to stop and restart: records that exist are skipped by the runner, so a restarted watcher only
evaluates what is new. A checkpoint is read only once its size and mtime have stopped changing and it
loads; a file that fails to load is retried when it changes. Each new checkpoint's jobs go through a
launcher, as in ``jepa-eval run`` (in this process by default, sharing feature extraction between tasks;
``--launcher slurm`` submits them and the report follows as their records land)."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config_io import nonnegative_float, positive_float
from ..errors import UserError
from .run import add_launcher_arguments, launch_options, parse_roots

if TYPE_CHECKING:
    from ..launchers import LaunchOptions, Launcher

HELP = "evaluate a pretraining run's jepa-ep{N} checkpoints as they appear and keep a report up to date"
EPOCH_FILE = re.compile(r"jepa-ep(\d+)\.pth\.tar$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="pretraining output folder (jepa-ep{N}.pth.tar files)")
    p.add_argument("--battery", required=True, help="shipped battery name or YAML path")
    p.add_argument("--out", required=True, help="results folder (shared with `jepa-eval run`)")
    p.add_argument("--report", default=None, help="report folder to refresh (default: OUT/report)")
    p.add_argument("--encoder", choices=["target", "context", "both"], default="target")
    p.add_argument("--latest", action="store_true", help="also evaluate jepa-latest.pth.tar each time it changes")
    p.add_argument("--interval", type=positive_float, default=60.0, help="seconds between scans (default 60)")
    p.add_argument("--settle", type=nonnegative_float, default=5.0,
                   help="a file must keep its size and mtime this many seconds before it is read (default 5)")
    p.add_argument("--once", action="store_true", help="scan once, evaluate what is complete, exit")
    p.add_argument("--root", action="append", metavar="DATASET=PATH", help="data folder for a dataset")
    p.add_argument("--cache", default=None, help="feature cache folder (default $JEPA_EVAL_CACHE or ~/.cache)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_launcher_arguments(p)


def checkpoints(run_dir: Path, latest: bool) -> list[Path]:
    """jepa-ep{N} files by epoch, then jepa-latest when asked for."""
    found = sorted((p for p in run_dir.iterdir() if EPOCH_FILE.match(p.name)),
                   key=lambda p: int(EPOCH_FILE.match(p.name).group(1)))
    if latest and (run_dir / "jepa-latest.pth.tar").is_file():
        found.append(run_dir / "jepa-latest.pth.tar")
    return found


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def settled(path: Path, seconds: float) -> bool:
    """True when the file's size and mtime do not change over ``seconds`` (a writer has finished)."""
    try:
        before = _signature(path)
        if time.time() - before[1] / 1e9 > seconds:  # untouched for long enough already
            return before[0] > 0
        time.sleep(seconds)
        return _signature(path) == before and before[0] > 0
    except FileNotFoundError:
        return False


def log(msg: str) -> None:
    print(f"watch: {msg}", file=sys.stderr, flush=True)


def scan(args: argparse.Namespace, seen: dict[Path, tuple[int, int]], launcher: "Launcher",
         options: "LaunchOptions") -> int:
    """Evaluate every complete checkpoint not yet seen in this state; returns how many were evaluated."""
    from ..checkpoint import load_checkpoint
    from ..runner import plan
    from ._environment import cache_dir, default_roots
    encoders = ["target", "context"] if args.encoder == "both" else [args.encoder]
    cache = cache_dir(args.cache)
    done = 0
    for path in checkpoints(Path(args.run_dir), args.latest):
        try:
            sig = _signature(path)
        except FileNotFoundError:  # replaced between listing and stat (jepa-latest is rewritten)
            continue
        if seen.get(path) == sig:
            continue
        if not settled(path, args.settle):
            log(f"{path.name} is still being written; next scan")
            continue
        try:
            ck = load_checkpoint(str(path), cache=cache)
        except UserError as e:
            log(f"{path.name} cannot be loaded yet ({e}); retried when it changes")
            seen[path] = sig
            continue
        seen[path] = sig
        log(f"{path.name} (epoch {ck.meta.get('epoch')})")
        jobs = plan([str(path)], args.battery, args.out, cache, encoders, parse_roots(args.root), default_roots())
        launcher.launch(jobs, Path(args.out), options, progress=not args.no_progress)
        done += 1
    return done


def records_state(out: Path) -> tuple[tuple[str, int], ...]:
    """Names and mtimes of the records under ``out``: the report is rebuilt when they change (records
    of submitted jobs land between scans)."""
    found = sorted((out / "records").rglob("*.json")) if (out / "records").is_dir() else []
    return tuple((str(p), p.stat().st_mtime_ns) for p in found if not p.name.startswith("."))


def refresh_report(args: argparse.Namespace) -> None:
    from ..report import build_report
    report = Path(args.report) if args.report else Path(args.out) / "report"
    try:
        paths = build_report([args.out], report, title=f"Run {Path(args.run_dir).resolve().name}")
        log(f"report refreshed: {paths.html}")
    except UserError as e:
        log(f"no report yet: {e}")


def run(args: argparse.Namespace) -> int:
    from ..battery import load_battery
    from ..launchers import LAUNCHERS
    from ..runner import check_output_dir
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if args.interval <= 0 or args.settle < 0:
        raise UserError("--interval must be positive and --settle not negative")
    load_battery(args.battery)  # fail now on a bad battery, not at the first checkpoint
    parse_roots(args.root)
    check_output_dir(Path(args.out))
    launcher, options = LAUNCHERS.get(args.launcher)(), launch_options(args)
    seen: dict[Path, tuple[int, int]] = {}
    reported = None
    while True:
        scan(args, seen, launcher, options)
        current = records_state(Path(args.out))
        if current != reported:
            refresh_report(args)
            reported = current
        if args.once:
            return 0
        log(f"waiting for new checkpoints in {run_dir} (every {args.interval:g} s; Ctrl-C stops, a restart resumes)")
        time.sleep(args.interval)
