"""Loading an official-size I-JEPA checkpoint: peak memory and time, first and second load.

Builds, in a temporary folder deleted afterwards, an official-layout ViT-H/14 file (encoder, target
encoder, predictor with random weights under the official parameter names, plus AdamW moments for the
encoder and predictor: about 10.4 GB, the size class of ``IN1K-vit.h.14-300e.pth.tar``), and a second
one that differs only in ``epoch`` (so its sha256 and feature-cache keys differ). Every measurement runs
in a fresh process and reports its own peak resident memory (VmHWM: it counts touched pages of mapped
files too):

- first load: ``load_checkpoint`` (hashes the file) + building the target encoder, file not in the page cache;
- second load: the same with the hash remembered, page cache as the first load left it, then cold again;
- ``jepa-eval features --encoder target`` on 4 digits images;
- ``jepa-eval run`` over one file and over both files in one process (k-NN on 4 + 4 digits images).

The optimizer moments are left uninitialised (written as whatever bytes the allocator gave): their
content never matters, only their size, and this keeps the builder below ~6 GB of memory.

    python -m benchmarks.load_large [--small] [--keep-dir DIR]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# the parent process stays small (no torch): children are forked from it, and a child's rusage peak
# would start from the parent's size
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
VMHWM = textwrap.dedent("""
    def vmhwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
""")

BUILD = VMHWM + textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, sys.argv[4])
    import ijepa_reference as ref
    width, depth, patch, img, pw, pd = map(int, sys.argv[3].split(","))
    t = time.time()
    torch.manual_seed(0)
    # the reference test builder, at full size (random weights under the official names)
    sds = ref.official_state_dicts(width=width, depth=depth, heads=16, patch=patch, img=img,
                                   pred_width=pw, pred_depth=pd)
    params = [t_ for k in ("encoder", "predictor") for t_ in sds[k].values()]
    state = {i: {"step": torch.tensor(93_750.0), "exp_avg": torch.empty_like(p), "exp_avg_sq": torch.empty_like(p)}
             for i, p in enumerate(params)}
    obj = {k: {f"module.{n}": v for n, v in sd.items()} for k, sd in sds.items()}
    obj.update(opt={"state": state, "param_groups": [{"lr": 1e-3, "weight_decay": 0.4, "params": list(range(len(params)))}]},
               scaler=None, epoch=300, loss=0.123, batch_size=128, world_size=16, lr=1e-3)
    for path, epoch in ((sys.argv[1], 300), (sys.argv[2], 299)):
        obj["epoch"] = epoch
        torch.save(obj, path)
    enc = sum(v.numel() * 4 for v in sds["target_encoder"].values())
    print({"build_s": time.time() - t, "builder_peak": vmhwm(), "target_encoder_bytes": enc})
""")

LOAD = VMHWM + textwrap.dedent("""
    import sys, time
    t0 = time.perf_counter()
    from jepa_eval.checkpoint import load_checkpoint
    t1 = time.perf_counter()
    ck = load_checkpoint(sys.argv[1], cache=sys.argv[2])
    t2 = time.perf_counter()
    enc = ck.target_encoder
    t3 = time.perf_counter()
    print({"import_s": t1 - t0, "load_checkpoint_s": t2 - t1, "build_target_s": t3 - t2, "load_s": t3 - t1,
           "materialized": ck.materialized, "peak": vmhwm()})
""")

CLI = VMHWM + textwrap.dedent("""
    import sys, time
    t = time.perf_counter()
    from jepa_eval.cli import main
    rc = main(sys.argv[1:])
    print({"rc": rc, "wall_s": time.perf_counter() - t, "peak": vmhwm()})
""")

BATTERY = """description: benchmark - k-NN on a handful of images
tasks:
  - {task: knn, id: knn, dataset: digits, pooling: lastPOOL, max_samples: {train: 4, test: 4},
     params: {ks: [1], temperature: 0.07}}
"""


def child(script: str, *args: str) -> dict:
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=ENV)
    if run.returncode != 0:
        sys.exit(f"step failed ({' '.join(args)}):\n{run.stderr[-3000:]}")
    import ast
    out = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t
    return out


def drop_page_cache(path: Path) -> None:
    """Evict this file's pages from the page cache (no root needed): the next read is a cold read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a ViT-S/16-sized file instead (seconds; a dry run)")
    ap.add_argument("--keep-dir", default=None, help="work folder (default: a temporary one, deleted)")
    args = ap.parse_args()
    arch = "384,12,16,224,192,2" if args.small else "1280,32,14,224,384,12"
    tmp = Path(args.keep_dir or tempfile.mkdtemp(prefix="jepa-load-large-"))
    tmp.mkdir(parents=True, exist_ok=True)
    a, b = tmp / "a" / "IN1K-vit.h.14-300e.pth.tar", tmp / "b" / "IN1K-vit.h.14-299e.pth.tar"
    a.parent.mkdir(exist_ok=True)
    b.parent.mkdir(exist_ok=True)
    res: dict = {"load_avg_before": os.getloadavg()}
    try:
        print(f"building {a.name} and {b.name} in {tmp} ...", file=sys.stderr, flush=True)
        res["build"] = child(BUILD, str(a), str(b), arch, str(ROOT / "tests"))
        res["file_bytes"] = a.stat().st_size
        enc = res["build"]["target_encoder_bytes"]
        cache = tmp / "cache"
        drop_page_cache(a)
        res["first_load"] = child(LOAD, str(a), str(cache))
        res["second_load_warm"] = child(LOAD, str(a), str(cache))
        drop_page_cache(a)
        res["second_load_cold"] = child(LOAD, str(a), str(cache))
        res["features"] = child(CLI, "features", "--checkpoint", str(a), "--dataset", "digits", "--encoder",
                                "target", "--pooling", "lastPOOL", "--max-samples", "4", "--cache", str(cache))
        battery = tmp / "bench.yaml"
        battery.write_text(BATTERY)
        for name, files in (("run_one", [a]), ("run_two", [a, b])):
            own = tmp / f"cache-{name}"  # empty feature cache: every file's encoder is really built
            own.mkdir()
            shutil.copy(cache / "checkpoint-sha256.json", own)  # hashes remembered (b's is computed)
            ck_args = [x for f in files for x in ("--checkpoint", str(f))]
            res[name] = child(CLI, "run", *ck_args, "--battery", str(battery), "--out", str(tmp / name),
                              "--cache", str(own), "--no-progress")
        res["load_avg_after"] = os.getloadavg()
    finally:
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    first, warm, cold = res["first_load"], res["second_load_warm"], res["second_load_cold"]
    lines = [
        f"file {res['file_bytes'] / 1e9:.2f} GB; target encoder fp32 weights {gib(enc)} (1.5x = {gib(1.5 * enc)})",
        f"first load (hash + target encoder, cold cache): {first['load_s']:.1f} s "
        f"(load_checkpoint {first['load_checkpoint_s']:.1f} s, build {first['build_target_s']:.1f} s), peak {gib(first['peak'])}",
        f"second load, warm cache: {warm['load_s']:.1f} s ({warm['load_s'] / first['load_s']:.2f}x of first), peak {gib(warm['peak'])}",
        f"second load, cold cache: {cold['load_s']:.1f} s ({cold['load_s'] / first['load_s']:.2f}x of first), peak {gib(cold['peak'])}",
        f"jepa-eval features --encoder target, 4 images: {res['features']['wall_s']:.1f} s, peak {gib(res['features']['peak'])} "
        f"({res['features']['peak'] / enc:.2f}x the encoder)",
        f"jepa-eval run, one file: {res['run_one']['wall_s']:.1f} s, peak {gib(res['run_one']['peak'])}; "
        f"two files: {res['run_two']['wall_s']:.1f} s, peak {gib(res['run_two']['peak'])}",
        f"build {res['build']['build_s']:.0f} s (builder peak {gib(res['build']['builder_peak'])}); "
        f"load average before {res['load_avg_before']}, after {res.get('load_avg_after')}",
    ]
    print("\n".join(lines))
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
