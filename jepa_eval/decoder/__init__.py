"""RCDM-style diffusion decoder probe (PROTOCOLS.md §4): draw what a representation, or the predictor's
guess of one, says is inside a masked box.

The decoder is trained on the TARGET encoder's average-pooled representation of a target block (what the
predictor is trained to predict) and learns to draw that block's pixels; at visualization time it is
conditioned either on the predictor's pooled output for the block or on the true target representation.
Its resolution (``size``) is independent of the encoder's input size: blocks are cut from the
encoder-sized image and resampled to ``size``, and samples are resampled back into the box for figures.

    jepa-eval decoder train --checkpoint CK --dataset fashion-mnist --out runs/dec --config cpu
    jepa-eval decoder visualize --checkpoint CK --decoder runs/dec --dataset fashion-mnist --out fig.png
"""
from .model import DecoderSpec, RCDMDecoder, UNetConfig, load_decoder, save_decoder
from .diffusion import ddim_sample
from .train import DecoderConfig, TrainConfig, load_config, train_decoder

__all__ = ["DecoderSpec", "RCDMDecoder", "UNetConfig", "load_decoder", "save_decoder", "DecoderConfig",
           "TrainConfig", "ddim_sample", "load_config", "train_decoder"]
