"""The RCDM-style decoder (docs/protocols.md §4): a diffusers ``UNet2DModel`` whose timestep embedding gets a
learned linear projection of a frozen representation added to it (``class_embed_type="identity"``); the
sum reaches every ResBlock through scale-shift norm (``resnet_time_scale_shift="scale_shift"``).
A learned null embedding stands in for the representation under condition dropout (classifier-free
guidance). In ``region`` (inpainting) mode the UNet also sees the context image and the box mask."""
from __future__ import annotations

import json

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_torch_save, atomic_write_text
from ..errors import UserError


@dataclass
class UNetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = ()   # indices of the resolution levels with self-attention
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise UserError(f"decoder channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}")
        if any(not 0 <= i < len(self.block_out_channels) for i in self.attention_levels):
            raise UserError(f"attention_levels {self.attention_levels} must index block_out_channels "
                            f"(0..{len(self.block_out_channels) - 1})")


@dataclass
class DecoderSpec:
    """Everything needed to rebuild a trained decoder; saved as ``decoder.json`` beside its weights."""
    size: int                 # decoder resolution (pixels); independent of the encoder's input size
    cond_dim: int             # width of the representation it is conditioned on
    unet: UNetConfig = field(default_factory=UNetConfig)
    condition: str = "image"   # "image": pooled whole image -> image; "region": pooled block + context -> image
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    channels: int = 3          # 1 for grayscale data
    extra: dict[str, Any] = field(default_factory=dict)  # checkpoint identity, dataset, mask config...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=list)

    @classmethod
    def from_json(cls, text: str) -> "DecoderSpec":
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["unet"] = UNetConfig(**d.get("unet", {}))
        return cls(**d)


class RCDMDecoder(nn.Module):
    """``forward(noisy, t, rep, context, drop) -> prediction`` (v, noise or x0 per ``spec.prediction_type``);
    ``rep`` is [B, cond_dim]; ``context`` [B, channels + 1, size, size] (region mode: the image with the box
    blanked, then the box mask); ``drop`` [B] bool replaces ``rep`` by the null embedding."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        from diffusers import UNet2DModel
        u = spec.unet
        if spec.size % 2 ** (len(u.block_out_channels) - 1):
            raise UserError(f"decoder size {spec.size} must be divisible by {2 ** (len(u.block_out_channels) - 1)} "
                            f"for {len(u.block_out_channels)} resolution levels")
        n = len(u.block_out_channels)
        down = tuple("AttnDownBlock2D" if i in u.attention_levels else "DownBlock2D" for i in range(n))
        up = tuple("AttnUpBlock2D" if n - 1 - i in u.attention_levels else "UpBlock2D" for i in range(n))
        self.spec = spec
        extra = spec.channels + 1 if spec.condition == "region" else 0
        self.unet = UNet2DModel(
            sample_size=spec.size, in_channels=spec.channels + extra, out_channels=spec.channels,
            block_out_channels=u.block_out_channels,
            layers_per_block=u.layers_per_block, down_block_types=down, up_block_types=up,
            norm_num_groups=u.norm_num_groups, class_embed_type="identity", resnet_time_scale_shift="scale_shift")
        time_dim = u.block_out_channels[0] * 4  # diffusers' default time_embed_dim
        # the representation is normalized first: pooled encoder tokens of different checkpoints differ in scale
        self.proj = nn.Sequential(nn.LayerNorm(spec.cond_dim), nn.Linear(spec.cond_dim, time_dim))
        self.null = nn.Parameter(torch.zeros(time_dim))

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, rep: torch.Tensor, context: torch.Tensor | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.proj(rep.to(noisy.dtype))
        if drop is not None:
            emb = torch.where(drop[:, None], self.null.to(emb.dtype).expand_as(emb), emb)
        if self.spec.condition == "region":
            if context is None:
                raise ValueError("a region (inpainting) decoder needs the context image and box mask")
            noisy = torch.cat([noisy, context.to(noisy.dtype)], dim=1)
        return self.unet(noisy, t, class_labels=emb).sample


def save_decoder(model: RCDMDecoder, folder: Path) -> None:
    """Write ``decoder.json`` and ``decoder.pt`` (the weights to sample with, i.e. the EMA ones, in fp16:
    half the size, and sampling casts them back to fp32)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "decoder.json", model.spec.to_json())
    atomic_torch_save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                folder / "decoder.pt")


def load_decoder(folder: str | Path, device: str | torch.device = "cpu") -> RCDMDecoder:
    from ..checkpoint import load_strict, safe_torch_load
    folder = Path(folder)
    if not (folder / "decoder.json").is_file() or not (folder / "decoder.pt").is_file():
        raise UserError(f"{folder} is not a trained decoder folder (needs decoder.json and decoder.pt; "
                        f"train one with `jepa-eval decoder train`)")
    spec = DecoderSpec.from_json((folder / "decoder.json").read_text())
    model = RCDMDecoder(spec)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in safe_torch_load(folder / "decoder.pt").items()}
    load_strict(model, sd, f"decoder {folder}")
    return model.to(device).eval()
