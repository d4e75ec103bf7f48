"""jepa-eval report: compare checkpoints across tasks and against the published numbers."""
from __future__ import annotations

import argparse

HELP = "build a Markdown/HTML/CSV report (with figures) from one or more results folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", nargs="+", required=True, metavar="DIR",
                   help="results folders written by `jepa-eval run` or `watch`")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--title", default="jepa-eval report", help="report title")


def run(args: argparse.Namespace) -> int:
    from ..report import build_report
    paths = build_report(args.results, args.out, title=args.title)
    print(f"report: {paths.html}\n        {paths.markdown}\n        {paths.csv} ({len(paths.figures)} figures)")
    return 0
