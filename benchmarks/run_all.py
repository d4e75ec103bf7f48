"""Run every CPU benchmark (quick sizes by default) and write benchmarks/results/local.json.

    make bench                                  # = python benchmarks/run_all.py
    python benchmarks/run_all.py --save         # write the tracked benchmarks/results/latest.json instead
                                                # (only from a quiet machine: its numbers are published)
    python benchmarks/run_all.py --full         # the full sizes (tens of minutes on 2 cores)
    python benchmarks/run_all.py --scale        # also the ImageNet-sized memmap run (writes ~3.3 GB, deleted after)
GPU extraction is separate: python -m benchmarks.gpu_extract on a CUDA machine."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import benchmarks  # noqa: F401 - already importable (PYTHONPATH): keep that environment's jepa_eval
except ImportError:
    sys.path.insert(1, str(ROOT))  # `python benchmarks/run_all.py` puts only benchmarks/ on the path

import benchmarks._common as common  # noqa: E402
from benchmarks._common import say, update_results  # noqa: E402

QUICK = ["knn_speed", "extract_speed", "head_grid", "lowshot_speed"]
EXTRA_ARGS: dict[str, list[str]] = {}   # lowshot_eval now picks one thread for small solves by itself


def demo_wall(path: Path = ROOT / "reports" / "demo" / "timing.json") -> dict:
    """``make demo`` writes its stage timings; the benchmark only reads them (the demo is not re-run)."""
    try:
        wall = json.loads(path.read_text())["wall_s"]
        return {"headline": {"demo_wall_s": wall}, "source": str(path)}
    except (OSError, KeyError, json.JSONDecodeError):
        return {"headline": {"demo_wall_s": None}, "note": f"{path} not found: run `make demo` first"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full sizes instead of --quick")
    ap.add_argument("--scale", action="store_true", help="also run benchmarks.scale (ImageNet-sized memmap)")
    ap.add_argument("--only", nargs="*", default=None, help=f"a subset of {QUICK}")
    ap.add_argument("--save", action="store_true", help=f"write {common.LATEST.name} (tracked) instead of "
                                                        f"{common.RESULTS.name}")
    a = ap.parse_args(argv)
    if a.save:
        common.RESULTS = common.LATEST
    results = common.RESULTS
    results.unlink(missing_ok=True)     # one file holds one run, never a mix of runs
    failed = []
    for name in (a.only or QUICK) + (["scale"] if a.scale else []):
        say(f"\n== {name}")
        t = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.main(([] if a.full or name == "scale" else ["--quick"]) + EXTRA_ARGS.get(name, []))
        except ImportError as e:   # a probe this checkout does not have yet
            say(f"   skipped: {e}")
            update_results(name, {"skipped": str(e)})
            failed.append(name)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            update_results(name, {"failed": traceback.format_exc(limit=3)})
            failed.append(name)
        say(f"   {name}: {time.perf_counter() - t:.0f} s")
    update_results("demo", demo_wall())
    print(f"\nwrote {results}")
    print(json.dumps({k: v for k, v in json.loads(results.read_text()).items() if k != "details"}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
