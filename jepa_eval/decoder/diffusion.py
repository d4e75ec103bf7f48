"""The diffusion objective and the sampler, kept apart from the network (docs/protocols.md).

Choices for fast convergence at small scale: a cosine schedule (``squaredcos_cap_v2``), v-prediction
(epsilon-prediction leaves residual noise early in training), Min-SNR-gamma loss weighting, and
classifier-free guidance (the decoder learns a null condition through condition dropout)."""
from __future__ import annotations

from typing import Any

import torch

PREDICTIONS = ("v_prediction", "epsilon", "sample")


def make_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str) -> Any:
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=False)


def diffusion_loss(model: Any, sched: Any, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator,
                   min_snr_gamma: float | None = 5.0, cond_dropout: float = 0.0,
                   context: torch.Tensor | None = None, weight_map: torch.Tensor | None = None) -> torch.Tensor:
    """One denoising loss on clean pixels ``x0`` [B, C, H, W] in [-1, 1]. ``weight_map`` [B, 1, H, W]
    (optional) weights pixels, e.g. to focus an inpainter on its box."""
    b, dev = len(x0), x0.device
    noise = torch.randn(x0.shape, generator=generator, device=dev)
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=dev)
    drop = torch.rand(b, generator=generator, device=dev) < cond_dropout
    pred = model(sched.add_noise(x0, noise, t), t, cond, context=context, drop=drop)
    kind = sched.config.prediction_type
    target = {"epsilon": noise, "sample": x0}.get(kind)
    if target is None:
        target = sched.get_velocity(x0, noise, t)
    err = (pred - target) ** 2
    if weight_map is not None:
        err = err * weight_map
    err = err.mean(dim=(1, 2, 3))
    if min_snr_gamma:
        # Min-SNR-gamma (Hang et al. 2023): cap the weight of easy, low-noise steps; expressed per target
        snr = (sched.alphas_cumprod.to(dev)[t] / (1 - sched.alphas_cumprod.to(dev)[t])).clamp(min=1e-8)
        capped = snr.clamp(max=min_snr_gamma)
        w = {"epsilon": capped / snr, "sample": capped}.get(kind, capped / (snr + 1))
        err = err * w
    return err.mean()


@torch.no_grad()
def ddim_sample(model: Any, cond: torch.Tensor, steps: int = 50, generator: torch.Generator | None = None,
                guidance: float = 0.0, context: torch.Tensor | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from Gaussian noise; returns [B, C, size, size] in [-1, 1].
    ``guidance`` w > 0 mixes in the unconditional prediction: (1 + w) cond - w uncond."""
    from diffusers import DDIMScheduler
    spec = model.spec
    sched = DDIMScheduler(num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
                          prediction_type=spec.prediction_type, clip_sample=False)
    sched.set_timesteps(steps)
    dev = cond.device
    shape = (len(cond), spec.channels, spec.size, spec.size)
    x = noise.to(dev) if noise is not None else torch.randn(shape, generator=generator, device=dev)
    keep = torch.zeros(len(cond), dtype=torch.bool, device=dev)
    for t in sched.timesteps:
        tt = t.expand(len(cond)).to(dev)
        out = model(x, tt, cond, context=context, drop=keep)
        if guidance:
            out = out + guidance * (out - model(x, tt, cond, context=context, drop=~keep))
        x = sched.step(out, t, x).prev_sample
    return x.clamp(-1, 1)
