"""jepa-eval: pretrain, evaluate and analyse JEPA-style vision checkpoints."""
from .checkpoint import Checkpoint, load_checkpoint
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["load_checkpoint", "Checkpoint", "UserError", "__version__"]
