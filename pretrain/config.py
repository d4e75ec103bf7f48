"""Pretraining configs: dataclasses mirroring the sections of the released I-JEPA YAML files
(``data``, ``mask``, ``model``, ``optimization``, ``meta``), loaded from a shipped name or a YAML path."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jepa_eval.errors import UserError, did_you_mean
from jepa_eval.models import VARIANTS

from .masks import MaskConfig
from .monitors import MonitorConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    dataset: str = "imagefolder"
    root: str | None = None
    split: str = "train"
    img_size: int = 224                     # the official ``crop_size``
    crop_scale: tuple[float, float] = (0.3, 1.0)
    batch_size: int = 128                   # per process, like the official configs
    max_samples: int | None = None          # seeded class-stratified subset (small CPU runs)
    num_workers: int = 0


@dataclass
class ModelConfig:
    """``name`` is a variant from jepa_eval.models.VARIANTS; width/depth/num_heads/mlp_ratio override it."""
    name: str = "vit_huge"
    patch_size: int = 14
    width: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    pred_depth: int = 12
    pred_emb_dim: int = 384


@dataclass
class OptimConfig:
    epochs: int = 300
    warmup: float = 40                      # epochs of linear warmup start_lr -> lr
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: tuple[float, float] = (0.996, 1.0)
    ipe_scale: float = 1.0                  # schedules span ipe_scale * epochs * iterations-per-epoch
    clip_grad: float | None = None


@dataclass
class MetaConfig:
    seed: int = 0
    use_bfloat16: bool = True               # only on CUDA; CPU always trains in fp32
    checkpoint_every: int = 50              # also write jepa-ep{N}.pth.tar every this many epochs
    write_tag: str = "jepa"
    cpu_threads: int | None = None          # torch threads on CPU; 1 is fastest on a busy shared machine


@dataclass
class Config:
    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimization: OptimConfig = field(default_factory=OptimConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def resolve(self) -> "Config":
        """Fill width/depth/heads/mlp_ratio from the variant and check what would fail later."""
        m = self.model
        base = VARIANTS.get(m.name)
        if base is None and None in (m.width, m.depth, m.num_heads):
            raise UserError(f"model '{m.name}' is not a known variant{did_you_mean(m.name, VARIANTS)}; "
                            f"known: {', '.join(VARIANTS)} (or give width, depth and num_heads)")
        w, d, h, r = base or (m.width, m.depth, m.num_heads, 4.0)
        m.width, m.depth = m.width or w, m.depth or d
        m.num_heads, m.mlp_ratio = m.num_heads or h, m.mlp_ratio or r
        if m.width % m.num_heads or m.pred_emb_dim % m.num_heads:
            raise UserError(f"width {m.width} and pred_emb_dim {m.pred_emb_dim} must both divide by "
                            f"num_heads {m.num_heads} (the predictor uses the encoder's heads)")
        if self.data.img_size % m.patch_size:
            raise UserError(f"img_size {self.data.img_size} is not divisible by patch_size {m.patch_size}")
        if self.optimization.epochs < 1 or self.data.batch_size < 1:
            raise UserError("epochs and batch_size must be positive")
        for problem in (self.mask.validate(), self.monitor.validate()):
            if problem:
                raise UserError(problem)
        return self

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise UserError(f"config section '{where}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key '{where}.{key}'{did_you_mean(key, fields)}")
        sub = SECTIONS.get(key) if cls is Config else None
        if sub is not None:
            kwargs[key] = _build(sub, value or {}, key)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


SECTIONS = {"data": DataConfig, "mask": MaskConfig, "model": ModelConfig,
            "optimization": OptimConfig, "meta": MetaConfig, "monitor": MonitorConfig}


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_from_dict(values: dict[str, Any], name: str = "custom") -> Config:
    values = dict(values or {})
    values.setdefault("name", name)
    return _build(Config, values, "config").resolve()


def load_config(name_or_path: str | Path, **overrides: Any) -> Config:
    """A shipped config by name (``tiny-fashion-mnist``) or a YAML file; ``overrides`` like
    ``epochs=3`` or ``data={"root": ...}`` replace values (a dict merges into a section)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"unknown pretraining config '{name_or_path}'"
                            f"{did_you_mean(str(name_or_path), available_configs())}; "
                            f"shipped: {', '.join(available_configs())}, or give a YAML path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"unreadable config {path}: {e}") from None
    for key, value in overrides.items():
        if isinstance(value, dict):
            values[key] = {**(values.get(key) or {}), **value}
        else:
            values[key] = value
    return config_from_dict(values, name=path.stem)
