"""Pretraining configs: dataclasses mirroring the sections of the released I-JEPA YAML files
(``data``, ``mask``, ``model``, ``optimization``, ``meta``), loaded from a shipped name or a YAML path."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jepa_eval.config_io import from_dict, read_yaml
from jepa_eval.errors import UserError, did_you_mean
from jepa_eval.models import VARIANTS

from jepa_eval.masks import MaskConfig

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

    def validate(self) -> str | None:
        if self.img_size < 1 or self.batch_size < 1:
            return "img_size and batch_size must be positive"
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            return f"crop_scale {list(self.crop_scale)} must be (min, max) with 0 < min <= max <= 1"
        if self.max_samples is not None and self.max_samples < 1:
            return "max_samples must be positive (or null for all images)"
        return None if self.num_workers >= 0 else "num_workers must be >= 0"


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

    def validate(self) -> str | None:
        sizes = {"patch_size": self.patch_size, "width": self.width, "depth": self.depth,
                 "num_heads": self.num_heads, "pred_depth": self.pred_depth, "pred_emb_dim": self.pred_emb_dim}
        bad = [k for k, v in sizes.items() if v is not None and v < 1]
        if bad:
            return f"{bad[0]} must be a positive integer, got {sizes[bad[0]]}"
        return None if self.mlp_ratio is None or self.mlp_ratio > 0 else "mlp_ratio must be positive"


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

    def validate(self) -> str | None:
        if self.epochs < 1:
            return f"epochs must be >= 1, got {self.epochs}"
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "warmup"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                return f"{name} must be {'positive' if name == 'lr' else '>= 0'}, got {value}"
        if self.warmup > self.epochs:
            return f"warmup ({self.warmup} epochs) is longer than training ({self.epochs} epochs)"
        if not 0 <= self.ema[0] <= self.ema[1] <= 1:
            return f"ema {list(self.ema)} must be (start, end) with 0 <= start <= end <= 1"
        if not self.ipe_scale > 0:
            return f"ipe_scale must be positive, got {self.ipe_scale}"
        return None if self.clip_grad is None or self.clip_grad > 0 else "clip_grad must be positive or null"


@dataclass
class MetaConfig:
    seed: int = 0
    use_bfloat16: bool = True               # only on CUDA; CPU always trains in fp32
    checkpoint_every: int = 50              # also write jepa-ep{N}.pth.tar every this many epochs
    write_tag: str = "jepa"
    cpu_threads: int | None = None          # torch threads on CPU; 1 is fastest on a busy shared machine

    def validate(self) -> str | None:
        if self.checkpoint_every < 1:
            return f"checkpoint_every must be >= 1 (epochs), got {self.checkpoint_every}"
        if not self.write_tag or "/" in self.write_tag or ".." in self.write_tag:
            return f"write_tag must be a plain file name prefix, got {self.write_tag!r}"
        return None if self.cpu_threads is None or self.cpu_threads >= 1 else "cpu_threads must be >= 1 or null"


@dataclass
class MonitorConfig:
    every: int = 250                 # steps between measurements; 0 turns the monitors off
    images: int = 512                # held batch (label-free monitors, and k-NN queries)
    pred_images: int = 128           # first images of the held batch that the predictor monitor uses
    knn: bool = False                # online k-NN top-1 (the dataset must have labels)
    knn_bank: int = 1000             # labelled training images the k-NN votes with (disjoint from the batch)
    knn_k: int = 20
    seed: int = 12345                # held images and monitor masks; independent of meta.seed's streams
    rankme_drop: float = 0.5         # warn when RankMe falls below this fraction of its step-0 value
    min_input_dep: float = 0.02      # warn when the input dependence falls below this

    def validate(self) -> str | None:
        if self.every < 0 or self.images < 2 or self.pred_images < 1 or self.knn_bank < 1 or self.knn_k < 1:
            return "monitor: every >= 0, images >= 2, pred_images, knn_bank and knn_k >= 1"
        if not 0 < self.rankme_drop < 1 or self.min_input_dep < 0:
            return "monitor: rankme_drop must be in (0, 1) and min_input_dep >= 0"
        return None


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


SECTIONS = {"data": DataConfig, "mask": MaskConfig, "model": ModelConfig,
            "optimization": OptimConfig, "meta": MetaConfig, "monitor": MonitorConfig}


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_from_dict(values: dict[str, Any], name: str = "custom", where: str = "pretraining config") -> Config:
    """A checked ``Config``: unknown keys, wrong types (``lr: abc``) and out-of-range values are refused
    with one line naming the key and ``where`` (the file)."""
    if not isinstance(values, dict | None):
        raise UserError(f"{where} must be a mapping of sections (data, mask, model, optimization, meta)")
    values = dict(values or {})
    values.setdefault("name", name)
    return from_dict(Config, values, where, what="config key").resolve()


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
    values = read_yaml(path, "pretraining config") or {}
    if not isinstance(values, dict):
        raise UserError(f"pretraining config {path} must be a mapping of sections")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key) or {}, dict):
            values[key] = {**(values.get(key) or {}), **value}
        else:
            values[key] = value
    return config_from_dict(values, name=path.stem, where=f"pretraining config {path.name}")
