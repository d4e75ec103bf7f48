"""A test-only oracle: the official I-JEPA forward semantics written with plain tensor ops on a state
dict (docs/protocols.md §1). It shares no code with jepa_eval, so parity tests compare two independent
implementations: timm's ViT with mapped weights against this one."""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed (no cls token), written independently."""
    def one_axis(d, positions):
        freqs = 1.0 / (10000 ** (np.arange(d // 2) / (d / 2.0)))
        angles = positions.reshape(-1)[:, None] * freqs[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return torch.tensor(np.concatenate([one_axis(dim // 2, xs.astype(float)),
                                        one_axis(dim // 2, ys.astype(float))], axis=1), dtype=torch.float32)


def official_state_dicts(width=64, depth=3, heads=4, patch=4, img=32, pred_width=32, pred_depth=2,
                         seed=0) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights under the official parameter names (without the DDP 'module.' prefix)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    grid = img // patch

    def block(prefix, d):
        return {f"{prefix}.norm1.weight": 1 + rnd(d), f"{prefix}.norm1.bias": rnd(d),
                f"{prefix}.attn.qkv.weight": rnd(3 * d, d), f"{prefix}.attn.qkv.bias": rnd(3 * d),
                f"{prefix}.attn.proj.weight": rnd(d, d), f"{prefix}.attn.proj.bias": rnd(d),
                f"{prefix}.norm2.weight": 1 + rnd(d), f"{prefix}.norm2.bias": rnd(d),
                f"{prefix}.mlp.fc1.weight": rnd(4 * d, d), f"{prefix}.mlp.fc1.bias": rnd(4 * d),
                f"{prefix}.mlp.fc2.weight": rnd(d, 4 * d), f"{prefix}.mlp.fc2.bias": rnd(d)}

    def encoder():
        sd = {"patch_embed.proj.weight": rnd(width, 3, patch, patch), "patch_embed.proj.bias": rnd(width),
              "pos_embed": sincos_2d(width, grid)[None]}
        for i in range(depth):
            sd.update(block(f"blocks.{i}", width))
        sd.update({"norm.weight": 1 + rnd(width), "norm.bias": rnd(width)})
        return sd

    pred = {"mask_token": rnd(1, 1, pred_width), "predictor_embed.weight": rnd(pred_width, width),
            "predictor_embed.bias": rnd(pred_width), "predictor_pos_embed": sincos_2d(pred_width, grid)[None]}
    for i in range(pred_depth):
        pred.update(block(f"predictor_blocks.{i}", pred_width))
    pred.update({"predictor_norm.weight": 1 + rnd(pred_width), "predictor_norm.bias": rnd(pred_width),
                 "predictor_proj.weight": rnd(width, pred_width), "predictor_proj.bias": rnd(width)})
    return {"encoder": encoder(), "target_encoder": encoder(), "predictor": pred}


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    out = []
    for m in masks:
        idx = m.unsqueeze(-1).repeat(1, 1, x.size(-1))
        out.append(torch.gather(x, dim=1, index=idx))
    return torch.cat(out, dim=0)


def _block(sd, p, x, heads):
    B, N, D = x.shape
    h = F.layer_norm(x, (D,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], EPS)
    qkv = F.linear(h, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
    qkv = qkv.reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(h, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
    h = F.layer_norm(x, (D,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], EPS)
    h = F.linear(F.gelu(F.linear(h, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                 sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
    return x + h


def _depth(sd, prefix):
    return len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})


def encoder_forward(sd, x, heads, masks=None):
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + sd["pos_embed"]  # at the training resolution the official interpolation is the identity
    if masks is not None:
        x = apply_masks(x, masks)
    for i in range(_depth(sd, "blocks")):
        x = _block(sd, f"blocks.{i}", x, heads)
    return F.layer_norm(x, (x.size(-1),), sd["norm.weight"], sd["norm.bias"], EPS)


def predictor_forward(sd, x, masks_x, masks, heads):
    B = len(x) // len(masks_x)
    x = F.linear(x, sd["predictor_embed.weight"], sd["predictor_embed.bias"])
    pos = sd["predictor_pos_embed"].repeat(B, 1, 1)
    x = x + apply_masks(pos, masks_x)
    n_ctx = x.shape[1]
    tgt = apply_masks(sd["predictor_pos_embed"].repeat(B, 1, 1), masks)
    # official repeat_interleave_batch(tgt, B, repeat=len(masks_x))
    n = len(tgt) // B
    tgt = torch.cat([torch.cat([tgt[i * B:(i + 1) * B] for _ in range(len(masks_x))]) for i in range(n)])
    pred = sd["mask_token"].repeat(tgt.size(0), tgt.size(1), 1) + tgt
    x = torch.cat([x.repeat(len(masks), 1, 1), pred], dim=1)
    for i in range(_depth(sd, "predictor_blocks")):
        x = _block(sd, f"predictor_blocks.{i}", x, heads)
    x = F.layer_norm(x, (x.size(-1),), sd["predictor_norm.weight"], sd["predictor_norm.bias"], EPS)
    return F.linear(x[:, n_ctx:], sd["predictor_proj.weight"], sd["predictor_proj.bias"])


def save_official(path, sds: dict, epoch: int = 7) -> None:
    """torch.save the official top-level layout with DDP 'module.' prefixes."""
    ckpt = {k: {f"module.{n}": t for n, t in sd.items()} for k, sd in sds.items()}
    ckpt.update(opt={"state": {}, "param_groups": []}, scaler=None, epoch=epoch, loss=0.123,
                batch_size=4, world_size=1, lr=1e-3)
    torch.save(ckpt, path)


