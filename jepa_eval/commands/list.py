"""jepa-eval list: the registered tasks, datasets and shipped batteries."""
from __future__ import annotations

import argparse

HELP = "list tasks, datasets and batteries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=["tasks", "datasets", "batteries"], help="only this kind")


def run(args: argparse.Namespace) -> int:
    from ..battery import builtin_batteries, load_battery
    from ..datasets import DATASETS
    from ..task import TASKS
    if args.what in (None, "tasks"):
        print("tasks:")
        for name in TASKS.names():
            doc = (TASKS.get(name).__doc__ or "").strip().splitlines()
            print(f"  {name:14s} {doc[0] if doc else ''}")
    if args.what in (None, "datasets"):
        print("datasets:")
        for name in DATASETS.names():
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
            print(f"  {name:14s} {doc[0] if doc else ''}")
    if args.what in (None, "batteries"):
        print("batteries:")
        for name, path in sorted(builtin_batteries().items()):
            b = load_battery(str(path))
            print(f"  {name:14s} {b.description} [{', '.join(e.id for e in b.entries)}]")
    return 0
