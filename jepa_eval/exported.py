"""Read back an encoder written by ``jepa-eval export`` (or any ``.safetensors`` state dict with the encoder's
names): the reading half of ``export``, kept below ``checkpoint``, whose ``load_checkpoint`` dispatches here."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError
from .hashindex import remembered_sha256, signature
from .statedict import Checkpoint, _encoder_skeleton, _heads_hint, _materialize, check_strict, encoder_arch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def load_export(path: Path, num_heads: int | None, img_size: int | None, cache: str | os.PathLike | None):
    """A ``.safetensors`` encoder (an export, or any state dict with these names): validated through
    safetensors' lazy reader, its tensors read when the encoder is first used."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            info = f.metadata() or {}
            shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta",
                                     dtype=_DTYPES.get(f.get_slice(k).get_dtype(), torch.float32)) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    width = shapes["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in shapes else 0
    heads = num_heads or (int(info["num_heads"]) if str(info.get("num_heads", "")).isdigit() else None)
    arch = encoder_arch(shapes, path.name, heads or _heads_hint({}, width, None), img_size)
    check_strict(_encoder_skeleton(arch), shapes, path.name)
    with open(path, "rb") as fh:
        digest, sig = remembered_sha256(path, fh.fileno(), cache), signature(os.fstat(fh.fileno()))

    def build() -> torch.nn.Module:
        if signature(os.stat(path)) != sig:
            raise UserError(f"{path} changed on disk since it was loaded, so its recorded sha256 no longer "
                            f"describes it; rerun")
        model = _encoder_skeleton(arch)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            own = model.state_dict()
            return _materialize(model, {k: f.get_tensor(k).to(own[k].dtype) for k in f.keys()})

    meta = {"path": str(path.resolve()), "sha256": digest, **arch, "source_format": "export", "epoch": None,
            "exported_encoder": info.get("encoder"), "exported_from_sha256": info.get("source_sha256"),
            "has_target_encoder": False, "has_context_encoder": False, "has_predictor": False,
            "note": "exported encoder: target and context encoder are the same weights"}
    return Checkpoint(meta=meta, builders={"target_encoder": build, "encoder": "target_encoder"})
