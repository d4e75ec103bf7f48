"""jepa-eval pretrain: train an I-JEPA from a shipped config name or a YAML file (official-layout checkpoints)."""
from __future__ import annotations

import argparse

HELP = "pretrain an I-JEPA (shipped config name or YAML path); writes official-layout checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="shipped config name (e.g. tiny-fashion-mnist) or a YAML path")
    p.add_argument("--out", required=True, help="folder for jepa-latest.pth.tar, config.yaml and train-log.csv")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (schedules follow)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps in total (schedules unchanged; --resume continues)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/jepa-latest.pth.tar")
    p.add_argument("--root", default=None, help="dataset folder (overrides data.root)")
    p.add_argument("--seed", type=int, default=None, help="override meta.seed")
    p.add_argument("--launcher", choices=["local"], default="local",
                   help="where to run: in this process (torchrun for several GPUs)")


def run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.train import main
    from jepa_eval.errors import UserError
    overrides: dict = {}
    if args.root:
        overrides["data"] = {"root": args.root}
    if args.seed is not None:
        overrides["meta"] = {"seed": args.seed}
    for name, value in (("--epochs", args.epochs), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be positive, got {value}")
    cfg = load_config(args.config, **overrides)
    summary = main(cfg, args.out, epochs=args.epochs, max_steps=args.max_steps, resume=args.resume)
    print(f"{summary['step']}/{summary['total_steps']} steps, loss {summary['loss']:.4f}, "
          f"{summary['steps_per_s']:.2f} steps/s; checkpoint {summary['checkpoint']}")
    return 0
