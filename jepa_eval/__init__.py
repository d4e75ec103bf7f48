"""jepa-eval: pretrain, evaluate and analyse JEPA-style vision checkpoints."""
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["load_checkpoint", "Checkpoint", "UserError", "__version__"]


def __getattr__(name: str):
    # torch/timm are imported on first use, so `jepa-eval report/list/--help` start without them
    if name in ("load_checkpoint", "Checkpoint"):
        from . import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(f"module 'jepa_eval' has no attribute '{name}'")
