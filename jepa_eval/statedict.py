"""State dicts to modules, below ``checkpoint`` (which picks the format) and ``lazyload`` (which maps the
file): safe ``torch.load``, strict key/shape checks, architecture inference from tensor shapes, meta-device
skeletons given their weights by assignment, and ``Checkpoint``, the lazily built networks of one file."""
from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from .errors import UserError
from .models import HEADS_BY_WIDTH, VARIANTS, JEPAPredictor, JEPAViT, build_encoder

OFFICIAL_KEYS = ("encoder", "predictor", "target_encoder")
PARTS = ("target_encoder", "encoder", "predictor")


class Checkpoint:
    """The networks of one checkpoint and its ``meta`` (architecture, sha256, format, epoch).

    A checkpoint file is validated when loaded (every part: keys and shapes, strictly) but no weights are
    read then. Each part is built on first access, reading only its own tensors:

    - ``target_encoder``: the EMA encoder the paper evaluates (``--encoder target``);
    - ``encoder``: the context encoder (the same module as ``target_encoder`` when the file has only one);
    - ``predictor``: the I-JEPA predictor, or None when the file has none.

    Until accessed, a part occupies no memory; the optimizer state is never read. ``materialized`` names
    the parts built so far; ``release()`` drops them (the next access builds them again from the same
    file). Modules given to the constructor (timm models, tests) are simply held."""

    def __init__(self, target_encoder: nn.Module | None = None, encoder: nn.Module | None = None,
                 predictor: nn.Module | None = None, meta: dict[str, Any] | None = None, *,
                 builders: dict[str, Callable[[], nn.Module] | str] | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        self.meta: dict[str, Any] = meta if meta is not None else {}
        self._given = {k: m for k, m in zip(PARTS, (target_encoder, encoder, predictor)) if m is not None}
        self._builders = dict(builders or {})
        self._built: dict[str, nn.Module | None] = {}
        self._on_release = on_release

    def _part(self, name: str) -> nn.Module | None:
        if name in self._given:
            return self._given[name]
        builder = self._builders.get(name)
        if isinstance(builder, str):  # another name for the same part (a file with one encoder)
            return self._part(builder)
        if name not in self._built:
            self._built[name] = builder() if builder is not None else None
        return self._built[name]

    @property
    def target_encoder(self) -> nn.Module:
        return self._part("target_encoder")

    @property
    def encoder(self) -> nn.Module:
        return self._part("encoder")

    @property
    def predictor(self) -> nn.Module | None:
        return self._part("predictor")

    @property
    def materialized(self) -> tuple[str, ...]:
        """The parts whose weights are in memory now."""
        return tuple(k for k in PARTS if k in self._given or self._built.get(k) is not None
                     or (isinstance(self._builders.get(k), str) and self._built.get(self._builders[k]) is not None))

    def release(self) -> None:
        """Drop the parts built from the file (a run holds one checkpoint's weights at a time)."""
        self._built.clear()
        if self._on_release is not None:
            self._on_release()

    def get_encoder(self, which: str) -> nn.Module:
        if which not in ("target", "context"):
            raise UserError(f"encoder must be 'target' or 'context', not '{which}'")
        return self.target_encoder if which == "target" else self.encoder


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_state(module: nn.Module) -> str:
    """Identity of weights that have no file (a timm model at random init)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_checkpoint_path(path: Path) -> None:
    """User-facing errors for a path that cannot hold a torch checkpoint (absent, a folder, not torch)."""
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise UserError(f"checkpoint path is a directory, not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a binary pickle): anything else, e.g. a text
    # file, would otherwise reach the unpickler and fail with a message about its opcodes
    if not head.startswith((b"PK", b"\x80")):
        what = "it is empty" if not head else f"it starts with {head!r}, not a zip archive or a pickle"
        raise UserError(f"{path} is not a PyTorch checkpoint ({what})")


def safe_torch_load(path: str | Path, mmap: bool = False, shown: str | Path | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` (and ``mmap`` if asked); user-facing errors for every
    way a file can be bad. ``shown``: the name messages use (when ``path`` is a /proc/self/fd link)."""
    path = Path(path)
    check_checkpoint_path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        path = Path(shown or path)
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic[:1] != b"\x80" and magic != b"PK":  # neither a pickle (protocol >= 2) nor torch's zip
            raise UserError(f"{path} is not a PyTorch checkpoint (its bytes are not a pickle)") from None
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            reason = str(e).splitlines()
            hint = next((ln.strip() for ln in reason if "GLOBAL" in ln or "Unsupported" in ln), "")
            raise UserError(f"refusing to load {path}: its pickle asks to import or run code, which "
                            f"weights_only loading forbids ({hint or 'unsafe pickle'})") from None
        raise UserError(f"{path} is not a PyTorch checkpoint (unreadable pickle: {e})") from None
    except Exception as e:  # noqa: BLE001 - any other unpickler failure means "not a checkpoint"
        path = Path(shown or path)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {first}") from None


def _strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def load_strict(module: nn.Module, sd: dict[str, Any], what: str) -> None:
    """Load every key or fail, naming what is missing, unexpected or mis-shaped."""
    check_strict(module, sd, what)
    module.load_state_dict(sd, strict=True)


def check_strict(module: nn.Module, sd: dict[str, Any], what: str) -> None:
    """``load_strict``'s checks alone: keys and shapes only, so ``sd`` may be a memory map and
    ``module`` a skeleton on the meta device; no weight is read."""
    own = module.state_dict()
    bad_type = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own) - set(bad_type))
    shapes = [f"{k} {tuple(sd[k].shape)} vs expected {tuple(own[k].shape)}"
              for k in own if k in sd and k not in bad_type and sd[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes), ("non-tensor values", bad_type)):
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            problems.append(f"{label}: {', '.join(items[:6])}{more}")
    if problems:
        raise UserError(f"{what} does not match its architecture: " + "; ".join(problems))


def _block_count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def _config_beside(path: Path) -> dict:
    """The resolved pretraining config that this suite writes next to its checkpoints, if any."""
    for name in ("config.yaml", "params-ijepa.yaml"):
        cfg = path.parent / name
        if cfg.is_file():
            try:
                return yaml.safe_load(cfg.read_text()) or {}
            except yaml.YAMLError as e:
                raise UserError(f"unreadable config beside the checkpoint: {cfg}: {e}") from None
    return {}


def _heads_hint(config: dict, width: int, num_heads: int | None) -> int | None:
    if num_heads:
        return num_heads
    model = config.get("model") or config.get("meta") or {}
    if isinstance(model, dict):
        if model.get("num_heads"):
            return int(model["num_heads"])
        name = str(model.get("name") or model.get("model_name") or "")
        for variant, (w, _, heads, _) in VARIANTS.items():
            if name.startswith(variant) and w == width:
                return heads
    return HEADS_BY_WIDTH.get(width)


def encoder_arch(sd: dict[str, torch.Tensor], what: str, num_heads: int | None,
                 img_size: int | None = None) -> dict[str, Any]:
    """The I-JEPA encoder architecture a state dict implies (shapes only: no weight is read)."""
    needed = ("patch_embed.proj.weight", "pos_embed", "norm.weight")
    absent = [k for k in needed if k not in sd]
    if absent:
        sample = ", ".join(list(sd)[:4])
        raise UserError(f"{what} is not an I-JEPA ViT encoder: missing {', '.join(absent)} "
                        f"(found keys like {sample})")
    width, _, patch, _ = sd["patch_embed.proj.weight"].shape
    n_tokens = sd["pos_embed"].shape[1]
    grid = int(round(n_tokens ** 0.5))
    if grid * grid != n_tokens:
        raise UserError(f"{what}: pos_embed has {n_tokens} tokens, not a square grid")
    depth = _block_count(sd, "blocks.")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in sd else 4 * width
    if num_heads is None:
        raise UserError(f"cannot infer the number of heads for width {width}; pass num_heads=")
    meta = dict(width=width, depth=depth, heads=num_heads, patch_size=patch, img_size=grid * patch,
                grid=grid, mlp_ratio=hidden / width)
    if img_size and img_size != grid * patch:
        if img_size % patch:
            raise UserError(f"image size {img_size} is not divisible by the patch size {patch}")
        meta["img_size"] = img_size
    return meta


def _encoder_skeleton(arch: dict[str, Any]) -> JEPAViT:
    """The encoder without storage (meta device): no random init to pay for, weights come by assignment.
    Built at the training size; another ``img_size`` only resamples positions in the forward."""
    with torch.device("meta"):
        return build_encoder(arch["width"], arch["depth"], arch["patch_size"], arch["grid"] * arch["patch_size"],
                             arch["heads"], mlp_ratio=arch["mlp_ratio"])


def predictor_arch(sd: dict[str, torch.Tensor], num_heads: int, what: str) -> dict[str, Any]:
    needed = ("predictor_embed.weight", "predictor_pos_embed", "mask_token")
    absent = [k for k in needed if k not in sd]
    if absent:
        raise UserError(f"{what} is not an I-JEPA predictor: missing {', '.join(absent)}")
    pred_dim, width = sd["predictor_embed.weight"].shape
    if pred_dim % num_heads:  # the predictor uses the encoder's head count
        raise UserError(f"{what}: predictor width {pred_dim} is not divisible by the encoder's {num_heads} heads")
    depth = _block_count(sd, "predictor_blocks.")
    hidden = sd["predictor_blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * pred_dim
    return dict(num_patches=sd["predictor_pos_embed"].shape[1], embed_dim=width, predictor_embed_dim=pred_dim,
                depth=depth, num_heads=num_heads, mlp_ratio=hidden / pred_dim)


def _predictor_skeleton(arch: dict[str, Any]) -> JEPAPredictor:
    with torch.device("meta"):
        return JEPAPredictor(**arch)


def _materialize(skeleton: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Give a meta-device skeleton its weights by assignment (no second copy, no random init)."""
    skeleton.load_state_dict(tensors, strict=True, assign=True)
    left = [n for n, t in [*skeleton.named_parameters(), *skeleton.named_buffers()] if t.is_meta]
    if left:  # every tensor of these modules is in the state dict; anything else is a bug here
        raise RuntimeError(f"tensors without weights after loading: {left[:4]}")
    return skeleton.eval()
