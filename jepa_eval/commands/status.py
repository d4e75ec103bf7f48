"""jepa-eval status: the state of the jobs a `run --launcher local|slurm` submitted for a folder."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ..config_io import nonnegative_int
from ..errors import UserError

HELP = "show the state of submitted jobs of a results folder (pending, running, done, failed)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="DIR", help="the results folder given to `jepa-eval run --out`")
    p.add_argument("--lines", type=nonnegative_int, default=8, help="log lines shown per failed job (default: 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object per job instead of a table")
    p.add_argument("--wait", action="store_true", help="return only when no job is pending or running")


def run(args: argparse.Namespace) -> int:
    from ..launchers.state import SUBMISSION, job_table, wait
    out = Path(args.out)
    if not (out / SUBMISSION).exists():
        raise UserError(f"no {SUBMISSION} in {out}: nothing was submitted there with --launcher local|slurm")
    if args.wait:
        wait(out)
    rows = job_table(out, tail=args.lines)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        width = max([len(r["label"]) for r in rows] + [5])
        print(f"{'state':8} {'job':>12}  {'kind':8} {'job label':{width}}  scheduler")
        for r in rows:
            print(f"{r['state']:8} {r['job_id']:>12}  {r['kind']:8} {r['label']:{width}}  {r['scheduler']}")
            if r["log"]:
                print("    | " + r["log"].replace("\n", "\n    | "))
        counts = Counter(r["state"] for r in rows)
        print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if any(r["state"] == "failed" for r in rows) else 0
