"""`make demo`: the whole suite on 2 CPU cores in about a quarter of an hour.

1. a short I-JEPA pretraining on Fashion-MNIST (the shipped sample when the idx files are absent) and on
   rendered CLEVR-format scenes, to show that step working;
2. the `default` battery on the shipped demo checkpoint (target and context encoders), the same
   architecture at random init, and raw pixels as a floor;
3. the diffusion decoder: a short `decoder train` to show the command, and the figures drawn with the
   decoders shipped for the demo checkpoint (``assets/demo-decoder``), which have learned;
4. a report in reports/demo/.
Every stage goes through the same commands a user types, so the demo exercises the real code paths."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from .cli import main as cli
from .errors import UserError

DEMO_CONFIG = "tiny-fashion-mnist"


def _stage(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.time()


def _call(*argv: object) -> None:
    code = cli([str(a) for a in argv])
    if code:
        raise SystemExit(f"demo: `jepa-eval {' '.join(map(str, argv))}` failed with exit code {code}")


def random_init_checkpoint(path: Path, config: str = DEMO_CONFIG, seed: int = 0) -> Path:
    """The demo architecture at random init, written in the official layout (a baseline row)."""
    from pretrain import checkpointing, config as cfgmod, train
    if path.is_file():
        return path
    cfg = cfgmod.load_config(config).resolve()
    encoder, predictor, target = train.build_models(cfg, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"encoder": checkpointing.module_state(encoder), "predictor": checkpointing.module_state(predictor),
                "target_encoder": checkpointing.module_state(target), "opt": {}, "scaler": None, "epoch": 0,
                "loss": None, "batch_size": cfg.data.batch_size, "world_size": 1, "lr": 0.0}, path)
    checkpointing.write_config(path.parent, cfg)
    return path


def shipped_decoder(checkpoint: Path, mode: str) -> Path | None:
    """The shipped demo decoder of ``mode`` when it was trained on this checkpoint, else None."""
    from .assets import demo_decoder_path
    from .checkpoint import sha256_file
    try:
        folder = demo_decoder_path(mode)
    except UserError:
        return None
    extra = json.loads((folder / "decoder.json").read_text()).get("extra", {})
    return folder if extra.get("checkpoint_sha256") == sha256_file(Path(checkpoint)) else None


def run(out: Path, report: Path, quick: bool = False) -> dict:
    t_start = time.time()
    timings: dict[str, float] = {}
    from .assets import demo_checkpoint_path
    ck = demo_checkpoint_path()
    from .commands._environment import data_root
    from .datasets.builtin import fashion_mnist_available
    # Evaluation always reads the shipped Fashion-MNIST sample, the data the demo checkpoint was pretrained
    # on, so every machine shows the same in-domain numbers; only the short pretraining prefers the full set.
    data = "fashion-mnist-sample"
    pretrain_data = "fashion-mnist" if fashion_mnist_available(data_root("fashion-mnist")) else "fashion-mnist-sample"
    print(f"demo: evaluation data = {data}; work folder {out}; report {report}")

    t = _stage(f"1/4 a short I-JEPA pretraining on {pretrain_data} and on rendered CLEVR scenes")
    shutil.rmtree(out / "pretrain", ignore_errors=True)
    _call("pretrain", "--config", DEMO_CONFIG, "--dataset", pretrain_data, "--out", out / "pretrain" / pretrain_data,
          "--max-steps", 10 if quick else 60)
    clevr = out / "clevr"
    if not (clevr / "scenes" / "CLEVR_val_scenes.json").is_file():
        _call("make-clevr", "--out", clevr, "--n-train", 300 if quick else 1000, "--n-val", 100 if quick else 300,
              "--size", 64, "--seed", 0)
    _call("pretrain", "--config", "tiny-clevr", "--root", clevr, "--out", out / "pretrain" / "clevr",
          "--max-steps", 5 if quick else 30)
    timings["pretrain_s"] = time.time() - t

    t = _stage("2/4 the default battery: demo checkpoint (target + context), random init, raw pixels")
    rand = random_init_checkpoint(out / "random-init" / "jepa-random-init.pth.tar")
    roots = ["--root", f"clevr-count={clevr}", "--root", f"clevr-dist={clevr}"]
    results = out / "results"
    # the demo's own scratch records: a previous demo checkpoint's would join the report as another model
    shutil.rmtree(results, ignore_errors=True)
    common = ["--battery", "smoke" if quick else "default", "--out", results, "--cache", out / "cache", *roots]
    _call("run", "--checkpoint", ck, "--encoder", "both", *common)
    _call("run", "--checkpoint", rand, "--checkpoint", "pixels:28", *common)
    timings["evaluate_s"] = time.time() - t

    t = _stage("3/4 what the representation and the predictor know: the diffusion decoder")
    report.mkdir(parents=True, exist_ok=True)
    decoder = out / "decoder"
    # a short run shows the command; a few hundred CPU steps do not learn enough to draw from. Trained anew
    # each time (seconds): a kept one may belong to a previous demo checkpoint
    shutil.rmtree(decoder, ignore_errors=True)
    _call("decoder", "train", "--checkpoint", ck, "--dataset", data, "--out", decoder, "--config", "cpu",
          "--max-steps", 5 if quick else 30, "--max-samples", 500 if quick else 2000)
    figures = []
    for mode, name, caption in (
            ("image", "decoder-image.png", "What the representation knows: per row a test image, samples "
             "decoded from its pooled representation (guidance 0 and 2), a sample from another image's "
             "representation (the shuffled control), and that other image"),
            ("predictor", "predictor.png", "What the predictor sees: per row the image, the context (target "
             "box blanked), the box filled from the predictor's output, from the true target representation, "
             "and from another image's representation of the same block (the shuffled control)")):
        shipped = shipped_decoder(ck, mode)
        if shipped is None and mode == "predictor":
            continue
        _call("decoder", "visualize", "--checkpoint", ck, "--decoder", shipped or decoder, "--dataset", data,
              "--out", report / name, "--n-images", 4 if quick else 8, "--ddim-steps", 10 if quick else 50)
        if shipped is None:
            caption += " (the short demo decoder: the shipped one is missing or was trained on another checkpoint)"
        figures.append(f"{report / name}={caption}")
    timings["decoder_s"] = time.time() - t

    t = _stage("4/4 the report")
    _call("report", "--results", results, "--out", report, "--title", "jepa-eval demo",
          *[a for f in figures for a in ("--figure", f)])
    timings["report_s"] = time.time() - t
    timings["wall_s"] = time.time() - t_start
    (report / "timing.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=1) + "\n")
    print(f"\ndemo finished in {timings['wall_s'] / 60:.1f} min; open {report / 'report.html'} "
          f"(or {report / 'report.md'})")
    return timings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jepa_eval.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="work folder (pretraining runs, results, caches)")
    p.add_argument("--report", default="reports/demo", help="report folder")
    p.add_argument("--quick", action="store_true", help="a one-minute version (smoke battery, a few steps)")
    args = p.parse_args(argv)
    try:
        run(Path(args.out), Path(args.report), quick=args.quick)
    except UserError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
