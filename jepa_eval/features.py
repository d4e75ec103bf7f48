"""Feature engine: encode a dataset split once, keep it on disk, memory-map it afterwards.

Entries are keyed by everything that changes the numbers (checkpoint sha256, encoder, pooling,
transform, dataset identity and split, dtype, feature-code version). Extraction writes into a
``.partial`` folder chunk by chunk, so an interrupted run resumes from its last finished chunk; the
finished folder appears by an atomic rename and carries a checksum, so a damaged entry is detected
and rebuilt rather than read. Several poolings of one split are extracted together: one encoder
pass per image batch fills each pooling's own entry (``get_or_extract_many``)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write_text
from .errors import UserError, write_error
from .log import get_logger

log = get_logger(__name__)

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


def _depth(encoder: nn.Module) -> int | None:
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        blocks = getattr(getattr(encoder, "model", None), "blocks", None)
    return None if blocks is None else len(blocks)


def num_blocks(encoder: nn.Module) -> int:
    """Transformer depth of a JEPAViT or a wrapped timm ViT (what blocksPOOL stacks)."""
    depth = _depth(encoder)
    if depth is None:
        raise UserError(f"blocksPOOL needs a transformer with blocks; {type(encoder).__name__} has none")
    return depth


FINAL = ("lastPOOL", "tokens")  # poolings of the final-norm output; the others read block outputs


def _final_is_last_block(encoder: nn.Module) -> bool:
    """Whether ``encoder(x)`` runs exactly the ops that produce ``forward_last_blocks(x, n)[-1]``, so lastPOOL
    and tokens can be read from a block pass bit for bit. Exact types only: a subclass may change forward."""
    from timm.models.vision_transformer import VisionTransformer
    from .models import JEPAViT
    from .timm_encoder import PixelTokens, TimmTokens
    if type(encoder) is TimmTokens:
        return type(encoder.model) is VisionTransformer  # forward_features == forward_intermediates(norm=True)
    return type(encoder) in (JEPAViT, PixelTokens)


def pool_many(encoder: nn.Module, images: torch.Tensor, poolings: list[str]) -> dict[str, torch.Tensor]:
    """Every pooling in ``poolings`` from one encoder pass over ``images`` (see ``pool``): the block
    poolings share the outputs of the last max(n) blocks, and lastPOOL/tokens reuse the last of them
    where that is bit-identical to ``encoder(x)``. Each result equals ``pool`` of that pooling alone."""
    blocks: list[torch.Tensor] = []
    if any(p not in FINAL for p in poolings):
        depth = max(num_blocks(encoder) if p == "blocksPOOL" else int(p[len("concatPOOL"):])
                    for p in poolings if p not in FINAL)
        have = _depth(encoder)   # None: no blocks (raw pixels), where every concatPOOLn is the one output
        if have is not None and depth > have:
            raise UserError(f"concatPOOL{depth} needs the last {depth} blocks, but the encoder has {have}; "
                            f"use concatPOOL{have} or fewer")
        blocks = encoder.forward_last_blocks(images, depth)
    tokens = None
    if any(p in FINAL for p in poolings):
        tokens = blocks[-1] if blocks and _final_is_last_block(encoder) else encoder(images)
    out = {}
    for p in poolings:
        if p == "tokens":
            out[p] = tokens
        elif p == "lastPOOL":
            out[p] = tokens.mean(1)
        elif p == "blocksPOOL":
            out[p] = torch.stack([t.mean(1) for t in blocks[-num_blocks(encoder):]], dim=1)
        else:  # blocks[-n:] also keeps what forward_last_blocks(x, n) returns when n exceeds the depth
            out[p] = torch.cat([t.mean(1) for t in blocks[-int(p[len("concatPOOL"):]):]], dim=-1)
    return out


def pool(encoder: nn.Module, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """lastPOOL: mean of the final-norm tokens; concatPOOLn: concatenated means of the last n blocks,
    each through the final norm; blocksPOOL: those means for every block stacked, [B, depth, D]
    (per-layer analysis); tokens: all patch tokens."""
    return pool_many(encoder, images, [pooling])[pooling]


def _preallocate(path: Path) -> None:
    """Reserve the blocks of a memory-mapped file now: on a full disk, writing into a sparse mapping kills
    the process with SIGBUS, while allocating here raises ENOSPC, which becomes a one-line error."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


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
            log.warning(f"jepa-eval: feature cache entry {entry.name} is damaged ({e}); rebuilding it")
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return Features(x=x, y=y, classes=meta["classes"], key=key, path=entry)

    # -- writing ---------------------------------------------------------------------------
    def get_or_extract(self, checkpoint, encoder: str, pooling: str, dataset, dtype: str = "float16",
                       batch_size: int = 64, device: str | torch.device | None = None,
                       num_workers: int | None = None, chunk_images: int = 2048,
                       progress: bool = True) -> Features:
        """Return cached features, extracting (or resuming an interrupted extraction) when needed."""
        return self.get_or_extract_many(checkpoint, encoder, [pooling], dataset, dtype, batch_size, device,
                                        num_workers, chunk_images, progress)[pooling]

    def get_or_extract_many(self, checkpoint, encoder: str, poolings: Iterable[str], dataset,
                            dtype: str = "float16", batch_size: int = 64,
                            device: str | torch.device | None = None, num_workers: int | None = None,
                            chunk_images: int = 2048, progress: bool = True) -> dict[str, Features]:
        """``get_or_extract`` for several poolings of one dataset split. The missing ones are built
        together, one encoder pass per image batch, each into its own entry (the same entry a
        single-pooling request reads)."""
        poolings = list(dict.fromkeys(poolings))
        for pooling in poolings:
            check_pooling(pooling)
        if dtype not in DTYPES:
            raise UserError(f"feature dtype must be float16 or float32, not '{dtype}'")
        keys = {p: self.key(self.key_fields(checkpoint.meta, encoder, p, dataset, dtype)) for p in poolings}
        found = {p: self._read(self.root / k, k) for p, k in keys.items()}
        missing = [p for p in poolings if found[p] is None]
        if not missing:
            return found
        with ExitStack() as locks:
            # sorted by key: two processes wanting overlapping sets take shared locks in one order (no deadlock)
            for key in sorted(keys[p] for p in missing):
                locks.enter_context(FileLock(str(self.root / f"{key}.lock")))
            for p in missing:
                found[p] = self._read(self.root / keys[p], keys[p])  # another process may have finished it
            todo = {p: self.root / keys[p] for p in missing if found[p] is None}
            if todo:
                try:
                    self._extract(checkpoint.get_encoder(encoder), todo, dataset, dtype, batch_size, device,
                                  num_workers, chunk_images, progress)
                except OSError as e:  # disk full, quota, permission: finished chunks stay, a rerun resumes
                    where = e.filename or next(iter(todo.values())).with_name(
                        next(iter(todo.values())).name + ".partial")
                    raise write_error(where, e, "the feature cache entry",
                                      "no feature entry was published; free space and rerun to resume") from None
                for p, entry in todo.items():
                    found[p] = self._read(entry, keys[p])
                    if found[p] is None:
                        raise RuntimeError(f"feature entry {keys[p]} could not be verified right after writing")
        return found

    @staticmethod
    def _open_partial(entry: Path, shape: tuple[int, ...], dtype: str) -> tuple[np.memmap, int]:
        """The entry's ``.partial`` features array and how many rows of it are durable (resume point)."""
        partial = entry.with_name(entry.name + ".partial")
        partial.mkdir(exist_ok=True)
        for stale in partial.glob(".*.tmp"):  # left by a writer killed mid-write; we hold the entry's lock
            stale.unlink(missing_ok=True)
        state_file, feats_path = partial / "progress.json", partial / "features.npy"
        done = json.loads(state_file.read_text())["done"] if state_file.exists() else 0
        if done == 0 or not feats_path.exists():
            out = np.lib.format.open_memmap(feats_path, mode="w+", dtype=DTYPES[dtype], shape=shape)
            _preallocate(feats_path)
            return out, 0
        _preallocate(feats_path)   # a file from an older run may still be sparse
        return np.load(feats_path, mmap_mode="r+"), done

    @staticmethod
    def _publish(entry: Path, pooling: str, shape: tuple[int, ...], dataset, dtype: str) -> None:
        partial = entry.with_name(entry.name + ".partial")
        np.save(partial / "labels.npy", dataset.targets)
        meta = {"shape": list(shape), "dtype": dtype, "classes": list(dataset.classes), "pooling": pooling,
                "n": shape[0], "digest": _digest(partial / "features.npy"),
                "labels_digest": _digest(partial / "labels.npy"), "version": FEATURE_CODE_VERSION}
        atomic_write_text(partial / "meta.json", json.dumps(meta))
        (partial / "progress.json").unlink(missing_ok=True)
        os.replace(partial, entry)  # atomic: readers see a whole entry or none

    def _extract(self, encoder: nn.Module, entries: dict[str, Path], dataset, dtype: str, batch_size: int,
                 device, num_workers, chunk_images: int, progress: bool) -> None:
        """Fill every entry (pooling -> folder, all locked by the caller) from one pass over the dataset."""
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = device.type == "cuda"
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1) if cuda else 0
        n = len(dataset)
        encoder = encoder.to(device).eval()
        first_x, _ = dataset[0]
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            probe = pool_many(encoder, first_x.unsqueeze(0).to(device), list(entries))
        shapes = {p: (n, *z.shape[1:]) for p, z in probe.items()}
        outs, done = {}, {}
        for p, entry in entries.items():
            outs[p], done[p] = self._open_partial(entry, shapes[p], dtype)
        start = min(done.values())  # entries may have stopped at different chunks (one built alone before)
        bar = tqdm(total=n, initial=start, unit="img", desc=f"features {'+'.join(entries)}", disable=not progress,
                   dynamic_ncols=True, smoothing=0.1)
        while start < n:
            stop = min(n, start + chunk_images)
            active = [p for p in entries if done[p] < stop]
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(dataset, range(start, stop)), batch_size=batch_size,
                num_workers=num_workers, pin_memory=cuda, persistent_workers=False,
                generator=torch.Generator().manual_seed(start))   # the workers' seeds; not the caller's RNG
            row = start
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
                for images, _ in loader:
                    pooled = pool_many(encoder, images.to(device, non_blocking=cuda), active)
                    for p, z in pooled.items():
                        z = z.float().cpu().numpy()
                        if not np.isfinite(z).all():
                            raise UserError(f"the encoder produced NaN/inf features for images {row}-{row + len(z) - 1}"
                                            f" of {dataset.identity.get('dataset', 'the dataset')}: are the "
                                            f"checkpoint weights damaged? Nothing was cached or recorded")
                        if dtype == "float16" and np.abs(z).max() > 65000:
                            raise UserError("features exceed the float16 range; extract with dtype float32")
                        skip = max(0, done[p] - row)  # rows this entry already holds durably
                        outs[p][row + skip:row + len(z)] = z[skip:]
                    row += len(images)
                    bar.update(len(images))
            for p in active:
                outs[p].flush()
                done[p] = stop
                atomic_write_text(entries[p].with_name(entries[p].name + ".partial") / "progress.json",
                                   json.dumps({"done": stop}))  # the chunk is durable now
            start = stop
        bar.close()
        outs.clear()  # close the memory maps before the folders are renamed
        for p, entry in entries.items():
            self._publish(entry, p, shapes[p], dataset, dtype)
