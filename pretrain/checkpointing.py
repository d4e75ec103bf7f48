"""Checkpoints in the official I-JEPA layout (docs/protocols.md §1) plus what an exact resume needs.

Top level: ``encoder, predictor, target_encoder, opt, scaler, epoch, loss, batch_size, world_size, lr``
with every model key prefixed by ``module.`` (as saved from DDP), so Meta's code and
``jepa_eval.load_checkpoint`` read them unchanged. The extra key ``jepa_eval`` holds the step counter and
the mask sampler's state; readers that do not know it ignore it. The resolved config is written beside the
files as ``config.yaml`` (model name and heads included), which is where ``load_checkpoint`` looks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from jepa_eval.atomic import atomic_torch_save, atomic_write_text
from jepa_eval.checkpoint import safe_torch_load
from jepa_eval.errors import UserError

from .config import Config

OFFICIAL_TOP_KEYS = ("encoder", "predictor", "target_encoder", "opt", "scaler", "epoch", "loss",
                     "batch_size", "world_size", "lr")


def latest_path(out: Path, tag: str = "jepa") -> Path:
    return Path(out) / f"{tag}-latest.pth.tar"


def epoch_path(out: Path, epoch: int, tag: str = "jepa") -> Path:
    return Path(out) / f"{tag}-ep{epoch}.pth.tar"


def module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the ``module.`` prefix, whether or not the model is DDP-wrapped."""
    sd = model.state_dict()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return sd
    return {f"module.{k}": v for k, v in sd.items()}


def load_module_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=True)


def write_config(out: Path, cfg: Config) -> Path:
    path = Path(out) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # read beside every checkpoint
    return path


def save_checkpoint(path: Path, *, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module,
                    opt: torch.optim.Optimizer, scaler: Any, epoch: int, loss: float, batch_size: int,
                    world_size: int, lr: float, step: int, mask_state: dict) -> None:
    """Atomic write (temp file + rename): a run killed while saving keeps its previous checkpoint."""
    state = {
        "encoder": module_state(encoder), "predictor": module_state(predictor),
        "target_encoder": module_state(target_encoder), "opt": opt.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(), "epoch": epoch, "loss": loss,
        "batch_size": batch_size, "world_size": world_size, "lr": lr,
        "jepa_eval": {"step": step, "mask_sampler": dict(mask_state)},
    }
    atomic_torch_save(state, path, after="the previous checkpoint is kept; free space and rerun with --resume")


def load_for_resume(path: Path) -> dict[str, Any]:
    state = safe_torch_load(path)
    missing = [k for k in ("encoder", "predictor", "target_encoder", "opt", "epoch") if k not in state]
    if missing or not isinstance(state.get("opt"), dict):
        raise UserError(f"{path} cannot be resumed from: it lacks {', '.join(missing) or 'optimizer state'}")
    if not state["opt"].get("state"):   # strip_for_release: resuming would silently restart Adam's moments
        raise UserError(f"{path} has no optimizer moments (a release copy, e.g. the shipped demo checkpoint): "
                        f"resume from the training run's own folder, or start a new run")
    return state


def strip_for_release(src: Path, dst: Path) -> None:
    """A small copy for shipping: same official top-level keys, optimizer state emptied."""
    state = safe_torch_load(src)
    state["opt"] = {"state": {}, "param_groups": state["opt"]["param_groups"]}
    atomic_torch_save(state, dst)
