"""Shared helpers for the benchmarks: machine description, timing, peak RSS, tables, the results file.

Results go to ``results/local.json`` (untracked) unless a command points ``RESULTS`` at the tracked
``results/latest.json`` (``run_all.py --save``): the committed numbers change only when someone means it,
from a quiet machine."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"     # tracked: the published numbers
RESULTS = LATEST.with_name("local.json")                                   # where update_results writes


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, library versions and the GPU if any."""
    import faiss
    import numpy as np
    import sklearn
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = None
    try:
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "ram_gib": ram,
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "faiss": faiss.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__,
            "load_avg_1min": load, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@contextmanager
def timer(out: dict[str, float], key: str) -> Iterator[None]:
    """Wall time of the block into ``out[key]`` (seconds)."""
    t = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB). It counts
    memory-mapped file pages that were touched, so it over- rather than under-states."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [list(map(str, header))] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(cells[0], widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def update_results(section: str, data: dict[str, Any], path: Path | None = None) -> None:
    """Merge one benchmark's numbers into ``path`` (default: the module's ``RESULTS``; atomic write),
    refreshing the machine info."""
    path = path or RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        results = {}
    results["machine"] = machine_info()
    results.setdefault("details", {})[section] = data
    for key, value in data.get("headline", {}).items():
        results[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False, default=float) + "\n")
    os.replace(tmp, path)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
