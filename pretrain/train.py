"""I-JEPA pretraining loop (docs/protocols.md §2), one process per GPU (DDP when WORLD_SIZE > 1) or one on CPU.

``main(config, out, ...)`` is the single entry point: the CLI calls it, and a cluster launcher (e.g. a
submitit job that exported RANK/WORLD_SIZE/MASTER_ADDR) can call it as is. Every schedule is a pure
function of the global step, so resuming needs only the step, the weights, the optimizer and the mask
sampler's state."""
from __future__ import annotations

import copy
import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from jepa_eval.atomic import remove_stale_temp_files
from jepa_eval.errors import UserError
from jepa_eval.models import JEPAPredictor, build_encoder, gather_tokens
from jepa_eval.seeding import seeded

from . import checkpointing as ckpt
from .config import Config, load_config
from .data import EpochSampler, build_dataset, build_loader
from .masks import MultiBlockMaskCollator
from .monitors import MONITOR_COLUMNS, TrainingMonitor, warn

# rows of monitor-only measurements (step 0) leave the training columns empty, and vice versa
LOG_COLUMNS = ["epoch", "step", "loss", "ctx_keep", "tgt_keep", "lr", "wd", "momentum", "step_time",
               *MONITOR_COLUMNS]


# ---------------------------------------------------------------- models and optimizer
def _official_init(model: nn.Module, blocks: nn.ModuleList) -> None:
    """trunc-normal(0.02) Linears, unit LayerNorms, and the residual-branch rescaling by 1/sqrt(2 layer)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def build_models(cfg: Config, seed: int | None = None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(context encoder, predictor, target encoder), seeded, with the shared jepa_eval definitions."""
    m, d = cfg.model, cfg.data
    with seeded(cfg.meta.seed if seed is None else seed):   # module init draws from the global RNG
        encoder = build_encoder(m.width, m.depth, m.patch_size, d.img_size, m.num_heads, m.mlp_ratio)
        predictor = JEPAPredictor(encoder.patch_embed.num_patches, m.width, m.pred_emb_dim, m.pred_depth,
                                  m.num_heads, m.mlp_ratio)
        _official_init(encoder, encoder.blocks)
        _official_init(predictor, predictor.predictor_blocks)
    target = copy.deepcopy(encoder)
    target.requires_grad_(False)
    return encoder, predictor, target


def build_optimizer(*models: nn.Module) -> torch.optim.AdamW:
    """AdamW; biases and 1-D parameters (norms) are excluded from weight decay, as in the release."""
    decay, no_decay = [], []
    for model in models:
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay}, {"params": no_decay, "WD_exclude": True, "weight_decay": 0.0}])


def schedules(cfg: Config, step: int, total: int, warmup: int) -> tuple[float, float, float]:
    """(lr, weight decay, EMA momentum) at a global step: linear warmup then cosine lr, cosine wd,
    linear momentum."""
    o = cfg.optimization
    if step < warmup:
        lr = o.start_lr + (o.lr - o.start_lr) * step / warmup
    else:
        progress = (step - warmup) / max(1, total - warmup)
        lr = max(o.final_lr, o.final_lr + (o.lr - o.final_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    progress = min(step / max(1, total), 1.0)
    wd = o.final_weight_decay + (o.weight_decay - o.final_weight_decay) * 0.5 * (1 + math.cos(math.pi * progress))
    momentum = o.ema[0] + (o.ema[1] - o.ema[0]) * progress
    return lr, wd, momentum


# ---------------------------------------------------------------- one step
def jepa_loss(encoder: nn.Module, predictor: nn.Module, target: nn.Module, imgs: torch.Tensor,
              masks_enc: list[torch.Tensor], masks_pred: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        h = target(imgs)
        h = F.layer_norm(h, (h.size(-1),))  # parameter-free normalization of the targets
        h = gather_tokens(h, masks_pred)    # [npred*B, K_tgt, D], target-mask-major
        if len(masks_enc) > 1:              # the predictor repeats each target block per context mask
            h = torch.cat([blk for blk in h.split(imgs.size(0)) for _ in range(len(masks_enc))])
    z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
    return F.smooth_l1_loss(z, h)


@torch.no_grad()
def ema_update(target: nn.Module, encoder: nn.Module, momentum: float) -> None:
    inner = encoder.module if isinstance(encoder, nn.parallel.DistributedDataParallel) else encoder
    t = [p for p in target.parameters()]
    s = [p.detach() for p in inner.parameters()]
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)


# ---------------------------------------------------------------- distributed
def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _mean_over_ranks(x: torch.Tensor, world: int) -> float:
    if world > 1:
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        x /= world
    return float(x.detach())


# ---------------------------------------------------------------- the loop
def _open_log(out: Path, resume_step: int) -> tuple[Any, Any, list[dict]]:
    """CSV log; on resume, rows after the resumed step (work lost with the kill) are dropped."""
    path = out / "train-log.csv"
    rows = []
    if resume_step and path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    f = open(path, "w", newline="")
    writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return f, writer, rows


def _monitor_cells(values: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.6g}" for k, v in values.items()}


def main(config: Config | str | Path, out: str | Path, epochs: int | None = None, max_steps: int | None = None,
         resume: bool = False, progress: bool = True,
         on_step: Callable[[int, dict[str, nn.Module]], None] | None = None) -> dict[str, Any]:
    """Train and checkpoint into ``out``. ``epochs`` overrides the config (it sets the schedules);
    ``max_steps`` stops early like a kill would, leaving a resumable ``jepa-latest.pth.tar``.
    ``on_step(step, models)`` is called after each step on rank 0 (benchmarks evaluate there).
    torch's CPU thread count (``meta.cpu_threads``) is restored on return, also on error: a caller that
    evaluates next (the demo, benchmarks) keeps all its cores."""
    threads = torch.get_num_threads()
    try:
        return _train(config, out, epochs, max_steps, resume, progress, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(config: Config | str | Path, out: str | Path, epochs: int | None, max_steps: int | None,
           resume: bool, progress: bool, on_step: Callable[[int, dict[str, nn.Module]], None] | None) -> dict[str, Any]:
    cfg = load_config(config) if isinstance(config, (str, Path)) else copy.deepcopy(config)
    if epochs is not None:
        cfg.optimization.epochs = int(epochs)
    cfg.resolve()
    out = Path(out)
    rank, world, device = _distributed()
    if device.type == "cpu" and cfg.meta.cpu_threads:
        torch.set_num_threads(cfg.meta.cpu_threads)
    o, tag = cfg.optimization, cfg.meta.write_tag
    latest = ckpt.latest_path(out, tag)
    if resume and not latest.is_file():
        raise UserError(f"--resume: no {latest.name} in {out}")
    if not resume and latest.is_file():
        raise UserError(f"{out} already holds {latest.name}; pass --resume to continue it or choose another --out")

    ds = build_dataset(cfg.data, seed=cfg.meta.seed)
    out.mkdir(parents=True, exist_ok=True)
    sampler = EpochSampler(len(ds), cfg.data.batch_size, cfg.meta.seed, rank, world)
    ipe = sampler.batches_per_epoch
    if ipe == 0:
        raise UserError(f"{len(ds)} images are fewer than one batch of {cfg.data.batch_size} x {world} processes")
    total, warmup = int(o.ipe_scale * o.epochs * ipe), int(o.warmup * ipe)
    masks = MultiBlockMaskCollator(cfg.data.img_size, cfg.model.patch_size, cfg.mask, seed=cfg.meta.seed * 1000 + rank)

    encoder, predictor, target = build_models(cfg)
    encoder, predictor, target = encoder.to(device), predictor.to(device), target.to(device)
    opt = build_optimizer(encoder, predictor)
    use_amp = device.type == "cuda" and cfg.meta.use_bfloat16
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    step, loss_value = 0, float("nan")
    if resume:
        if rank == 0:  # what a killed run was writing when it died
            remove_stale_temp_files([out])
        state = ckpt.load_for_resume(latest)
        for model, key in ((encoder, "encoder"), (predictor, "predictor"), (target, "target_encoder")):
            ckpt.load_module_state(model, state[key])
        opt.load_state_dict(state["opt"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        extra = state.get("jepa_eval") or {}
        step = int(extra.get("step", state["epoch"] * ipe))
        masks.load_state_dict({**extra.get("mask_sampler", {"step": step}), "seed": masks.seed})
        loss_value = float(state.get("loss") or float("nan"))
    if world > 1:
        encoder = nn.parallel.DistributedDataParallel(encoder, static_graph=True)
        predictor = nn.parallel.DistributedDataParallel(predictor, static_graph=True)
    if rank == 0:
        ckpt.write_config(out, cfg)
    stop = min(total, max_steps) if max_steps else total
    log_file, log, kept_rows = _open_log(out, step) if rank == 0 else (None, None, [])
    monitor = None
    if rank == 0 and cfg.monitor.every > 0:
        monitor = TrainingMonitor(cfg.monitor, ds, cfg.data.img_size, cfg.model.patch_size, cfg.mask, device)
        first = next((r for r in kept_rows if r.get("rankme")), None)  # a resumed run's step-0 reference
        if first is not None:
            monitor.reference = {k: float(first[k]) for k in MONITOR_COLUMNS if first.get(k)}
    shown: dict[str, str] = {}
    monitor_clock = [0.0]
    bar = tqdm(total=stop, initial=step, desc=f"pretrain {cfg.name}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    save_args = dict(batch_size=cfg.data.batch_size, world_size=world)
    t_start, steps_run = time.perf_counter(), 0

    def save(path: Path, epoch: int, lr: float) -> None:
        if rank == 0:
            ckpt.save_checkpoint(path, encoder=encoder, predictor=predictor, target_encoder=target, opt=opt,
                                 scaler=scaler, epoch=epoch, loss=loss_value, lr=lr, step=step,
                                 mask_state=masks.state_dict(), **save_args)

    def run_monitors() -> dict[str, str]:
        t0 = time.perf_counter()
        values = monitor.measure(encoder, predictor, target)
        monitor_clock[0] += time.perf_counter() - t0
        line = monitor.check(step, values)
        if line:
            bar.clear()
            warn(line)
        shown.update(rankme=f"{values['rankme']:.1f}", dep=f"{values['input_dep']:.2f}",
                     **({"knn": f"{values['knn']:.1f}"} if "knn" in values else {}))
        return _monitor_cells(values)

    lr = schedules(cfg, step, total, warmup)[0]
    try:
        if monitor is not None and step == 0 and stop > 0:
            log.writerow(dict(epoch=0, step=0, **run_monitors()))  # the step-0 reference
            log_file.flush()
        for epoch in range(step // ipe, o.epochs):
            if step >= stop:
                break
            sampler.set_epoch(epoch, start_batch=step - epoch * ipe)
            for imgs in build_loader(ds, cfg.data, sampler):
                t0 = time.perf_counter()
                lr, wd, momentum = schedules(cfg, step, total, warmup)
                for group in opt.param_groups:
                    group["lr"] = lr
                    if not group.get("WD_exclude"):
                        group["weight_decay"] = wd
                masks_enc, masks_pred = masks.sample(imgs.size(0))
                imgs = imgs.to(device, non_blocking=True)
                masks_enc = [mk.to(device, non_blocking=True) for mk in masks_enc]
                masks_pred = [mk.to(device, non_blocking=True) for mk in masks_pred]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = jepa_loss(encoder, predictor, target, imgs, masks_enc, masks_pred)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if o.clip_grad:
                    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], o.clip_grad)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                ema_update(target, encoder, momentum)
                loss_value = _mean_over_ranks(loss, world)
                if not math.isfinite(loss_value):
                    raise UserError(f"loss became {loss_value} at step {step}; lower optimization.lr "
                                    f"or lengthen optimization.warmup")
                step, steps_run = step + 1, steps_run + 1
                dt = time.perf_counter() - t0  # the step alone: monitor time is not in step_time
                cells = run_monitors() if monitor is not None and monitor.due(step) else {}
                if log is not None:
                    log.writerow(dict(epoch=epoch, step=step, loss=f"{loss_value:.6f}",
                                      ctx_keep=masks_enc[0].size(1), tgt_keep=masks_pred[0].size(1),
                                      lr=f"{lr:.6g}", wd=f"{wd:.6g}", momentum=f"{momentum:.6f}",
                                      step_time=f"{dt:.4f}", **cells))
                    log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", **shown)
                if on_step is not None and rank == 0:
                    on_step(step, {"encoder": encoder, "predictor": predictor, "target_encoder": target})
                if step >= stop:
                    break
            finished_epoch = step == (epoch + 1) * ipe
            save(latest, epoch + 1 if finished_epoch else epoch, lr)
            if finished_epoch and (epoch + 1) % cfg.meta.checkpoint_every == 0:
                save(ckpt.epoch_path(out, epoch + 1, tag), epoch + 1, lr)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    elapsed = time.perf_counter() - t_start
    return {"out": str(out), "checkpoint": str(latest), "step": step, "total_steps": total, "loss": loss_value,
            "seconds": elapsed, "steps_per_s": steps_run / max(elapsed, 1e-9),
            "monitor_seconds": monitor_clock[0]}
