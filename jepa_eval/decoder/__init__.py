"""RCDM-style diffusion decoder probe (PROTOCOLS.md §4): draw what a representation, or the predictor's
guess of one, says is inside a masked box."""
from .model import DecoderSpec, RCDMDecoder, UNetConfig, load_decoder, save_decoder
from .train import DecoderConfig, TrainConfig, ddim_sample, load_config, train_decoder

__all__ = ["DecoderSpec", "RCDMDecoder", "UNetConfig", "load_decoder", "save_decoder", "DecoderConfig",
           "TrainConfig", "ddim_sample", "load_config", "train_decoder"]
