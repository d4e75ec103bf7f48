"""jepa-eval pretrain: train an I-JEPA from a shipped config name or a YAML file (official-layout checkpoints)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config_io import nonnegative_int, positive_float, positive_int

HELP = "pretrain an I-JEPA (shipped config name or YAML path); writes official-layout checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="shipped config name (e.g. tiny-fashion-mnist) or a YAML path")
    p.add_argument("--out", required=True, help="folder for jepa-latest.pth.tar, config.yaml and train-log.csv")
    p.add_argument("--epochs", type=positive_int, default=None, help="override the config's epochs (schedules follow)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps in total (schedules unchanged; --resume continues)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/jepa-latest.pth.tar")
    p.add_argument("--dataset", default=None, help="dataset name (overrides data.dataset, e.g. fashion-mnist-sample)")
    p.add_argument("--root", default=None, help="dataset folder (overrides data.root)")
    p.add_argument("--seed", type=int, default=None, help="override meta.seed")
    p.add_argument("--monitor-every", type=int, default=None, metavar="N",
                   help="measure the training monitors (RankMe, feature std, input dependence, predictor "
                        "spread) every N steps on a fixed held batch; 0 = off (overrides monitor.every)")
    p.add_argument("--monitor-knn", action="store_true",
                   help="also measure online k-NN top-1 at each monitor step (labelled datasets)")
    p.add_argument("--launcher", default="inprocess", metavar="{inprocess,local,slurm}",
                   help="inprocess (default; use torchrun for several GPUs), local (submitit on this machine) "
                        "or slurm (DDP job, requeued and resumed from jepa-latest.pth.tar on preemption)")
    g = p.add_argument_group("submitted jobs (--launcher local|slurm)")
    g.add_argument("--nodes", type=positive_int, default=1)
    g.add_argument("--gpus-per-node", type=nonnegative_int, default=1,
                   help="one DDP process per GPU (0: one CPU process per node)")
    g.add_argument("--partition", help="SLURM partition (required for slurm)")
    g.add_argument("--cpus-per-task", type=positive_int, help="CPU cores per process (required for slurm)")
    g.add_argument("--timeout-min", type=positive_int, help="time limit in minutes (required: never defaulted)")
    g.add_argument("--mem-gb", type=positive_float, help="memory per node in GB (default: the partition's)")


def run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from jepa_eval.errors import UserError
    from jepa_eval.launchers import LAUNCHERS, LaunchOptions, PretrainRequest
    from ._environment import data_root
    overrides: dict = {}
    data = {k: v for k, v in (("dataset", args.dataset), ("root", args.root)) if v}
    if data:
        overrides["data"] = data
    if args.seed is not None:
        overrides["meta"] = {"seed": args.seed}
    for name, value in (("--epochs", args.epochs), ("--max-steps", args.max_steps)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be positive, got {value}")
    if args.monitor_every is not None and args.monitor_every < 0:
        raise UserError(f"--monitor-every must be 0 (off) or positive, got {args.monitor_every}")
    monitor = {k: v for k, v in (("every", args.monitor_every), ("knn", args.monitor_knn or None)) if v is not None}
    if monitor:
        overrides["monitor"] = monitor
    cfg = load_config(args.config, **overrides)  # validates the config before anything is submitted
    if cfg.data.root is None:   # $JEPA_EVAL_DATA/DATASET, where it exists
        cfg.data.root = data_root(cfg.data.dataset)
    launcher = LAUNCHERS.get(args.launcher)()
    request = PretrainRequest(cfg, Path(args.out), resume=args.resume, nodes=args.nodes,
                              gpus_per_node=args.gpus_per_node,
                              overrides={k: v for k, v in (("epochs", args.epochs), ("max_steps", args.max_steps))
                                         if v is not None})
    options = LaunchOptions(partition=args.partition, cpus_per_task=args.cpus_per_task,
                            timeout_min=args.timeout_min, mem_gb=args.mem_gb)
    outcome = launcher.pretrain(request, options)
    if outcome.job_id is not None:
        print(f"submitted pretraining job {outcome.job_id}; follow it with `jepa-eval status {args.out}`")
        return 0
    summary = outcome.summary
    print(f"{summary['step']}/{summary['total_steps']} steps, loss {summary['loss']:.4f}, "
          f"{summary['steps_per_s']:.2f} steps/s; checkpoint {summary['checkpoint']}")
    return 0
