"""RCDM-style diffusion decoder probe (docs/protocols.md §4, docs/decoder.md): draw what a frozen
representation knows.

``condition: image`` draws the whole image from the target encoder's mean-pooled representation;
``condition: region`` inpaints a target box from the context image and the pooled representation of the
block, which at visualization time is the predictor's output or the target encoder's (beside a shuffled
control). The encoder runs once into ``reps.npz``; training reads only that.

    jepa-eval decoder train --checkpoint CK --dataset fashion-mnist --out runs/dec --config cpu
    jepa-eval decoder sample --checkpoint CK --decoder runs/dec --dataset fashion-mnist --out s.npz
"""
from .model import DecoderSpec, RCDMDecoder, UNetConfig, load_decoder, save_decoder
from .diffusion import ddim_sample
from .train import DecoderConfig, TrainConfig, load_config, train_decoder

__all__ = ["DecoderSpec", "RCDMDecoder", "UNetConfig", "load_decoder", "save_decoder", "DecoderConfig",
           "TrainConfig", "ddim_sample", "load_config", "train_decoder"]
