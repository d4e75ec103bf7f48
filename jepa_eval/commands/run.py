"""jepa-eval run: evaluate checkpoints on a battery and print the results table."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..config_io import nonnegative_int, positive_float, positive_int
from ..errors import UserError

if TYPE_CHECKING:
    from ..launchers import LaunchOptions

HELP = "run a battery of tasks on one or more checkpoints"


def parse_roots(pairs: list[str] | None) -> dict[str, str]:
    """``--root DATASET=PATH`` pairs. The name must be a known dataset and the path must exist: a root
    the user gave is never silently replaced by another copy of the data."""
    from ..battery import check_dataset_names
    roots = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--root expects DATASET=PATH, got '{pair}'")
        name, path = pair.split("=", 1)
        check_dataset_names([name], f"--root {pair}")
        if not path or not Path(path).expanduser().exists():
            raise UserError(f"--root {pair}: folder not found: {path or '(empty)'}")
        roots[name] = str(Path(path).expanduser())
    return roots


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                   help="checkpoint file, or timm:NAME[,key=value...]; repeat for several")
    p.add_argument("--battery", default="smoke", help="shipped battery name or YAML path (default: smoke)")
    p.add_argument("--out", required=True, help="results folder (records are appended; existing ones skipped)")
    p.add_argument("--encoder", choices=["target", "context", "both"], default="target",
                   help="which encoder to evaluate (the paper uses the target encoder)")
    p.add_argument("--root", action="append", metavar="DATASET=PATH", help="data folder for a dataset")
    p.add_argument("--cache", default=None, help="feature cache folder (default $JEPA_EVAL_CACHE or ~/.cache)")
    p.add_argument("--force", action="store_true", help="recompute records that already exist")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_launcher_arguments(p)


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher`` and the resources of submitted jobs (shared by ``run`` and ``watch``)."""
    p.add_argument("--launcher", default="inprocess", metavar="{inprocess,local,slurm}",
                   help="where jobs run: in this process (default), as submitit jobs on this machine "
                        "(local) or as SLURM job arrays (slurm); see `jepa-eval status DIR`")
    g = p.add_argument_group("submitted jobs (--launcher local|slurm)")
    g.add_argument("--partition", help="SLURM partition (required for slurm)")
    g.add_argument("--gpus-per-task", type=nonnegative_int, help="GPUs per job (required for slurm; 0 for none)")
    g.add_argument("--cpus-per-task", type=positive_int, help="CPU cores per job (required for slurm)")
    g.add_argument("--timeout-min", type=positive_int, help="time limit per job in minutes (required: never defaulted)")
    g.add_argument("--array-parallelism", type=positive_int, help="at most this many array tasks at once")
    g.add_argument("--mem-gb", type=positive_float, help="memory per job in GB (default: the partition's)")
    g.add_argument("--wait", action="store_true", help="slurm: return only when every job has finished")


def launch_options(args: argparse.Namespace) -> "LaunchOptions":
    from ..launchers import LaunchOptions
    return LaunchOptions(**{k: getattr(args, k, None) for k in
                            ("partition", "gpus_per_task", "cpus_per_task", "timeout_min", "array_parallelism",
                             "mem_gb")}, wait=bool(getattr(args, "wait", False)))


def run(args: argparse.Namespace) -> int:
    from ..results import load, summary_table
    from ..launchers import LAUNCHERS
    from ..runner import check_output_dir, plan
    from ._environment import cache_dir, default_roots
    out = Path(args.out)
    check_output_dir(out)
    encoders = ["target", "context"] if args.encoder == "both" else [args.encoder]
    jobs = plan(args.checkpoint, args.battery, out, cache_dir(args.cache), encoders, parse_roots(args.root),
                default_roots())
    finished = LAUNCHERS.get(args.launcher)().launch(jobs, out, launch_options(args), force=args.force,
                                                     progress=not args.no_progress)
    if not finished:
        return 0
    table = summary_table(load(out))
    if not table.empty:
        print(table.to_string())
    print(f"records in {out / 'records'}")
    return 0
