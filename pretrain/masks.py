"""The I-JEPA mask sampler lives in ``jepa_eval.masks`` (the decoder and ``jepa-eval masks`` use it too, and
jepa_eval never imports pretrain); this name is kept for pretraining code and its users."""
from jepa_eval.masks import MASK_KINDS, MaskConfig, MultiBlockMaskCollator

__all__ = ["MASK_KINDS", "MaskConfig", "MultiBlockMaskCollator"]
