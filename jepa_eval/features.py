"""Feature engine: encode a dataset split once, keep it on disk, memory-map it afterwards.

Entries are keyed by everything that changes the numbers (checkpoint sha256, encoder, pooling,
transform, dataset identity and split, dtype, feature-code version). Extraction writes into a
``.partial`` folder chunk by chunk, so an interrupted run resumes from its last finished chunk; the
finished folder appears by an atomic rename and carries a checksum, so a damaged entry is detected
and rebuilt rather than read."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError

FEATURE_CODE_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class Features:
    x: np.ndarray          # [N, D] pooled or [N, T, D] tokens; a read-only memory map
    y: np.ndarray          # [N] int64 labels
    classes: list[str]
    key: str
    path: Path


def check_pooling(pooling: str) -> None:
    if pooling not in ("lastPOOL", "tokens", "blocksPOOL") and not re.fullmatch(r"concatPOOL[1-9]\d*", pooling):
        raise UserError(f"unknown pooling '{pooling}'; use lastPOOL, concatPOOL4 (any N), blocksPOOL or tokens")


def num_blocks(encoder: nn.Module) -> int:
    """Transformer depth of a JEPAViT or a wrapped timm ViT (what blocksPOOL stacks)."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        blocks = getattr(getattr(encoder, "model", None), "blocks", None)
    if blocks is None:
        raise UserError(f"blocksPOOL needs a transformer with blocks; {type(encoder).__name__} has none")
    return len(blocks)


def pool(encoder: nn.Module, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """lastPOOL: mean of the final-norm tokens; concatPOOLn: concatenated means of the last n blocks,
    each through the final norm; blocksPOOL: those means for every block stacked, [B, depth, D]
    (per-layer analysis); tokens: all patch tokens."""
    if pooling == "lastPOOL":
        return encoder(images).mean(1)
    if pooling == "tokens":
        return encoder(images)
    if pooling == "blocksPOOL":
        return torch.stack([t.mean(1) for t in encoder.forward_last_blocks(images, num_blocks(encoder))], dim=1)
    n = int(pooling[len("concatPOOL"):])
    return torch.cat([t.mean(1) for t in encoder.forward_last_blocks(images, n)], dim=-1)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


class FeatureCache:
    """A folder of feature entries: ``ROOT/<key>/{features.npy, labels.npy, meta.json}``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the feature cache folder {self.root}: {e.strerror}") from None

    @staticmethod
    def key_fields(meta: dict[str, Any], encoder: str, pooling: str, dataset, dtype: str) -> dict[str, Any]:
        return {"sha256": meta.get("sha256"), "encoder": encoder, "pooling": pooling,
                "img_size": meta.get("img_size"), "transform": dataset.transform_id,
                "dataset": dataset.identity, "dtype": dtype, "version": FEATURE_CODE_VERSION}

    def key(self, fields: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]

    # -- reading ---------------------------------------------------------------------------
    def _read(self, entry: Path, key: str) -> Features | None:
        """The finished entry, or None when it is absent or damaged (damaged ones are removed)."""
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "meta.json").read_text())
            feats, labels = entry / "features.npy", entry / "labels.npy"
            if meta.get("digest") != _digest(feats) or meta.get("labels_digest") != _digest(labels):
                raise ValueError("checksum mismatch")
            x = np.load(feats, mmap_mode="r")
            y = np.load(labels)
            if x.shape[0] != y.shape[0] or list(x.shape) != meta["shape"]:
                raise ValueError("shape mismatch")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            print(f"jepa-eval: feature cache entry {entry.name} is damaged ({e}); rebuilding it",
                  file=sys.stderr)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return Features(x=x, y=y, classes=meta["classes"], key=key, path=entry)

    # -- writing ---------------------------------------------------------------------------
    def get_or_extract(self, checkpoint, encoder: str, pooling: str, dataset, dtype: str = "float16",
                       batch_size: int = 64, device: str | torch.device | None = None,
                       num_workers: int | None = None, chunk_images: int = 2048,
                       progress: bool = True) -> Features:
        """Return cached features, extracting (or resuming an interrupted extraction) when needed."""
        check_pooling(pooling)
        if dtype not in DTYPES:
            raise UserError(f"feature dtype must be float16 or float32, not '{dtype}'")
        key = self.key(self.key_fields(checkpoint.meta, encoder, pooling, dataset, dtype))
        entry = self.root / key
        found = self._read(entry, key)
        if found is not None:
            return found
        with FileLock(str(self.root / f"{key}.lock")):
            found = self._read(entry, key)  # another process may have finished it meanwhile
            if found is not None:
                return found
            self._extract(checkpoint.get_encoder(encoder), pooling, dataset, dtype, entry,
                          batch_size, device, num_workers, chunk_images, progress)
            found = self._read(entry, key)
        if found is None:
            raise RuntimeError(f"feature entry {key} could not be verified right after writing")
        return found

    def _extract(self, encoder: nn.Module, pooling: str, dataset, dtype: str, entry: Path, batch_size: int,
                 device, num_workers, chunk_images: int, progress: bool) -> None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = device.type == "cuda"
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1) if cuda else 0
        partial = entry.with_name(entry.name + ".partial")
        partial.mkdir(exist_ok=True)
        for stale in partial.glob(".*.tmp"):  # left by a writer killed mid-write; we hold the entry's lock
            stale.unlink(missing_ok=True)
        state_file = partial / "progress.json"
        n = len(dataset)
        done = json.loads(state_file.read_text())["done"] if state_file.exists() else 0
        encoder = encoder.to(device).eval()
        first_x, _ = dataset[0]
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            shape = (n, *pool(encoder, first_x.unsqueeze(0).to(device), pooling).shape[1:])
        feats_path = partial / "features.npy"
        if done == 0 or not feats_path.exists():
            done = 0
            out = np.lib.format.open_memmap(feats_path, mode="w+", dtype=DTYPES[dtype], shape=shape)
        else:
            out = np.load(feats_path, mmap_mode="r+")
        bar = tqdm(total=n, initial=done, unit="img", desc=f"features {pooling}", disable=not progress,
                   dynamic_ncols=True, smoothing=0.1)
        while done < n:
            stop = min(n, done + chunk_images)
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dataset, range(done, stop)), batch_size=batch_size,
                num_workers=num_workers, pin_memory=cuda, persistent_workers=False)
            row = done
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                for images, _ in loader:
                    z = pool(encoder, images.to(device, non_blocking=cuda), pooling).float().cpu().numpy()
                    if not np.isfinite(z).all():
                        raise UserError(f"the encoder produced NaN/inf features for images {row}-{row + len(z) - 1}"
                                        f" of {dataset.identity.get('dataset', 'the dataset')}: are the checkpoint"
                                        f" weights damaged? Nothing was cached or recorded")
                    if dtype == "float16" and np.abs(z).max() > 65000:
                        raise UserError("features exceed the float16 range; extract with dtype float32")
                    out[row:row + len(z)] = z
                    row += len(z)
                    bar.update(len(z))
            out.flush()
            done = stop
            _atomic_write_text(state_file, json.dumps({"done": done}))  # the chunk is durable now
        bar.close()
        del out
        np.save(partial / "labels.npy", dataset.targets)
        meta = {"shape": list(shape), "dtype": dtype, "classes": list(dataset.classes), "pooling": pooling,
                "n": n, "digest": _digest(feats_path), "labels_digest": _digest(partial / "labels.npy"),
                "version": FEATURE_CODE_VERSION}
        _atomic_write_text(partial / "meta.json", json.dumps(meta))
        state_file.unlink()
        os.replace(partial, entry)  # atomic: readers see a whole entry or none
