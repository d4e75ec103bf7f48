"""Diffusion training of the RCDM decoder on frozen target-encoder representations.

The encoder runs once, over the training images, into ``reps.npz`` (``cache.py``); training reads only
that file. Resumable: ``state.pt`` holds the step, weights, EMA, optimizer and LR schedule; the image
order, the masks and the noise of a step are all seeded by (seed, step), so a resumed run takes the same
path as an uninterrupted one. The EMA weights (with warm-up) are what ``decoder.pt`` holds and what
samples are drawn with."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_torch_save
from ..config_io import from_dict, read_yaml
from ..errors import UserError
from ..masks import MaskConfig, MultiBlockMaskCollator
from ..seeding import seeded
from .cache import box_offset, build_cache, to_decoder
from .diffusion import PREDICTIONS, ddim_sample, diffusion_loss, make_scheduler
from .features import block_boxes, box_mask, inpaint_context, pool_tokens
from .model import DecoderSpec, RCDMDecoder, UNetConfig, save_decoder

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class TrainConfig:
    batch_size: int = 64         # images per step
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 1000
    ema_decay: float = 0.999     # the EMA's ceiling; it warms up as 1 - (1 + step) ** -ema_power
    ema_power: float = 0.75
    grad_clip: float = 1.0
    cond_dropout: float = 0.1    # share of steps' images trained with the null condition (for guidance)
    min_snr_gamma: float | None = 5.0
    sample_every: int = 250      # write a sample grid every N steps (and at the end)
    save_every: int = 100        # write state.pt and decoder.pt every N steps (and at the end)
    ddim_steps: int = 50
    grid_size: int = 8           # crops per sample grid
    max_samples: int | None = None
    seed: int = 0

    def validate(self) -> str | None:
        counts = {k: getattr(self, k) for k in ("batch_size", "max_steps", "sample_every", "save_every",
                                                "ddim_steps", "grid_size")}
        bad = [k for k, v in counts.items() if v < 1]
        if bad:
            return f"{bad[0]} must be >= 1, got {counts[bad[0]]}"
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            return "lr and grad_clip must be positive and weight_decay >= 0"
        if not 0 <= self.ema_decay < 1:
            return f"ema_decay must be in [0, 1), got {self.ema_decay}"
        if self.warmup_steps < 0:
            return "warmup_steps must be >= 0"
        if not 0 <= self.cond_dropout < 1:
            return f"cond_dropout must be in [0, 1), got {self.cond_dropout}"
        return None if self.max_samples is None or self.max_samples >= 1 else "max_samples must be >= 1 or null"


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"

    def validate(self) -> str | None:
        if self.prediction_type not in PREDICTIONS:
            return f"diffusion.prediction_type must be one of {', '.join(PREDICTIONS)}, not '{self.prediction_type}'"
        return None if self.num_train_timesteps >= 2 else "num_train_timesteps must be >= 2"


@dataclass
class DecoderFile:
    """The decoder YAML's layout (checked by the shared loader; becomes a ``DecoderConfig``)."""
    size: int = 32
    condition: str = "image"
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def validate(self) -> str | None:
        if self.condition not in ("region", "image"):
            return f"condition must be 'region' or 'image', not '{self.condition}'"
        return None if self.size >= 8 else f"size must be >= 8 pixels, got {self.size}"


@dataclass
class DecoderConfig:
    size: int
    condition: str
    unet: UNetConfig
    train: TrainConfig
    masks: MaskConfig
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"


def load_config(name_or_path: str = "cpu", **overrides: Any) -> DecoderConfig:
    """A packaged config (``cpu``, ``gpu``) or a YAML file; ``overrides`` replace train/top-level keys."""
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"decoder config '{name_or_path}' is neither a packaged config ({', '.join(names)}) "
                        f"nor a file")
    raw = read_yaml(path, "decoder config") or {}
    where = f"decoder config {path.name}"
    cli = {k: v for k, v in overrides.items() if v is not None}
    raw = dict(raw) if isinstance(raw, dict) else raw
    if isinstance(raw, dict):   # the command line's values replace the file's and are checked the same way
        raw.update({k: cli[k] for k in ("size", "condition") if k in cli})
        train = {k: v for k, v in cli.items() if k not in ("size", "condition")}
        if train:
            raw["train"] = {**(raw.get("train") or {}), **train}
    f = from_dict(DecoderFile, raw, where)
    return DecoderConfig(size=f.size, condition=f.condition, unet=f.unet, train=f.train, masks=f.masks,
                         num_train_timesteps=f.diffusion.num_train_timesteps,
                         beta_schedule=f.diffusion.beta_schedule, prediction_type=f.diffusion.prediction_type)


def step_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The images of one step, from a generator seeded by (seed, step): resuming takes the same path."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randperm(n, generator=g)[:batch]


class RegionSampler:
    """Region (inpainting) inputs from cached tokens: one target block per image from the pretraining
    collator -> (pooled block representation, context image + box mask, box mask)."""

    def __init__(self, masks: MaskConfig, enc_size: int, patch: int, size: int, seed: int) -> None:
        self.collator = MultiBlockMaskCollator(enc_size, patch, masks, seed=seed)
        self.seed, self.grid, self.patch, self.size = seed, enc_size // patch, patch, size
        self.offset, self.scale = box_offset(enc_size, size)

    def __call__(self, tokens: torch.Tensor, x0: torch.Tensor, step: int) -> tuple[torch.Tensor, ...]:
        self.collator.load_state_dict({"step": step, "seed": self.seed})
        idx = self.collator.sample(len(x0))[1][0].to(tokens.device)
        boxes = block_boxes(idx, self.grid, self.patch)
        mask = box_mask(boxes, self.offset, self.scale, self.size)
        return pool_tokens(tokens.float(), idx), inpaint_context(x0, mask), mask


def _spec_for(cfg: DecoderConfig, ck: Any, dataset: Any) -> DecoderSpec:
    meta = ck.meta
    extra = {"checkpoint_sha256": meta.get("sha256"), "checkpoint": meta.get("path") or meta.get("name"),
             "encoder_img_size": int(meta["img_size"]), "patch_size": int(meta["patch_size"]),
             "dataset": getattr(dataset, "identity", {}), "masks": asdict(cfg.masks), "seed": cfg.train.seed}
    return DecoderSpec(size=cfg.size, cond_dim=int(meta["width"]), unet=cfg.unet, condition=cfg.condition,
                       num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                       prediction_type=cfg.prediction_type, extra=extra)


def _write_grid(path: Path, real: torch.Tensor, fake: torch.Tensor) -> None:
    from torchvision.utils import save_image
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([real, fake]).add(1).div(2), path, nrow=len(real), padding=1)


def train_decoder(ck: Any, dataset: Any, out: str | Path, cfg: DecoderConfig, resume: bool = False,
                  device: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) a decoder in ``out``; returns a summary (steps, seconds, last loss, paths)."""
    from diffusers.training_utils import EMAModel
    out = Path(out)
    state_path = out / "state.pt"
    if state_path.exists() and not resume:
        raise UserError(f"{out} already holds a decoder run; pass --resume to continue it or choose another --out")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tc = cfg.train
    spec = _spec_for(cfg, ck, dataset)
    patch, enc_size = spec.extra["patch_size"], spec.extra["encoder_img_size"]
    grid = enc_size // patch
    region = cfg.condition == "region"
    if region and cfg.masks.min_keep > grid * grid:
        raise UserError(f"masks.min_keep={cfg.masks.min_keep} exceeds the encoder's {grid}x{grid} patch grid")
    with seeded(tc.seed):   # configuration errors (size vs levels) before the encoder pass; its init draws
        RCDMDecoder(spec)
    t_cache = time.time()
    cache = build_cache(ck, dataset, out / "reps.npz", device, with_tokens=region, size=spec.size, log=log)
    t_cache = time.time() - t_cache
    spec.channels = int(cache["pixels"].shape[1])
    pixels = to_decoder(cache["pixels"], spec.size).to(device)      # [N, C, size, size] in [-1, 1]
    reps = torch.as_tensor(cache["tokens"] if region else cache["pooled"]).to(device)
    region_inputs = RegionSampler(cfg.masks, enc_size, patch, spec.size, tc.seed) if region else None
    # pixels were stored at min(encoder, decoder) size; boxes map from encoder pixels either way

    with seeded(tc.seed):  # the decoder's init draws from the global RNG; the caller's stream is left alone
        model = RCDMDecoder(spec)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    warm = max(tc.warmup_steps, 1)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    ema = EMAModel(model.parameters(), decay=tc.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=tc.ema_power)
    sched = make_scheduler(spec.num_train_timesteps, spec.beta_schedule, spec.prediction_type)
    step = 0
    if state_path.exists():
        from ..checkpoint import safe_torch_load
        state = safe_torch_load(state_path)
        saved = DecoderSpec.from_json(state["spec"])
        if saved.extra.get("checkpoint_sha256") != spec.extra["checkpoint_sha256"] or saved.size != spec.size \
                or saved.cond_dim != spec.cond_dim or saved.condition != spec.condition:
            raise UserError(f"{out} was trained with another checkpoint, size or condition; "
                            f"use a new --out for this one")
        spec = saved
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        step = int(state["step"])
        log(f"resuming {out} at step {step}")
    if step >= tc.max_steps:
        log(f"{out} already trained for {step} >= max_steps={tc.max_steps} steps")

    def inputs(idx: torch.Tensor, at_step: int) -> tuple[torch.Tensor, ...]:
        x0 = pixels[idx]
        if region_inputs is None:
            return x0, reps[idx], None, None
        cond, context, mask = region_inputs(reps[idx], x0, at_step)
        return x0, cond, context, mask + 0.05  # the box matters; outside it the inpainter only copies

    # a fixed batch for the sample grids; its masks come from a step number training never reaches
    g_x0, g_cond, g_ctx, _ = inputs(torch.arange(min(tc.grid_size, len(pixels))), 10**9)

    def ema_model() -> RCDMDecoder:
        m = copy.deepcopy(model)
        ema.copy_to(m.parameters())
        return m.eval()

    def checkpoint_files() -> None:
        atomic_torch_save({"step": step, "spec": spec.to_json(), "model": model.state_dict(),
                           "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(), "ema": ema.state_dict(),
                           "train": asdict(tc)}, state_path)
        save_decoder(ema_model(), out)

    def write_samples() -> Path:
        g = torch.Generator(device).manual_seed(tc.seed)
        path = out / "samples" / f"step_{step:06d}.png"
        fake = ddim_sample(ema_model(), g_cond, tc.ddim_steps, g, context=g_ctx)
        if g_ctx is not None:  # show the inpainted box inside its context
            mask = g_ctx[:, -1:]
            fake = fake * mask + g_x0 * (1 - mask)
        _write_grid(path, g_x0.cpu(), fake.cpu())
        return path

    out.mkdir(parents=True, exist_ok=True)
    t0, losses, last = time.time(), [], None
    bar = tqdm(total=tc.max_steps, initial=step, desc="decoder", unit="step", dynamic_ncols=True)
    model.train()
    with open(out / "train_log.jsonl", "a") as logf:
        while step < tc.max_steps:
            x0, cond, context, weight = inputs(step_indices(len(pixels), tc.batch_size, tc.seed, step).to(device),
                                               step)
            g = torch.Generator(device).manual_seed(tc.seed * 1_000_003 + step + 7)
            loss = diffusion_loss(model, sched, x0, cond, g, tc.min_snr_gamma, tc.cond_dropout, context, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            lr_sched.step()
            ema.step(model.parameters())
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
            if step % 10 == 0 or step == tc.max_steps:
                logf.write(json.dumps({"step": step, "loss": sum(losses[-10:]) / len(losses[-10:]),
                                       "lr": lr_sched.get_last_lr()[0], "seconds": time.time() - t0}) + "\n")
                logf.flush()
            if step % tc.save_every == 0 or step == tc.max_steps:
                checkpoint_files()
            if step % tc.sample_every == 0 or step == tc.max_steps:
                last = write_samples()
                model.train()
    bar.close()
    if not (out / "decoder.pt").exists():
        checkpoint_files()
    seconds = time.time() - t0
    return {"steps": step, "seconds": seconds, "cache_seconds": t_cache, "losses": losses,
            "loss": sum(losses[-50:]) / len(losses[-50:]) if losses else None,
            "out": str(out), "last_grid": str(last) if last else None}
