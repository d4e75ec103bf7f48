"""jepa-eval run: evaluate checkpoints on a battery and print the results table."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

HELP = "run a battery of tasks on one or more checkpoints"


def parse_roots(pairs: list[str] | None) -> dict[str, str]:
    roots = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--root expects DATASET=PATH, got '{pair}'")
        name, path = pair.split("=", 1)
        roots[name] = path
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
    p.add_argument("--launcher", choices=["inprocess"], default="inprocess",
                   help="where jobs run (default: in this process)")


def run(args: argparse.Namespace) -> int:
    from ..results import load, summary_table
    from ..runner import check_output_dir, default_cache_dir, plan, run_in_process
    out = Path(args.out)
    check_output_dir(out)
    encoders = ["target", "context"] if args.encoder == "both" else [args.encoder]
    jobs = plan(args.checkpoint, args.battery, out, args.cache or default_cache_dir(), encoders,
                parse_roots(args.root))
    run_in_process(jobs, force=args.force, progress=not args.no_progress)
    table = summary_table(load(out))
    if not table.empty:
        print(table.round(2).to_string(na_rep="—"))
    print(f"records in {out / 'records'}")
    return 0
