"""Files shipped inside the package. ``demo_checkpoint_path()`` is the tiny I-JEPA trained on
Fashion-MNIST by ``jepa-eval pretrain`` (see assets/demo/README.md); it loads with no network."""
from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent / "demo"


def demo_checkpoint_path() -> Path:
    """``.../jepa_eval/assets/demo/jepa-latest.pth.tar`` (official layout, config.yaml beside it)."""
    path = DEMO_DIR / "jepa-latest.pth.tar"
    if not path.is_file():
        from ..errors import UserError
        raise UserError(f"the demo checkpoint is missing from this installation ({path})")
    return path
