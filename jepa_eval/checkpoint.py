"""One door for every checkpoint: official I-JEPA files, this suite's own runs, plain state dicts, timm.

Loading is strict (missing, unexpected or mis-shaped keys are errors naming the keys), safe
(``torch.load(weights_only=True)``: a pickle that would run code is refused before it runs) and lazy:
every part is validated up front through a memory map, but a part's weights are read only when it is
first used (see ``Checkpoint`` and ``lazyload``)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config_io import from_dict, parse_scalar
from .errors import UserError
from .exported import load_export
from .lazyload import CheckpointFile
from .seeding import seeded
from .statedict import (OFFICIAL_KEYS, Checkpoint, _config_beside, _encoder_skeleton, _heads_hint, _materialize,
                        _predictor_skeleton, _strip_prefix, check_checkpoint_path, check_strict, encoder_arch,
                        load_strict, predictor_arch, safe_torch_load, sha256_file, sha256_state)

# the loaders below, and what callers of this one door also use (defined in ``statedict``)
__all__ = ["Checkpoint", "TimmArgs", "check_checkpoint_path", "check_strict", "check_timm_kwargs", "checkpoint_name",
           "load_checkpoint", "load_strict", "safe_torch_load", "sha256_file", "sha256_state"]


def checkpoint_name(spec: str) -> str:
    """A short display name: file stem, with the run folder for ``jepa-latest``/``jepa-epN`` files."""
    if spec.startswith("timm:"):
        return spec
    path = Path(spec)
    stem = re.sub(r"(\.pth)?(\.tar)?$", "", path.name)
    return f"{path.parent.name}/{stem}" if re.fullmatch(r"jepa-(latest|ep\d+)", stem) else stem


def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'timm:NAME,key=value,...' -> (NAME, {key: value}); values are parsed as YAML scalars."""
    name, *pairs = spec[len("timm:"):].split(",")
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"bad timm spec '{spec}': expected key=value after the model name, got '{pair}'")
        key, value = pair.split("=", 1)
        kwargs[key.strip()] = value if key.strip() == "weights" else parse_scalar(value)
    check_timm_kwargs({k: v for k, v in kwargs.items() if k in TIMM_CHECKED}, f"timm spec '{spec}'")
    return name.strip(), kwargs


@dataclasses.dataclass
class TimmArgs:
    """The timm arguments a spec commonly sets, typed and range-checked (others go to timm unchecked,
    and timm's own refusal becomes one line)."""
    img_size: int | None = None
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    in_chans: int | None = None

    def validate(self) -> str | None:
        for name in ("img_size", "patch_size", "depth", "embed_dim", "num_heads", "in_chans"):
            value = getattr(self, name)
            if value is not None and value < 1:
                return f"{name} must be a positive integer, got {value}"
        if self.mlp_ratio is not None and not self.mlp_ratio > 0:
            return f"mlp_ratio must be positive, got {self.mlp_ratio}"
        for name in ("drop_rate", "drop_path_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                return f"{name} must be in [0, 1), got {value}"
        if self.img_size and self.patch_size and self.img_size % self.patch_size:
            return f"image size {self.img_size} is not divisible by the patch size {self.patch_size}"
        if self.embed_dim and self.num_heads and self.embed_dim % self.num_heads:
            return f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
        return None


TIMM_CHECKED = {f.name for f in dataclasses.fields(TimmArgs)}


def check_timm_kwargs(kwargs: dict[str, Any], where: str) -> TimmArgs:
    return from_dict(TimmArgs, {k: v for k, v in kwargs.items() if k in TIMM_CHECKED}, where)


def _load_timm(spec: str, weights: str | None, seed: int, **overrides: Any) -> Checkpoint:
    import timm
    from .timm_encoder import TimmTokens
    name, kwargs = _parse_spec(spec)
    kwargs.update(overrides)
    weights = kwargs.pop("weights", weights)
    if name not in timm.list_models():
        from .errors import did_you_mean
        raise UserError(f"unknown timm model '{name}'{did_you_mean(name, timm.list_models())}")
    with seeded(seed):  # random init must be reproducible: the cache is keyed by the weights
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as e:
            raise UserError(f"timm model '{name}' does not take these arguments {kwargs}: {e}") from None
        except (ValueError, AssertionError, ArithmeticError, RuntimeError) as e:  # timm's own checks
            raise UserError(f"timm model '{name}' cannot be built with {kwargs}: {e or type(e).__name__}") from None
    size, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if isinstance(size, int) and isinstance(patch, int) and size % patch:
        raise UserError(f"image size {size} is not divisible by the patch size {patch}")
    meta: dict[str, Any] = {"source_format": "timm", "name": name, "timm_kwargs": kwargs}
    if weights:
        sd = safe_torch_load(weights)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict") or sd.get("model"), dict):
            sd = sd.get("state_dict") or sd.get("model")
        if not isinstance(sd, dict):
            raise UserError(f"{weights} holds no state dict")
        sd = _strip_prefix(sd)
        head = sorted(k for k in sd if k.startswith("head.") or k.startswith("fc."))
        sd = {k: v for k, v in sd.items() if k not in head}
        load_strict(model, sd, f"weights {weights}")
        meta.update(weights=str(weights), sha256=sha256_file(Path(weights)), dropped_head_keys=head)
    else:
        meta.update(weights=None, sha256=sha256_state(model), init_seed=seed)
    enc = TimmTokens(model.eval())
    meta.update(enc.describe())
    return Checkpoint(target_encoder=enc, encoder=enc, predictor=None, meta=meta)


def _load_pixels(spec: str, img_size: int | None) -> Checkpoint:
    """Raw pixels as a floor: 'pixels' or 'pixels:SIZE' (the image side the dataset is resized to)."""
    from .timm_encoder import PixelTokens
    size = spec.partition(":")[2]
    if size and not size.isdigit():
        raise UserError(f"bad pixels spec '{spec}': use 'pixels' or 'pixels:SIZE', e.g. pixels:32")
    side = img_size or int(size or 32)
    enc = PixelTokens()
    meta = {"source_format": "pixels", "sha256": hashlib.sha256(f"pixels:{side}".encode()).hexdigest(),
            "width": 3 * side * side, "depth": 0, "heads": None, "patch_size": side, "img_size": side,
            "epoch": None, "has_predictor": False, "has_target_encoder": False, "has_context_encoder": False}
    return Checkpoint(target_encoder=enc, encoder=enc, predictor=None, meta=meta)


def load_checkpoint(spec: str | os.PathLike, weights: str | None = None, num_heads: int | None = None,
                    img_size: int | None = None, seed: int = 0, cache: str | os.PathLike | None = None,
                    **timm_kwargs: Any) -> Checkpoint:
    """Load an official I-JEPA ``.pth.tar``, this suite's checkpoint, a plain encoder state dict, an
    encoder exported by ``jepa-eval export`` (``.safetensors``), ``"timm:NAME[,key=value...]"`` (random
    init unless ``weights=PATH``; never downloads), or ``"pixels[:SIZE]"`` (the flattened image, a baseline).

    Files are validated now and their parts built on first use (see ``Checkpoint``). The file's sha256
    is remembered in ``cache`` (a feature cache folder; default ``$JEPA_EVAL_CACHE`` or
    ``~/.cache/jepa-eval/features``) while the file is unchanged (see ``hashindex``)."""
    spec_str = str(spec)
    if spec_str == "pixels" or spec_str.startswith("pixels:"):
        return _load_pixels(spec_str, img_size)
    if spec_str.startswith("timm:"):
        if img_size:
            timm_kwargs["img_size"] = img_size
        return _load_timm(spec_str, weights, seed, **timm_kwargs)
    path = Path(spec_str).expanduser()
    if path.suffix == ".safetensors":
        return load_export(path, num_heads, img_size, cache)
    src = CheckpointFile(path, cache)
    obj = src.load()  # memory-mapped: the checks below read shapes, not weights
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict")
    config = _config_beside(path)
    meta: dict[str, Any] = {"path": str(path.resolve()), "sha256": src.sha256()}

    def part(select: Callable[[dict], dict], skeleton: Callable[[], nn.Module], what: str) -> Callable[[], nn.Module]:
        check_strict(skeleton(), select(obj), what)  # strict, now; the weights are read on first use

        def build() -> nn.Module:
            try:
                model = skeleton()
                return _materialize(model, src.copy(select(src.load()), model.state_dict()))
            finally:
                src.drop()
        return build

    builders: dict[str, Callable[[], nn.Module] | str] = {}
    if any(k in obj for k in OFFICIAL_KEYS):
        wrong = [k for k in OFFICIAL_KEYS if k in obj and not (isinstance(obj[k], dict) and obj[k])]
        if wrong:
            raise UserError(f"{path}[{wrong[0]}] holds {_describe(obj[wrong[0]])}, not a state dict of tensors")
        if "encoder" not in obj and "target_encoder" not in obj:
            raise UserError(f"{path} has a predictor but no encoder or target_encoder")
        parts = {k: _strip_prefix(obj[k]) for k in OFFICIAL_KEYS if isinstance(obj.get(k), dict)}
        first = parts.get("target_encoder") or parts["encoder"]
        width = first["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in first else 0
        heads = _heads_hint(config, width, num_heads)
        archs = {k: encoder_arch(parts[k], f"{path.name}[{k}]", heads, img_size)
                 for k in ("target_encoder", "encoder") if k in parts}
        for k, a in archs.items():
            builders[k] = part(lambda o, k=k: _strip_prefix(o[k]), lambda a=a: _encoder_skeleton(a),
                               f"{path.name}[{k}]")
        arch = archs.get("target_encoder") or archs["encoder"]
        builders.setdefault("target_encoder", "encoder")  # one encoder only: both names mean it
        builders.setdefault("encoder", "target_encoder")
        if "predictor" in parts:
            p_arch = predictor_arch(parts["predictor"], arch["heads"], f"{path.name}[predictor]")
            builders["predictor"] = part(lambda o: _strip_prefix(o["predictor"]),
                                         lambda: _predictor_skeleton(p_arch), f"{path.name}[predictor]")
        meta.update(arch, source_format="jepa-eval" if config else "ijepa-official",
                    epoch=obj.get("epoch"), loss=_scalar(obj.get("loss")),
                    has_target_encoder="target_encoder" in archs, has_context_encoder="encoder" in archs,
                    has_predictor="predictor" in builders)
        if config:
            meta["config"] = config
    else:  # a plain state dict (possibly wrapped in 'state_dict' / 'model')
        def select(o: dict) -> dict:
            return _strip_prefix(o.get("state_dict") or o.get("model") or o)
        sd = obj.get("state_dict") or obj.get("model") or obj
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f"{path} is neither an I-JEPA checkpoint (keys {', '.join(OFFICIAL_KEYS)}) "
                            f"nor a state dict of tensors (found keys: {', '.join(list(obj)[:6])})")
        sd = select(obj)
        width = sd["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in sd else 0
        arch = encoder_arch(sd, path.name, _heads_hint(config, width, num_heads), img_size)
        builders = {"target_encoder": part(select, lambda: _encoder_skeleton(arch), path.name),
                    "encoder": "target_encoder"}
        meta.update(arch, source_format="state_dict", epoch=None, has_target_encoder=False,
                    has_context_encoder=False, has_predictor=False,
                    note="plain state dict: target and context encoder are the same weights")
    obj = None  # drop the mapped dict: the builders reopen the file
    src.drop()  # unmap until a part is needed
    return Checkpoint(meta=meta, builders=builders, on_release=lambda: src.drop(keep_legacy=False))


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    return "an empty mapping" if isinstance(v, dict) else f"a {type(v).__name__}"


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
