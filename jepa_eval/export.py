"""``jepa-eval export``: one I-JEPA encoder as a safetensors file plus a JSON model card.

The weights keep the names of timm's ``VisionTransformer`` (the suite's encoder *is* one), so anyone can
load them without this suite: ``VisionTransformer(**card["timm_kwargs"]).load_state_dict(load_file(F))``
(strict, and it can never reach a network; timm's file-overlay route is in docs/checkpoints.md). With those arguments
``forward_features(x)`` returns the patch tokens after the final norm, exactly what the suite's encoder
returns, and ``model(x)`` their mean (the paper's lastPOOL). ``load_checkpoint`` reads the export back."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, atomic_write_with
from .checkpoint import checkpoint_name, load_checkpoint
from .errors import UserError
from .datasets.base import IMAGENET_MEAN, IMAGENET_STD
from .hashindex import remembered_sha256
from .models import VARIANTS, JEPAViT

CARD_FORMAT = "jepa-eval encoder export v1"


def timm_kwargs(meta: dict[str, Any]) -> dict[str, Any]:
    """Arguments of timm's ``VisionTransformer`` that rebuild the encoder (JSON-serialisable)."""
    return {"img_size": int(meta["grid"] * meta["patch_size"]), "patch_size": int(meta["patch_size"]),
            "embed_dim": int(meta["width"]), "depth": int(meta["depth"]), "num_heads": int(meta["heads"]),
            "mlp_ratio": float(meta["mlp_ratio"]), "qkv_bias": True, "class_token": False,
            # mean of the final-norm tokens (fc_norm=False keeps timm's norm before the pooling)
            "global_pool": "avg", "fc_norm": False, "num_classes": 0, "dynamic_img_size": True}


def timm_model_name(meta: dict[str, Any]) -> str:
    """The timm name of the same architecture, for ``create_model`` (every argument is given anyway)."""
    import timm
    for variant, (width, depth, _, _) in VARIANTS.items():
        name = f"{variant}_patch{meta['patch_size']}_{meta['grid'] * meta['patch_size']}"
        if (width, depth) == (meta["width"], meta["depth"]) and name in timm.list_models():
            return name
    return "vit_base_patch16_224"


def _how_to_load(weights: str, card: str) -> list[str]:
    return ["import json, safetensors.torch as st, timm.models.vision_transformer as vt",
            f"model = vt.VisionTransformer(**json.load(open('{card}'))['timm_kwargs']).eval()",
            f"model.load_state_dict(st.load_file('{weights}'))  # strict; model(x): lastPOOL [B, D], "
            f"model.forward_features(x): patch tokens [B, N, D]"]


def export_encoder(spec: str, which: str, out: str | os.PathLike, num_heads: int | None = None,
                   cache: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``OUT/<name>-<which>.safetensors`` and its card ``OUT/<name>-<which>.json``; returns both."""
    from safetensors.torch import save_file

    if which not in ("target", "context"):
        raise UserError(f"encoder must be 'target' or 'context', not '{which}'")
    if str(spec).startswith(("timm:", "pixels")):
        raise UserError("export takes an I-JEPA checkpoint file; a timm model is already loadable by timm")
    ck = load_checkpoint(spec, num_heads=num_heads, cache=cache)
    meta = ck.meta
    has = meta.get("has_target_encoder" if which == "target" else "has_context_encoder")
    if not has and meta.get("source_format") in ("ijepa-official", "jepa-eval"):
        raise UserError(f"{spec} has no {which} encoder (it holds {', '.join(k for k in ('target', 'context') if meta.get(f'has_{k}_encoder'))})")
    encoder = ck.get_encoder(which)
    if type(encoder) is not JEPAViT:
        raise UserError(f"export takes an I-JEPA encoder; {spec} gives a {type(encoder).__name__}")
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the export folder {out}: {e.strerror or e}") from None
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint_name(str(spec))) + f"-{which}"
    weights, card_path = out / f"{base}.safetensors", out / f"{base}.json"
    kwargs = timm_kwargs(meta)
    tensors = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    info = {"format": CARD_FORMAT, "encoder": which, "num_heads": str(kwargs["num_heads"]),
            "source_sha256": str(meta["sha256"])}
    try:  # atomic: readers see the whole file or none
        atomic_write_with(weights, lambda tmp: save_file(tensors, str(tmp), metadata=info))
    except OSError as e:
        raise UserError(f"could not write {weights}: {e.strerror or e}") from None
    with open(weights, "rb") as f:
        weights_sha = remembered_sha256(weights, f.fileno(), cache)
    card = {
        "format": CARD_FORMAT, "weights": weights.name, "weights_sha256": weights_sha,
        "encoder": which, "architecture": "timm.models.vision_transformer.VisionTransformer",
        "timm_model": timm_model_name(meta), "timm_kwargs": kwargs,
        "width": kwargs["embed_dim"], "depth": kwargs["depth"], "heads": kwargs["num_heads"],
        "patch_size": kwargs["patch_size"], "img_size": kwargs["img_size"], "mlp_ratio": kwargs["mlp_ratio"],
        "outputs": {"forward_features": "patch tokens after the final LayerNorm (eps 1e-6), [B, N, D], no cls token",
                    "forward": "their mean over tokens, [B, D] (the paper's lastPOOL)"},
        "preprocessing": {"size": kwargs["img_size"], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "source": {"path": meta.get("path"), "sha256": meta["sha256"], "format": meta.get("source_format"),
                   "epoch": meta.get("epoch")},
        "how_to_load": _how_to_load(weights.name, card_path.name),
    }
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    return weights, card_path
