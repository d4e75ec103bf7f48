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


DEMO_DECODER_DIR = Path(__file__).parent / "demo-decoder"


def demo_decoder_path(mode: str = "image") -> Path:
    """``.../jepa_eval/assets/demo-decoder/<mode>``: the diffusion decoder trained on the demo checkpoint's
    representations (``image``: whole images; ``predictor``: the inpainting decoder), a folder for
    ``jepa-eval decoder sample --decoder``. See assets/demo-decoder/README.md for how it was trained."""
    from ..errors import UserError
    if mode not in ("image", "predictor"):
        raise UserError(f"demo decoder mode must be 'image' or 'predictor', not '{mode}'")
    path = DEMO_DECODER_DIR / mode
    if not (path / "decoder.json").is_file() or not (path / "decoder.pt").is_file():
        raise UserError(f"the demo {mode} decoder is missing from this installation ({path})")
    return path
