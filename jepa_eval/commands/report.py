"""jepa-eval report: compare checkpoints across tasks and against the published numbers."""
from __future__ import annotations

import argparse

from ..errors import UserError

HELP = "build a Markdown/HTML/CSV report (with figures) from one or more results folders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", nargs="+", required=True, metavar="DIR",
                   help="results folders written by `jepa-eval run` or `watch`")
    p.add_argument("--out", required=True, help="report folder, e.g. reports/NAME")
    p.add_argument("--title", default="jepa-eval report", help="report title")
    p.add_argument("--figure", action="append", default=[], metavar="PNG[=CAPTION]",
                   help="embed an extra figure (e.g. from `jepa-eval decoder visualize`); repeatable")
    p.add_argument("--run", action="append", default=[], metavar="RUN_DIR",
                   help="a pretraining run folder (with train-log.csv): draw its loss and monitor curves "
                        "against step; repeatable")
    p.add_argument("--check", action="store_true",
                   help="open the HTML in headless Chromium, fail on console errors or broken figures, "
                        "and save OUT/screenshot.png")


def run(args: argparse.Namespace) -> int:
    from ..report import build_report
    extra = [tuple(f.split("=", 1)) if "=" in f else (f, "") for f in args.figure]
    paths = build_report(args.results, args.out, title=args.title, extra_figures=extra, runs=args.run)
    print(f"report: {paths.html}\n        {paths.markdown}\n        {paths.csv} ({len(paths.figures)} figures)")
    if args.check:
        from ..report.browser import check_page
        page = check_page(paths.html, screenshot=paths.out / "screenshot.png")
        broken = [i["alt"] for i in page.images if not i["complete"] or min(i["natural"]) == 0]
        problems = page.errors + [f"broken figure: {b}" for b in broken] + \
            [f"external request: {u}" for u in page.requests]
        if problems:
            raise UserError(f"the report does not render cleanly: {'; '.join(problems)}")
        print(f"checked in Chromium: {len(page.tables)} tables, {len(page.images)} figures, no console "
              f"errors; screenshot {page.screenshot}")
    return 0
